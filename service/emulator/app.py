"""HTTP face of the emulator: fal's queue API, the JWKS, and the media it generates, each from the
module of the same name (`queue_routes`, `jwks_routes`, `media_routes`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar import Litestar

from .jwks_routes import jwks_routes
from .media_routes import media_routes
from .pricing_routes import pricing_routes
from .queue_routes import queue_routes
from .schemas import schema_routes
from .storage_routes import storage_routes

if TYPE_CHECKING:
    from .engine import FalEmulator


def create_emulator_app(emulator: FalEmulator) -> Litestar:
    return Litestar(
        route_handlers=[*jwks_routes(emulator), *media_routes(emulator), *pricing_routes(emulator),
                        *storage_routes(emulator), *schema_routes(emulator), *queue_routes(emulator)],
        # Mounted inside another app, the outer app owns the emulator and closes it; aclose is idempotent.
        on_shutdown=[emulator.aclose],
        openapi_config=None,
        # Litestar's default logging config would replace the root handler of the app it is
        # mounted in, turning the service's JSON log lines into plain text without their fields.
        logging_config=None,
    )
