"""The browser's side: the page, the operator's console, their static files, sign-in links, the session, the model list."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from service.auth.browser_sessions import (
    SESSION_COOKIE,
    SESSION_TTL,
    end_session,
    redeem_sign_in_token,
    session_credential,
    session_for,
)
from service.errors import NotAuthenticated, NotFound
from service.fal.input_schema import InputField
from service.fal.model_schemas import ModelSchemas
from service.http.dependencies import MAX_CREDENTIAL_LENGTH, CallerDependency, PoolDependency, SettingsDependency
from service.jobs.admin import is_admin
from service.jobs.catalog import catalog
from service.jobs.models import JobType
from service.realtime.admission import Admission

WEB = Path(__file__).resolve().parent.parent / "web"


class SessionInfo(msgspec.Struct):
    user_id: str
    name: str
    csrf_token: str
    local_emulator: Annotated[bool, msgspec.Meta(description=(
        "true while the service has no FAL_KEY: jobs go to the local fal emulator, whose images are test "
        "pictures (the page shows a tag saying so); false with a FAL_KEY"))]


def _session_cookie(request: Request, settings: SettingsDependency, value: str, max_age: int) -> Cookie:
    # Behind a TLS-terminating proxy the scheme is https only if uvicorn trusts the proxy
    # (FORWARDED_ALLOW_IPS); an https APP_URL says so whatever the proxy sends.
    secure = settings.is_https or request.url.scheme == "https"
    return Cookie(key=SESSION_COOKIE, value=value, max_age=max_age, httponly=True, samesite="strict",
                  secure=secure, path="/")


@get("/", include_in_schema=False)
async def page(
    request: Request, pool: PoolDependency, settings: SettingsDependency,
    token: Annotated[str | None, QueryParameter(description="a one-time sign-in token")] = None,
) -> Response:
    if token is not None:
        # A sign-in link: spend it, set the session cookie, and drop the token from the address bar.
        session_id = await redeem_sign_in_token(pool, token) if len(token) <= 512 else None
        if session_id is None:
            return Redirect("/#sign-in-link-invalid", status_code=303)
        cookie = _session_cookie(request, settings, session_id, int(SESSION_TTL.total_seconds()))
        return Redirect("/", status_code=303, cookies=[cookie])
    # The security headers (CSP and friends) are on every answer: see service.http.security_headers.
    return Response((WEB / "index.html").read_bytes(), media_type="text/html",
                    headers={"Cache-Control": "no-store"})


@get("/admin", include_in_schema=False)
async def admin_page(request: Request, pool: PoolDependency) -> Response:
    """The operator's console, for an admin's browser session; to anyone else (no session, a
    non-admin's, an API key) a 404, as for a path that does not exist (as every admin route)."""
    session_id = request.cookies.get(SESSION_COOKIE)
    session = await session_for(pool, session_id) if session_id and len(session_id) <= MAX_CREDENTIAL_LENGTH else None
    if session is None or not await is_admin(pool, session.user_id):
        raise NotFound("not found: no such route for this caller")
    return Response((WEB / "admin.html").read_bytes(), media_type="text/html", headers={"Cache-Control": "no-store"})


@get("/api/session", tags=["browser"], summary="The browser session and its CSRF token")
async def current_session(request: Request, pool: PoolDependency, settings: SettingsDependency) -> SessionInfo:
    session_id = request.cookies.get(SESSION_COOKIE)
    session = await session_for(pool, session_id) if session_id else None
    if session is None:
        raise NotAuthenticated("session: none; open the sign-in link that `python3 -m service run` printed")
    return SessionInfo(user_id=session.user_id, name=session.name, csrf_token=session.csrf_token,
                       local_emulator=settings.local_emulator)


@post("/api/session/sign-out", status_code=200, tags=["browser"], summary="End the browser session")
async def sign_out(
    request: Request, pool: PoolDependency, settings: SettingsDependency, caller: CallerDependency,
    admission: NamedDependency[Admission],
) -> Response[dict[str, bool]]:
    session_id = request.cookies.get(SESSION_COOKIE, "")
    await end_session(pool, session_id)
    # Its streams here end now; other processes end theirs at their next credential check.
    admission.close_credential(session_credential(session_id))
    return Response({"signed_out": True}, cookies=[_session_cookie(request, settings, "", 0)])


class ModelInfo(msgspec.Struct, frozen=True):
    model_id: str
    type: JobType
    fields: Annotated[list[InputField] | None, msgspec.Meta(description=(
        "the model's input fields, from its schema at fal, in fal's order; null while that schema has "
        "never been had (its jobs are then not checked here)"))]


@get("/api/models", tags=["jobs"], summary="The models this service accepts: the kind of output each makes, its input fields")
async def models(settings: SettingsDependency, model_schemas: NamedDependency[ModelSchemas]) -> list[ModelInfo]:
    found = await asyncio.gather(*(model_schemas.fields(model.model_id) for model in catalog(settings.allowed_models)))
    return [ModelInfo(model_id=model.model_id, type=model.type, fields=model_fields)
            for model, model_fields in zip(catalog(settings.allowed_models), found, strict=True)]


static_files = create_static_files_router(path="/static", directories=[WEB], include_in_schema=False)
