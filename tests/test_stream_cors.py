"""CORS on the event streams, over real HTTP: an app on another origin opens a job's or the user's
stream with a stream token, and reads the stream's refusals (401, 204) as the TypeScript client's
probe does; every route that a cookie or an API key authorizes stays same-origin."""

from __future__ import annotations

from typing import Any

import httpx

from service.auth.api_keys import NewUser
from tests.conftest import RunningServer, bearer

ORIGIN = {"Origin": "http://127.0.0.1:3000"}  # the Next.js example's origin, say
CORS = "access-control-allow-origin"


async def answer_head(http: httpx.AsyncClient, url: str, **headers: str) -> httpx.Response:
    """The answer's status and headers (and a refusal's body), without waiting for a stream's end."""
    async with http.stream("GET", url, headers={**ORIGIN, "Accept": "text/event-stream", **headers}) as response:
        if response.status_code != 200:
            await response.aread()
        return response


async def create(http: httpx.AsyncClient, service: RunningServer, user: NewUser) -> dict[str, Any]:
    body = {"type": "image", "model_id": "fal-ai/flux/schnell", "input": {"prompt": "a red fox"}}
    created = await http.post(f"{service.url}/api/jobs", json=body, headers=bearer(user))
    assert created.status_code == 202, created.text
    return dict(created.json())


async def token(http: httpx.AsyncClient, service: RunningServer, user: NewUser, **scope: str) -> str:
    minted = await http.post(f"{service.url}/api/stream-tokens", json=scope, headers=bearer(user))
    assert minted.status_code == 201, minted.text
    assert CORS not in minted.headers, "minting takes the API key: same-origin only"
    return str(minted.json()["token"])


async def test_a_job_stream_and_its_refusals_are_readable_from_any_origin(
    http: httpx.AsyncClient, service: RunningServer, user: NewUser,
) -> None:
    job = await create(http, service, user)
    events = f"{service.url}/api/jobs/{job['request_id']}/events"

    opened = await answer_head(http, f"{events}?token={job['stream_token']}")
    assert opened.status_code == 200 and opened.headers["content-type"].startswith("text/event-stream")
    assert opened.headers[CORS] == "*"
    exposed = {name.strip().lower() for name in opened.headers["access-control-expose-headers"].split(",")}
    assert {"retry-after", "x-request-id"} <= exposed

    refused = await answer_head(http, f"{events}?token=not-a-token")
    assert refused.status_code == 401 and refused.headers[CORS] == "*"
    assert refused.json()["error"] == "not_authenticated", "the probe reads the error shape too"

    # Read the stream to its end, then resume after its last event: 204, which tells the client to stop.
    last_id = None
    async with http.stream("GET", f"{events}?token={job['stream_token']}", headers=ORIGIN) as response:
        async for line in response.aiter_lines():
            if line.startswith("id:"):
                last_id = line.removeprefix("id:").strip()
    assert last_id is not None
    ended = await answer_head(http, f"{events}?token={job['stream_token']}&last_event_id={last_id}")
    assert ended.status_code == 204 and ended.headers[CORS] == "*"


async def test_the_user_stream_is_readable_from_any_origin(
    http: httpx.AsyncClient, service: RunningServer, user: NewUser,
) -> None:
    user_token = await token(http, service, user, scope="user")
    opened = await answer_head(http, f"{service.url}/api/events?token={user_token}")
    assert opened.status_code == 200 and opened.headers[CORS] == "*"
    refused = await answer_head(http, f"{service.url}/api/events")
    assert refused.status_code == 401 and refused.headers[CORS] == "*"


async def test_routes_a_cookie_or_an_api_key_authorizes_stay_same_origin(
    http: httpx.AsyncClient, service: RunningServer, user: NewUser,
) -> None:
    job = await create(http, service, user)
    for path in ("/api/jobs", f"/api/jobs/{job['request_id']}", "/api/models", "/"):
        answer = await http.get(f"{service.url}{path}", headers={**ORIGIN, **bearer(user)})
        assert answer.status_code == 200, (path, answer.text)
        assert not any(name.startswith("access-control-") for name in answer.headers), path
    assert CORS not in (await http.post(f"{service.url}/api/jobs", json={}, headers={**ORIGIN, **bearer(user)})).headers
    # No preflight is granted: a page elsewhere cannot send an API key to the streams either.
    preflight = await http.options(f"{service.url}/api/events", headers={
        **ORIGIN, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"})
    assert not any(name.startswith("access-control-") for name in preflight.headers), preflight.headers
