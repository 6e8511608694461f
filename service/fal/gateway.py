"""The one place that talks to fal, through fal-client.

fal-client builds queue URLs from the module-wide `fal_client.client.QUEUE_URL_FORMAT`, so two
gateways in one process (the service and the emulator's tests, or two services) would share it by
accident. Each gateway therefore aims fal-client per call, from its own queue URL: status, result
and cancel go through request handles built from that URL (no module global read at all); submit,
which has no such handle, sets the global right before the call, once fal-client's HTTP client
exists, so that the call builds its URL before its first suspension and no other task can change
it in between. fal-client's `iter_events` polls; for fal's status *stream* we use the authenticated
httpx client that fal-client itself holds, so credentials stay in one place.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Literal

import fal_client
import fal_client.client
import httpx
import msgspec
from httpx_sse import aconnect_sse

from service import metrics
from service.db.storable import storable_json
from service.errors import UpstreamError
from service.settings import FAL_API_URL_DEFAULT

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

log = logging.getLogger(__name__)

CancelOutcome = Literal["requested", "already_completed", "not_found"]
RESULT_TIMEOUT_S = 30.0
SCHEMA_TIMEOUT_S = 5.0
"""A model's schema is read before a submit: it must not hold the submit long."""
PRICES_PER_CALL = 50
"""fal's pricing call takes 1 to 50 endpoint ids."""
PRICES_MAX_PAGES = 10


class FalRequestFailed(Exception):
    """fal answered a call about one request with an error status (e.g. the result of a failed run)."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"fal answered {status_code}")
        self.status_code = status_code
        self.detail = detail


class FalLogLine(msgspec.Struct, kw_only=True):
    """One line of a request's logs, as fal sends it."""

    message: str
    level: str | None = None
    source: str | None = None
    timestamp: str | None = None


class FalPrice(msgspec.Struct, kw_only=True, frozen=True):
    """One endpoint's unit price, as fal's Platform API answers it (`GET /v1/models/pricing`)."""

    endpoint_id: str
    unit_price: float
    unit: str
    """The billing unit: image, megapixel, second of video..."""
    currency: str


class _FalPrices(msgspec.Struct, kw_only=True):
    prices: list[FalPrice]
    next_cursor: str | None = None
    has_more: bool = False


class FalStatus(msgspec.Struct, kw_only=True):
    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    request_id: str | None = None
    queue_position: int | None = None
    logs: list[FalLogLine] | None = None
    error: str | None = None
    error_type: str | None = None


def _app_path(model_id: str) -> tuple[str, str]:
    """`owner/app/sub/path` -> (`owner/app`, `sub/path`): status, result and cancel use owner/app only."""
    parts = model_id.split("/")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _detail(error: fal_client.client.FalClientHTTPError) -> Any:
    try:
        body = error.response.json()
    except ValueError:
        return error.response.text[:500]
    return body.get("detail", body) if isinstance(body, dict) else body


class FalGateway:
    def __init__(self, *, key: str, queue_url: str, timeout_s: float = 30.0, media_expiry_s: int | None = None,
                 call_timeout_s: float = 30.0, stream_read_timeout_s: float = 60.0, schema_url: str | None = None,
                 api_url: str = FAL_API_URL_DEFAULT) -> None:
        self._queue_url = queue_url.rstrip("/")
        self._api_url = api_url.rstrip("/")
        self._schema_url = schema_url
        # fal's model schemas are public: read without our key, on a client of their own.
        self._public = httpx.AsyncClient(timeout=SCHEMA_TIMEOUT_S, headers={"User-Agent": fal_client.client.USER_AGENT})
        # fal keeps a request's media per this header: once our copy is safe, fal's may go.
        self._submit_headers = {} if media_expiry_s is None else {
            "X-Fal-Object-Lifecycle-Preference": msgspec.json.encode({"expiration_duration_seconds": media_expiry_s}).decode()
        }
        # Bounds a status or cancel call, fal-client's own retries included (it retries a time-out
        # up to ten times, at 120 s each).
        self._call_timeout_s = call_timeout_s
        # fal sends a comment every 15 s on a quiet status stream: a longer silence is a stalled one.
        self._stream_timeout = httpx.Timeout(30.0, read=stream_read_timeout_s)
        self._client = fal_client.AsyncClient(key=key, default_timeout=timeout_s)
        # Status streams stay open for a job's whole life, one per followed job: on fal-client's
        # client they would take its pool's connections (100) and leave a submit waiting for one.
        # They get a client of their own, unbounded here (the followers bound them: MAX_FOLLOWERS).
        self._streams = httpx.AsyncClient(headers={"Authorization": f"Key {key}", "User-Agent": fal_client.client.USER_AGENT},
                                          timeout=self._stream_timeout,
                                          limits=httpx.Limits(max_connections=None, max_keepalive_connections=20))

    async def _aimed(self) -> fal_client.AsyncClient:
        """fal-client, aimed at this gateway's queue for the submit about to be made (see above)."""
        await self._http()  # resolved (and cached) first: from then on, awaiting it does not suspend
        fal_client.client.QUEUE_URL_FORMAT = self._queue_url + "/"
        return self._client

    async def _handle(self, model_id: str, request_id: str) -> fal_client.AsyncRequestHandle:
        """fal-client's handle on one request, at this gateway's own URLs."""
        url = self._request_url(model_id, request_id)
        return fal_client.AsyncRequestHandle(request_id=request_id, response_url=url, status_url=f"{url}/status",
                                             cancel_url=f"{url}/cancel", client=await self._http())

    async def aclose(self) -> None:
        http = await self._http()
        await http.aclose()
        await self._streams.aclose()
        await self._public.aclose()

    async def _http(self) -> httpx.AsyncClient:
        return await self._client._client  # fal-client's own client, with our credentials

    @metrics.fal_call("submit")
    async def submit(self, model_id: str, arguments: dict[str, Any], webhook_url: str | None) -> str:
        """Queue a request and return fal's request id; UpstreamError names fal's refusal."""
        app, path = _app_path(model_id)
        try:
            # Bounded like every call to fal (fal-client retries a time-out on its own, for minutes).
            async with asyncio.timeout(self._call_timeout_s):
                handle = await (await self._aimed()).submit(app, arguments, path=path, webhook_url=webhook_url,
                                                            headers=self._submit_headers)
        except fal_client.client.FalClientHTTPError as error:
            raise UpstreamError(f"fal refused the submit: {error.status_code} {_detail(error)}") from None
        except httpx.HTTPError as error:
            raise UpstreamError(f"fal could not be reached: {type(error).__name__}") from None
        except TimeoutError:
            raise UpstreamError(f"fal did not take the submit within {self._call_timeout_s:g} s") from None
        return handle.request_id

    @metrics.fal_call("status")
    async def status(self, model_id: str, request_id: str) -> FalStatus:
        try:
            async with asyncio.timeout(self._call_timeout_s):
                status = await (await self._handle(model_id, request_id)).status(with_logs=True)
        except fal_client.client.FalClientHTTPError as error:
            raise FalRequestFailed(error.status_code, _detail(error)) from None
        if isinstance(status, fal_client.Queued):
            return FalStatus(status="IN_QUEUE", request_id=request_id, queue_position=status.position)
        if not isinstance(status, (fal_client.InProgress, fal_client.Completed)):
            raise TypeError(f"fal-client answered a status of an unknown kind: {type(status).__name__}")
        logs = msgspec.convert(status.logs, list[FalLogLine] | None)
        if isinstance(status, fal_client.InProgress):
            return FalStatus(status="IN_PROGRESS", request_id=request_id, logs=logs)
        return FalStatus(status="COMPLETED", request_id=request_id, logs=logs, error=status.error, error_type=status.error_type)

    async def stream_status(self, model_id: str, request_id: str) -> AsyncIterator[FalStatus]:
        """fal's status stream: one status per change, ending after COMPLETED."""
        url = f"{self._request_url(model_id, request_id)}/status/stream"
        async with aconnect_sse(self._streams, "GET", url, params={"logs": "1"}, timeout=self._stream_timeout) as source:
            if source.response.status_code >= 400:
                await source.response.aread()
                raise FalRequestFailed(source.response.status_code, _body(source.response))
            async for event in source.aiter_sse():
                if event.data:
                    yield msgspec.json.decode(storable_json(event.data.encode()), type=FalStatus)

    @metrics.fal_call("result")
    async def result(self, model_id: str, request_id: str) -> Any:
        """The output of a completed request; FalRequestFailed carries a failed one's error body."""
        try:
            # fal-client polls the status every 0.1 s until COMPLETED before it fetches: bound it.
            async with asyncio.timeout(RESULT_TIMEOUT_S):
                return await (await self._handle(model_id, request_id)).get()
        except fal_client.client.FalClientHTTPError as error:
            raise FalRequestFailed(error.status_code, _detail(error)) from None

    @metrics.fal_call("cancel")
    async def cancel(self, model_id: str, request_id: str) -> CancelOutcome:
        try:
            async with asyncio.timeout(self._call_timeout_s):
                await (await self._handle(model_id, request_id)).cancel()
        except fal_client.client.FalClientHTTPError as error:
            if error.status_code == 400:
                return "already_completed"
            if error.status_code == 404:
                return "not_found"
            raise UpstreamError(f"fal refused the cancel: {error.status_code} {_detail(error)}") from None
        except (httpx.HTTPError, TimeoutError) as error:
            raise UpstreamError(f"fal could not be reached: {type(error).__name__}") from None
        return "requested"

    @metrics.fal_call("schema")
    async def model_openapi(self, model_id: str) -> Any:
        """fal's OpenAPI document of one endpoint (`GET {schema_url}?endpoint_id=<id>`: its input and
        output schemas); UpstreamError when it cannot be had within SCHEMA_TIMEOUT_S."""
        if self._schema_url is None:
            raise UpstreamError("no FAL_SCHEMA_URL to read model schemas from")
        try:
            async with asyncio.timeout(SCHEMA_TIMEOUT_S):
                response = await self._public.get(self._schema_url, params={"endpoint_id": model_id})
        except (httpx.HTTPError, TimeoutError) as error:
            raise UpstreamError(f"fal's schema could not be read: {type(error).__name__}") from None
        if response.status_code != 200:
            raise UpstreamError(f"fal's schema: fal answered {response.status_code}")
        try:
            return msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            raise UpstreamError("fal's schema: the answer is not JSON") from None

    @metrics.fal_call("prices")
    async def prices(self, endpoint_ids: list[str], *, timeout_s: float) -> list[FalPrice]:
        """fal's unit prices for these endpoints (those fal prices; others are left out), read
        from its Platform API within `timeout_s` in all; UpstreamError when fal cannot be asked."""
        found: list[FalPrice] = []
        try:
            async with asyncio.timeout(timeout_s):
                for start in range(0, len(endpoint_ids), PRICES_PER_CALL):
                    found += await self._price_pages(endpoint_ids[start:start + PRICES_PER_CALL])
        except httpx.HTTPError as error:
            raise UpstreamError(f"fal's pricing could not be read: {type(error).__name__}") from None
        except TimeoutError:
            raise UpstreamError(f"fal's pricing did not answer within {timeout_s:g} s") from None
        return found

    async def _price_pages(self, endpoint_ids: list[str]) -> list[FalPrice]:
        params: dict[str, str] = {"endpoint_id": ",".join(endpoint_ids)}
        found: list[FalPrice] = []
        for _ in range(PRICES_MAX_PAGES):
            response = await self._streams.get(f"{self._api_url}/v1/models/pricing", params=params)
            if response.status_code != 200:
                raise UpstreamError(f"fal refused the pricing call: {response.status_code} {_body(response)}")
            try:
                page = msgspec.json.decode(response.content, type=_FalPrices)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                raise UpstreamError(f"fal's pricing answer is not as documented: {error}") from None
            found += page.prices
            if not page.has_more or not page.next_cursor:
                break
            params["cursor"] = page.next_cursor
        return found

    def _request_url(self, model_id: str, request_id: str) -> str:
        app, _ = _app_path(model_id)
        return f"{self._queue_url}/{app}/requests/{request_id}"


CANCELLED_ERROR = "Request was cancelled"
"""fal's error text for a request cancelled at fal (by us, or by its owner elsewhere)."""


def was_cancelled(error: str | None, detail: Any) -> bool:
    """fal reports a cancelled request as COMPLETED with this error (its result: 400 with it as the
    detail): our `cancelled`, not `failed`."""
    return error == CANCELLED_ERROR or detail == CANCELLED_ERROR or (
        isinstance(detail, dict) and detail.get("detail") == CANCELLED_ERROR)


def describe_error(error: str | None, detail: Any) -> str:
    """fal's error line, with the first validation message of its detail when there is one:
    "Invalid status code: 422: prompt is required" says more than the status code alone."""
    text = error or "fal reported an error"
    items = detail.get("detail") if isinstance(detail, dict) else detail
    if isinstance(items, list) and items and isinstance(items[0], dict) and items[0].get("msg"):
        return f"{text}: {items[0]['msg']}"
    if isinstance(items, str) and items:
        return f"{text}: {items}"
    return text


def _body(response: httpx.Response) -> Any:
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return response.text[:500]
    return body.get("detail", body) if isinstance(body, dict) else body


async def sleep_backoff(attempt: int, *, base_s: float = 0.5, cap_s: float = 10.0) -> None:
    await asyncio.sleep(min(cap_s, base_s * 2 ** min(attempt, 10)))
