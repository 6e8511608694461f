"""Live streams over HTTP (Server-Sent Events) and the stream tokens browsers use to open them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import quote

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from service.auth.callers import Caller, caller_for_credential
from service.auth.stream_tokens import USER_SCOPE, StreamTokens, job_scope, scope_tag, tag_scope
from service.errors import InvalidRequest, NotAuthenticated
from service.http.dependencies import CallerDependency, PoolDependency, bearer_caller
from service.http.sse import EventStreamResponse
from service.jobs import queries
from service.jobs.models import JOB_STATUSES, JOB_TYPES
from service.jobs.tags import check_tag
from service.realtime.admission import Admission, Ticket
from service.realtime.hub import Hub, ResumePoint
from service.realtime.streams import JobAlreadyFinished, LiveStream, open_job_stream, open_user_stream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from service.realtime.streams import Outgoing

    TagCheck = Callable[[str, str], Awaitable[None]]
    """Given (user id, tag) of a tag-scoped token: raises NotAuthenticated unless the tag opens the stream."""


async def stream_caller(request: Request, pool: PoolDependency, tokens: StreamTokens, scope: str, token: str | None,
                        *, tag_check: TagCheck | None = None) -> Caller:
    """The caller behind a stream request: a `?token=` stream token for `scope` (or, with `tag_check`,
    for a tag that check lets in) whose minting key or session still stands, or a Bearer key."""
    if token:
        claims = tokens.verify(token, scope, or_tag=tag_check is not None)
        caller = await caller_for_credential(pool, claims.credential)
        if caller is None or caller.user_id != claims.user_id:
            raise NotAuthenticated("token: the key or session that made this stream token was revoked or signed out")
        tag = scope_tag(claims.scope)
        if tag is not None and tag_check is not None:
            await tag_check(caller.user_id, tag)
        return caller
    header = request.headers.get("authorization")
    if header:
        return await bearer_caller(header, pool)
    raise NotAuthenticated("token: missing; pass ?token=<stream token> or 'Authorization: Bearer <API key>'")


class AdmittedStream:
    """A live stream holding its caller's place: closing it, from either side, gives the place back."""

    def __init__(self, stream: LiveStream, ticket: Ticket) -> None:
        self._stream = stream
        self._ticket = ticket
        ticket.close = stream.close  # a revoked credential ends the stream

    def __aiter__(self) -> AsyncIterator[Outgoing]:
        return self._stream.__aiter__()

    def close(self) -> None:
        self._stream.close()
        self._ticket.release()


# A late event's token: an event id, then a seq of up to 27 digits (a 48-bit run id, 12 digits of count).
_EVENT_ID = re.compile(r"([0-9]{1,18})(?:\.([0-9]{1,27}))?")


def last_event_id(request: Request, query_value: str | None) -> ResumePoint | None:
    """Where a stream resumes: an event id, or a late event's token `<position>.<seq>`."""
    raw = request.headers.get("last-event-id") or query_value
    if raw is None or raw == "":
        return None
    match = _EVENT_ID.fullmatch(raw)
    if match is None:
        raise InvalidRequest("last_event_id: must be the id of an event this API sent")
    return ResumePoint(int(match[1]), int(match[2]) if match[2] else None)


def _split(values: str | None, allowed: tuple[str, ...], name: str) -> list[str] | None:
    """`a,b`: exactly what the OpenAPI document says (a non-empty comma-separated list); leave the
    parameter out for no filter."""
    if values is None:
        return None
    items = values.split(",")
    for item in items:
        if item not in allowed:
            raise InvalidRequest(f"{name}: unknown {name} {item!r}; expected one of {', '.join(allowed)}")
    return items


def _only_tagged(tag: str) -> str:
    return f"token: this stream token opens only the streams of jobs tagged {tag!r}"


class StreamTokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    scope: Literal["user", "job", "tag"] = "user"
    request_id: str | None = None
    """The job of a job-scoped token."""
    tag: str | msgspec.UnsetType = msgspec.UNSET
    """The tag of a tag-scoped token; refused with any other scope (a token wider than asked for)."""


class StreamToken(msgspec.Struct):
    token: str
    expires_at: int
    url: str


class EventsController(Controller):
    tags = ["live"]

    @get("/api/jobs/{request_id:str}/events", summary="One job's live status (SSE): snapshot, changes, end")
    async def job_events(
        self, request: Request, pool: PoolDependency, hub: NamedDependency[Hub], tokens: NamedDependency[StreamTokens],
        admission: NamedDependency[Admission], request_id: FromPath[str],
        token: Annotated[str | None, QueryParameter(description="stream token")] = None,
        last_event_id_query: Annotated[str | None, QueryParameter(name="last_event_id", description="resume after this event id")] = None,
    ) -> Response:
        queries.check_request_id(request_id)

        async def tag_opens_job(user_id: str, tag: str) -> None:  # a missing job reads the same: ids leak nothing
            if not await queries.carries_tag(pool, user_id, request_id, tag):
                raise NotAuthenticated(_only_tagged(tag))

        caller = await stream_caller(request, pool, tokens, job_scope(request_id), token, tag_check=tag_opens_job)
        resume_after = last_event_id(request, last_event_id_query)
        ticket = admission.admit(caller, "stream")  # 429 before any work when the caller holds too many
        try:
            stream = await open_job_stream(hub, pool, user_id=caller.user_id, request_id=request_id,
                                           last_event_id=resume_after)
        except JobAlreadyFinished:
            ticket.release()
            return Response(content=b"", status_code=204)  # tells EventSource to stop reconnecting
        except BaseException:
            ticket.release()
            raise
        return EventStreamResponse(AdmittedStream(stream, ticket))

    @get("/api/events", summary="All of the caller's jobs, live (SSE); stays open")
    async def user_events(
        self, request: Request, pool: PoolDependency, hub: NamedDependency[Hub], tokens: NamedDependency[StreamTokens],
        admission: NamedDependency[Admission],
        token: Annotated[str | None, QueryParameter(description="stream token")] = None,
        status: Annotated[str | None, QueryParameter(description="comma-separated statuses")] = None,
        type: Annotated[str | None, QueryParameter(description="image or video")] = None,
        tag: Annotated[str | None, QueryParameter(description="only the jobs carrying this tag")] = None,
        last_event_id_query: Annotated[str | None, QueryParameter(name="last_event_id", description="resume after this event id")] = None,
    ) -> EventStreamResponse:
        statuses = _split(status, JOB_STATUSES, "status")
        types = _split(type, JOB_TYPES, "type")
        wanted = check_tag(tag) if tag is not None else None

        async def tag_is_wanted(_: str, token_tag: str) -> None:
            if token_tag != wanted:
                raise NotAuthenticated(f"{_only_tagged(token_tag)}: open /api/events?tag={quote(token_tag, safe='')}")

        caller = await stream_caller(request, pool, tokens, USER_SCOPE, token, tag_check=tag_is_wanted)
        resume_after = last_event_id(request, last_event_id_query)
        ticket = admission.admit(caller, "stream")
        try:
            stream = await open_user_stream(hub, pool, user_id=caller.user_id, statuses=statuses, types=types,
                                            tag=wanted, last_event_id=resume_after)
        except BaseException:
            ticket.release()
            raise
        return EventStreamResponse(AdmittedStream(stream, ticket))

    @post("/api/stream-tokens", status_code=201, summary="A short-lived token for EventSource (?token=)")
    async def create_stream_token(
        self, data: JSONBody[StreamTokenRequest], caller: CallerDependency, pool: PoolDependency,
        tokens: NamedDependency[StreamTokens],
    ) -> StreamToken:
        if data.scope != "tag" and data.tag is not msgspec.UNSET:
            raise InvalidRequest(f"tag: only a tag-scoped token takes a tag; send scope 'tag', not {data.scope!r}")
        if data.scope == "job":
            if data.request_id is None:
                raise InvalidRequest("request_id: required for a job-scoped token")
            await queries.get_job(pool, caller.user_id, data.request_id)  # 404 for another user's job
            token, expires_at = tokens.issue(caller, job_scope(data.request_id))
            return StreamToken(token=token, expires_at=expires_at, url=f"/api/jobs/{data.request_id}/events?token={token}")
        if data.scope == "tag":
            if data.tag is msgspec.UNSET:
                raise InvalidRequest("tag: required for a tag-scoped token")
            if data.request_id is not None:
                raise InvalidRequest("request_id: a tag-scoped token opens every job with its tag; leave request_id out")
            tag = check_tag(data.tag)
            token, expires_at = tokens.issue(caller, tag_scope(tag))
            return StreamToken(token=token, expires_at=expires_at, url=f"/api/events?token={token}&tag={quote(tag, safe='')}")
        token, expires_at = tokens.issue(caller, USER_SCOPE)
        return StreamToken(token=token, expires_at=expires_at, url=f"/api/events?token={token}")
