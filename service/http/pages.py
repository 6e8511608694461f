"""The browser's side: the page, its static files, sign-in links, the session, the model list."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import QueryParameter
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from service.auth.browser_sessions import SESSION_COOKIE, SESSION_TTL, end_session, redeem_sign_in_token, session_for
from service.errors import NotAuthenticated
from service.http.dependencies import PoolDependency, SettingsDependency, UserIdDependency
from service.jobs.catalog import Model, catalog

WEB = Path(__file__).resolve().parent.parent / "web"


class SessionInfo(msgspec.Struct):
    user_id: str
    name: str
    csrf_token: str


def _session_cookie(request: Request, value: str, max_age: int) -> Cookie:
    return Cookie(key=SESSION_COOKIE, value=value, max_age=max_age, httponly=True, samesite="strict",
                  secure=request.url.scheme == "https", path="/")


@get("/", include_in_schema=False)
async def page(
    request: Request, pool: PoolDependency,
    token: Annotated[str | None, QueryParameter(description="a one-time sign-in token")] = None,
) -> Response:
    if token is not None:
        # A sign-in link: spend it, set the session cookie, and drop the token from the address bar.
        session_id = await redeem_sign_in_token(pool, token)
        if session_id is None:
            return Redirect("/#sign-in-link-invalid", status_code=303)
        return Redirect("/", status_code=303, cookies=[_session_cookie(request, session_id, int(SESSION_TTL.total_seconds()))])
    return Response((WEB / "index.html").read_bytes(), media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                             "Content-Security-Policy": "default-src 'self'; img-src 'self' http: https: data:; media-src 'self' http: https:; connect-src 'self'"})


@get("/api/session", tags=["browser"], summary="The browser session and its CSRF token")
async def current_session(request: Request, pool: PoolDependency) -> SessionInfo:
    session_id = request.cookies.get(SESSION_COOKIE)
    session = await session_for(pool, session_id) if session_id else None
    if session is None:
        raise NotAuthenticated("session: none; open the sign-in link that `python3 -m service run` printed")
    return SessionInfo(user_id=session.user_id, name=session.name, csrf_token=session.csrf_token)


@post("/api/session/sign-out", status_code=200, tags=["browser"], summary="End the browser session")
async def sign_out(request: Request, pool: PoolDependency, user_id: UserIdDependency) -> Response[dict[str, bool]]:
    await end_session(pool, request.cookies.get(SESSION_COOKIE, ""))
    return Response({"signed_out": True}, cookies=[_session_cookie(request, "", 0)])


@get("/api/models", tags=["jobs"], summary="The models this service accepts, with the kind of output each makes")
async def models(settings: SettingsDependency) -> list[Model]:
    return catalog(settings.allowed_models)


static_files = create_static_files_router(path="/static", directories=[WEB], include_in_schema=False)
