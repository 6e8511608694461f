"""The embedded PostgreSQL used when DATABASE_URL is unset (PyPI's `pgserver` ships the binaries).

Its data lives in a git-ignored folder of the checkout and survives restarts. pgserver counts the
processes attached to a data folder, so the CLI can attach while the service runs, and the server
stops when the last of them exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def start_embedded_postgres(pgdata: str | Path, *, stop_at_exit: bool = True) -> str:
    """Start (or attach to) the server on `pgdata` and return its DSN."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); nothing to act on.
        warnings.simplefilter("ignore")
        import pgserver

        Path(pgdata).mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(str(pgdata), cleanup_mode="stop" if stop_at_exit else None)
    dsn: str = server.get_uri()
    log.info("embedded postgres ready", extra={"pgdata": str(pgdata)})
    return dsn
