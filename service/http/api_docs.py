"""The API reference at /schema: Swagger UI, served from our own origin with a CSP of its own.

Litestar's doc pages load their scripts from CDNs and start them with an inline script, which our
Content-Security-Policy blocks (a blank page), and which a machine without internet could not load
anyway. Here Swagger UI's built files come from the `swagger-ui-py` package (only its static
files are used) and are served under /schema/assets/, and the page is started by a static file of
ours (service/web/api-docs.js): the page needs no inline script and nothing from outside.

Each asset's name carries a digest of its bytes, so it can be cached for a year: a new version is
a new name. The other renderers Litestar offers (ReDoc, Stoplight Elements, RapiDoc) are not
shipped; their old addresses redirect to /schema.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.datastructures import ResponseHeader
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import OpenAPIRenderPlugin, YamlRenderPlugin
from litestar.params import FromPath
from litestar.response import Redirect
from litestar.router import Router

from service.errors import NotFound

DOCS_PATH = "/schema"
ASSETS_PATH = f"{DOCS_PATH}/assets"
WEB = Path(__file__).resolve().parent.parent / "web"

DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
"""Every page under /schema: scripts and styles from our origin only, no inline script. Swagger UI
draws its icons as data: images from its stylesheet and fetches the document from here. The
request-log middleware adds the service's global CSP only to answers that carry none, so this is
the one policy of these pages, not a second one that both apply."""

ASSET_CACHE_CONTROL = "public, max-age=31536000, immutable"
NOT_SHIPPED = ("/redoc", "/elements", "/rapidoc")
"""Litestar's other renderers, which /schema served before: they redirect to the one we ship."""

# Litestar adds `; charset=utf-8` to text types itself.
_CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
# Swagger UI's own files, from its package (its standalone preset, with a top bar to load other
# documents, is left out), and ours, from service/web/.
_SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "index.css", "favicon-32x32.png")
_OWN_FILES = ("api-docs.js",)


class Asset(msgspec.Struct, frozen=True):
    name: str
    """The served name: the file's name with the first 12 hex digits of its sha256 before the suffix."""
    content_type: str
    body: bytes
    gzipped: bytes | None
    """The body gzip-compressed (text only): Swagger UI's bundle is 1.5 MB, 0.4 MB compressed."""


def _asset(file_name: str, body: bytes) -> Asset:
    stem, dot, suffix = file_name.rpartition(".")
    digest = hashlib.sha256(body).hexdigest()[:12]
    content_type = _CONTENT_TYPES[dot + suffix]
    gzipped = gzip.compress(body, mtime=0) if content_type.startswith("text/") else None
    return Asset(f"{stem}.{digest}.{suffix}", content_type, body, gzipped)


@functools.cache
def assets() -> dict[str, Asset]:
    """Every asset by the name its original file has (`swagger-ui-bundle.js`), read once."""
    package = distribution("swagger-ui-py")
    found = {name: _asset(name, Path(str(package.locate_file(f"swagger_ui/static/{name}"))).read_bytes())
             for name in _SWAGGER_UI_FILES}
    found.update({name: _asset(name, (WEB / name).read_bytes()) for name in _OWN_FILES})
    return found


@functools.cache
def _served() -> dict[str, Asset]:
    return {asset.name: asset for asset in assets().values()}


def asset_url(file_name: str) -> str:
    return f"{ASSETS_PATH}/{assets()[file_name].name}"


def _accepts_gzip(accept_encoding: str) -> bool:
    """gzip is listed, and not refused with q=0 (`*` is not read: every browser names gzip)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in {"q=0", "q=0.0", "q=0.00", "q=0.000"}
    return False


@get("/assets/{name:str}", sync_to_thread=False, include_in_schema=False)
def serve_asset(request: Request, name: FromPath[str]) -> Response[bytes]:
    asset = _served().get(name)
    if asset is None:
        raise NotFound(f"asset: no {name!r} under {ASSETS_PATH}; the page at {DOCS_PATH} names the current ones")
    headers = {"Cache-Control": ASSET_CACHE_CONTROL, "Vary": "Accept-Encoding"}
    if asset.gzipped is not None and _accepts_gzip(request.headers.get("accept-encoding", "")):
        return Response(asset.gzipped, media_type=asset.content_type, headers={**headers, "Content-Encoding": "gzip"})
    return Response(asset.body, media_type=asset.content_type, headers=headers)


@get(list(NOT_SHIPPED), sync_to_thread=False, include_in_schema=False)
def not_shipped() -> Redirect:
    return Redirect(DOCS_PATH, status_code=302)


class SwaggerUIPage(OpenAPIRenderPlugin):
    """The page at /schema (and /schema/swagger): Swagger UI, every file from our origin."""

    def __init__(self) -> None:
        super().__init__(path=["/", "/swagger"], favicon="", style="")

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        title = html.escape(f"{openapi_schema['info']['title']}: API reference")
        document = html.escape(self.get_openapi_json_route(request))
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" type="image/png" sizes="32x32" href="{asset_url("favicon-32x32.png")}">
<link rel="stylesheet" href="{asset_url("swagger-ui.css")}">
<link rel="stylesheet" href="{asset_url("index.css")}">
<script src="{asset_url("swagger-ui-bundle.js")}" defer></script>
<script src="{asset_url("api-docs.js")}" defer></script>
</head>
<body>
<main id="swagger-ui" data-openapi-url="{document}"></main>
<noscript><p>The API reference needs JavaScript; the document itself is at
<a href="{document}">{document}</a>.</p></noscript>
</body>
</html>
""".encode()

    def receive_router(self, router: Router) -> None:
        router.register(serve_asset)
        router.register(not_shipped)


def api_reference_config(*, title: str, version: str) -> OpenAPIConfig:
    """The OpenAPI config: the document at /schema/openapi.json (and .yaml), the reference at /schema."""
    # Its own router, so that every answer under /schema carries the docs' CSP (see above); Litestar
    # adds the page, the document and its not-found page to it.
    router = Router(
        DOCS_PATH, route_handlers=[], include_in_schema=False,
        response_headers=[ResponseHeader(name="Content-Security-Policy", value=DOCS_CONTENT_SECURITY_POLICY)],
    )
    return OpenAPIConfig(title=title, version=version, path=DOCS_PATH, openapi_router=router,
                         render_plugins=[SwaggerUIPage(), YamlRenderPlugin()])
