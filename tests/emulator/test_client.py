"""The real fal-client against the emulator, over real HTTP."""

from __future__ import annotations

import asyncio
import json

import fal_client
import fal_client.client
import httpx
import pytest
from fal_client import Completed, FalClientHTTPError, InProgress, Queued

from service.emulator import FalEmulator

from .conftest import (
    KEY,
    WebhookReceiver,
    auth,
    fal_against,
    faults,
    lifecycle_over,
    running_emulator,
)

IMAGE_MODEL = "fal-ai/flux/dev"


async def test_submit_and_get_result(emu: FalEmulator, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit(IMAGE_MODEL, {"prompt": "a red fox", "num_images": 2})
    # Status and result URLs use owner/app only, never the subpath.
    assert handle.status_url == f"{emu.base_url}/fal-ai/flux/requests/{handle.request_id}/status"
    assert handle.response_url == f"{emu.base_url}/fal-ai/flux/requests/{handle.request_id}"
    assert handle.cancel_url == f"{emu.base_url}/fal-ai/flux/requests/{handle.request_id}/cancel"

    result = await handle.get(interval=0.02)
    assert result["prompt"] == "a red fox"
    assert len(result["images"]) == 2 and result["has_nsfw_concepts"] == [False, False]
    assert result["seed"] > 2**53
    assert "fal_emulator" not in result


async def test_submit_answer_has_every_fal_field(emu: FalEmulator, http: httpx.AsyncClient) -> None:
    response = await http.post(f"{emu.base_url}/{IMAGE_MODEL}", json={"prompt": "x"}, headers=auth())
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "IN_QUEUE"
    assert set(body) >= {"request_id", "response_url", "status_url", "cancel_url", "queue_position", "gateway_request_id"}


async def test_seed_above_2_53_is_exact_on_the_wire(emu: FalEmulator, http: httpx.AsyncClient, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit(IMAGE_MODEL, {"prompt": "x", "seed": 7})
    await handle.get(interval=0.02)
    raw = (await http.get(handle.response_url, headers=auth())).content
    seed = json.loads(raw)["seed"]  # Python's json keeps big integers exact
    assert seed > 2**53 and str(seed).encode() in raw
    assert seed == emu.requests[handle.request_id].output["seed"]  # type: ignore[index]
    assert float(seed) != seed  # would be corrupted by a double


async def test_webhook_on_success(emu: FalEmulator, fal: fal_client.AsyncClient, receiver: WebhookReceiver) -> None:
    handle = await fal.submit(IMAGE_MODEL, {"prompt": "hook"}, webhook_url=receiver.url)
    result = await handle.get(interval=0.02)
    [delivery] = await receiver.wait_for(1)
    body = json.loads(delivery.body)
    assert body["request_id"] == handle.request_id
    assert body["gateway_request_id"] == emu.requests[handle.request_id].gateway_request_id
    assert body["status"] == "OK" and body["error"] is None
    assert body["payload"] == result
    assert "payload_error" not in body
    assert delivery.headers["x-fal-webhook-request-id"] == handle.request_id
    assert delivery.headers["x-fal-webhook-user-id"] == emu.user_id
    assert delivery.headers["content-type"] == "application/json"


async def test_status_with_and_without_logs(emu: FalEmulator, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit(IMAGE_MODEL, {"prompt": "x", **faults(logs=3, run_ms=200)})
    seen: list[object] = []
    while True:
        status = await fal.status(IMAGE_MODEL, handle.request_id, with_logs=True)
        seen.append(status)
        if isinstance(status, Completed):
            break
        await asyncio.sleep(0.02)
    final = seen[-1]
    assert isinstance(final, Completed)
    assert [log["message"] for log in final.logs or []] == ["Step 1/3", "Step 2/3", "Step 3/3"]
    assert set(final.logs[0]) == {"message", "level", "source", "timestamp"}  # type: ignore[index]
    assert final.metrics == {"inference_time": 0.2}
    assert final.error is None
    for status in seen:
        if isinstance(status, InProgress):
            assert isinstance(status.logs, list)

    without = await handle.status(with_logs=False)
    assert isinstance(without, Completed) and without.logs is None


async def test_status_codes_202_then_200(emu: FalEmulator, http: httpx.AsyncClient, fal: fal_client.AsyncClient) -> None:
    queued_handle = await fal.submit(IMAGE_MODEL, {"prompt": "x", **faults(queue_ms=60_000)})
    queued = await http.get(queued_handle.status_url, headers=auth())
    assert queued.status_code == 202 and queued.json()["status"] == "IN_QUEUE"
    assert "logs" not in queued.json() and isinstance(queued.json()["queue_position"], int)
    early = await http.get(queued_handle.response_url, headers=auth())
    assert early.status_code == 400 and early.json() == {"detail": "Request is still in progress"}
    await queued_handle.cancel()

    handle = await fal.submit(IMAGE_MODEL, {"prompt": "x", **faults(queue_ms=0, run_ms=60_000)})
    await emu.wait_until(lambda: emu.requests[handle.request_id].state == "IN_PROGRESS")
    running = await http.get(handle.status_url, params={"logs": "1"}, headers=auth())
    assert running.status_code == 202 and running.json()["logs"] == []
    await handle.cancel()

    handle = await fal.submit(IMAGE_MODEL, {"prompt": "x"})
    await handle.get(interval=0.02)
    done = await http.get(handle.status_url, params={"logs": "0"}, headers=auth())
    assert done.status_code == 200 and done.json()["logs"] is None


async def test_iter_events_ends_completed(emu: FalEmulator, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit(IMAGE_MODEL, {"prompt": "x", **faults(queue_ms=150, run_ms=150, logs=2)})
    events = [event async for event in handle.iter_events(with_logs=True, interval=0.02)]
    assert isinstance(events[-1], Completed)
    order = {Queued: 0, InProgress: 1, Completed: 2}
    ranks = [order[type(e)] for e in events]
    assert ranks == sorted(ranks)


async def test_queue_position_counts_down(emu: FalEmulator, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit(IMAGE_MODEL, {"prompt": "x", **faults(queue_ms=400, queue_position=3)})
    positions = [
        e.position async for e in handle.iter_events(interval=0.02) if isinstance(e, Queued)
    ]
    assert positions and positions == sorted(positions, reverse=True)
    assert positions[0] <= 3 and positions[-1] >= 0


async def test_requests_ahead_count_in_queue_position(emu: FalEmulator, http: httpx.AsyncClient) -> None:
    slow = faults(queue_ms=60_000)
    first = (await http.post(f"{emu.base_url}/{IMAGE_MODEL}", json={"prompt": "1", **slow}, headers=auth())).json()
    second = (await http.post(f"{emu.base_url}/fal-ai/flux/schnell", json={"prompt": "2", **slow}, headers=auth())).json()
    other_app = (await http.post(f"{emu.base_url}/fal-ai/recraft-v3", json={"prompt": "3", **slow}, headers=auth())).json()
    assert first["queue_position"] == 0
    assert second["queue_position"] == 1  # same owner/app (fal-ai/flux), submitted later
    assert other_app["queue_position"] == 0
    for answer in (first, second, other_app):
        await http.put(answer["cancel_url"], headers=auth())


async def test_status_stream_sse(emu: FalEmulator, http: httpx.AsyncClient, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit(IMAGE_MODEL, {"prompt": "x", **faults(queue_ms=100, run_ms=200, logs=2)})
    events: list[dict[str, object]] = []
    async with http.stream("GET", handle.status_url + "/stream", params={"logs": "1"}, headers=auth()) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    # The server closed the stream after COMPLETED.
    assert events[-1]["status"] == "COMPLETED"
    assert [e["message"] for e in events[-1]["logs"]] == ["Step 1/2", "Step 2/2"]  # type: ignore[union-attr]
    assert {"IN_PROGRESS", "COMPLETED"} <= {e["status"] for e in events}


async def test_status_stream_heartbeat_and_sse_client(http: httpx.AsyncClient) -> None:
    from httpx_sse import aconnect_sse

    async with running_emulator(heartbeat_s=0.05) as emulator:
        response = await http.post(
            f"{emulator.base_url}/{IMAGE_MODEL}", json={"prompt": "x", **faults(run_ms=300)}, headers=auth()
        )
        status_url = response.json()["status_url"]
        raw_lines: list[str] = []
        async with http.stream("GET", status_url + "/stream", headers=auth()) as stream:
            async for line in stream.aiter_lines():
                raw_lines.append(line)
        assert any(line.startswith(":") for line in raw_lines)

        # And through a standard SSE client: every event parses as a status object.
        async with aconnect_sse(http, "GET", status_url + "/stream", headers=auth()) as source:
            statuses = [json.loads(sse.data)["status"] async for sse in source.aiter_sse()]
        assert statuses == ["COMPLETED"]


async def test_result_async_and_handles(emu: FalEmulator, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit("fal-ai/flux/dev", {"prompt": "x"})
    result = await fal.result("fal-ai/flux/dev", handle.request_id)
    assert result == emu.requests[handle.request_id].output
    rebuilt = await fal.get_handle("fal-ai/flux/dev", handle.request_id)
    assert rebuilt.status_url == handle.status_url
    assert isinstance(await rebuilt.status(), Completed)
    assert await rebuilt.get(interval=0.02) == result


async def test_module_level_functions_with_fal_key_env(emu: FalEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    # fal_client.submit_async & co. are bound to a module-level AsyncClient that reads FAL_KEY and
    # caches its credentials and httpx client on first use: start it clean and leave it clean.
    monkeypatch.setenv("FAL_KEY", KEY)
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", emu.base_url + "/")
    shared = fal_client.async_client
    saved = {name: shared.__dict__.pop(name) for name in ("_auth", "_client") if name in shared.__dict__}
    try:
        handle = await fal_client.submit_async(IMAGE_MODEL, {"prompt": "module"}, webhook_url=None)
        assert isinstance(handle, fal_client.AsyncRequestHandle)
        status = await fal_client.status_async(IMAGE_MODEL, handle.request_id, with_logs=True)
        assert isinstance(status, (Queued, InProgress, Completed))
        result = await fal_client.result_async(IMAGE_MODEL, handle.request_id)
        assert result["prompt"] == "module"
        with pytest.raises(FalClientHTTPError) as info:
            await fal_client.cancel_async(IMAGE_MODEL, handle.request_id)
        assert info.value.status_code == 400
    finally:
        if "_client" in shared.__dict__:
            await (await shared._client).aclose()
        for name in ("_auth", "_client"):
            shared.__dict__.pop(name, None)
        shared.__dict__.update(saved)


async def test_cancel_queued_request(emu: FalEmulator, fal: fal_client.AsyncClient, receiver: WebhookReceiver, http: httpx.AsyncClient) -> None:
    handle = await fal.submit(IMAGE_MODEL, {"prompt": "x", **faults(queue_ms=5000)}, webhook_url=receiver.url)
    raw = await http.put(handle.cancel_url, headers=auth())
    assert raw.status_code == 202 and raw.json() == {"status": "CANCELLATION_REQUESTED"}

    status = await handle.status()
    assert isinstance(status, Completed) and status.error == "Request was cancelled"
    with pytest.raises(FalClientHTTPError) as result_error:
        await handle.get(interval=0.02)
    assert result_error.value.status_code == 400

    # Second cancel: ALREADY_COMPLETED, which fal-client raises as an HTTP 400.
    with pytest.raises(FalClientHTTPError) as again:
        await fal.cancel(IMAGE_MODEL, handle.request_id)
    assert again.value.status_code == 400 and "ALREADY_COMPLETED" in str(again.value)
    # No webhook for a cancelled request (fal: removed from the queue, never processed).
    await lifecycle_over(emu, handle.request_id)  # its task is over: nothing more will be sent
    assert receiver.for_request(handle.request_id) == [] and emu.deliveries_for(handle.request_id) == []


async def test_cancel_running_request_via_handle(emu: FalEmulator, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit(IMAGE_MODEL, {"prompt": "x", **faults(queue_ms=0, run_ms=5000)})
    await emu.wait_until(lambda: emu.requests[handle.request_id].state == "IN_PROGRESS")
    await handle.cancel()  # 202: no exception
    assert emu.requests[handle.request_id].state == "COMPLETED"


async def test_cancel_after_completion_and_unknown(emu: FalEmulator, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit(IMAGE_MODEL, {"prompt": "x"})
    await handle.get(interval=0.02)
    with pytest.raises(FalClientHTTPError) as done:
        await handle.cancel()
    assert done.value.status_code == 400 and json.loads(done.value.response.text) == {"status": "ALREADY_COMPLETED"}
    with pytest.raises(FalClientHTTPError) as missing:
        await fal.cancel(IMAGE_MODEL, "00000000-0000-0000-0000-000000000000")
    assert missing.value.status_code == 404 and missing.value.response.json() == {"status": "NOT_FOUND"}


async def test_unknown_request_id_is_404(emu: FalEmulator, fal: fal_client.AsyncClient, http: httpx.AsyncClient) -> None:
    with pytest.raises(FalClientHTTPError) as info:
        await fal.status(IMAGE_MODEL, "nope")
    assert info.value.status_code == 404
    for suffix in ("", "/response", "/status/stream"):
        response = await http.get(f"{emu.base_url}/fal-ai/flux/requests/nope{suffix}", headers=auth())
        assert response.status_code == 404 and "detail" in response.json()
    # A request is only visible under the owner/app it was submitted to.
    handle = await fal.submit(IMAGE_MODEL, {"prompt": "x"})
    other = await http.get(f"{emu.base_url}/fal-ai/other/requests/{handle.request_id}/status", headers=auth())
    assert other.status_code == 404


async def test_wrong_key_is_401(emu: FalEmulator, fal: fal_client.AsyncClient, http: httpx.AsyncClient) -> None:
    async with fal_against(emu, key="wrong:key") as bad:
        with pytest.raises(FalClientHTTPError) as info:
            await bad.submit(IMAGE_MODEL, {"prompt": "x"})
        assert info.value.status_code == 401
    handle = await fal.submit(IMAGE_MODEL, {"prompt": "x"})
    for method, url in (
        ("GET", handle.status_url),
        ("GET", handle.status_url + "/stream"),
        ("GET", handle.response_url),
        ("PUT", handle.cancel_url),
    ):
        for headers in ({}, auth("wrong"), {"Authorization": f"Bearer {KEY}"}):
            response = await http.request(method, url, headers=headers)
            assert response.status_code == 401, (method, url, headers)
            assert "detail" in response.json()
    # Media and JWKS stay public.
    assert (await http.get(emu.jwks_url)).status_code == 200


async def test_error_outcome(emu: FalEmulator, fal: fal_client.AsyncClient, receiver: WebhookReceiver) -> None:
    handle = await fal.submit(IMAGE_MODEL, {"prompt": "x", **faults(outcome="error")}, webhook_url=receiver.url)
    with pytest.raises(FalClientHTTPError) as info:
        await handle.get(interval=0.02)
    assert info.value.status_code == 422
    assert isinstance(info.value.message, list) and info.value.message[0]["loc"] == ["body", "prompt"]
    status = await handle.status()
    assert isinstance(status, Completed) and status.error == "Invalid status code: 422"
    [delivery] = await receiver.wait_for(1)
    body = json.loads(delivery.body)
    assert body["status"] == "ERROR" and body["error"] == "Invalid status code: 422"
    assert body["payload"] == {"detail": info.value.message}


async def test_invalid_model_input_completes_with_422(emu: FalEmulator, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit(IMAGE_MODEL, {"prompt": "x", "image_size": "huge"})
    with pytest.raises(FalClientHTTPError) as info:
        await handle.get(interval=0.02)
    assert info.value.status_code == 422 and info.value.message[0]["loc"] == ["body", "image_size"]


async def test_submit_5xx_is_not_retried_by_fal_client(emu: FalEmulator, fal: fal_client.AsyncClient) -> None:
    # fal-client retries 502/503/504 only when they look like an ingress (nginx) page; a JSON 5xx from
    # fal's queue goes straight to the caller.
    for code in (500, 503):
        before = len(emu.submissions)
        with pytest.raises(FalClientHTTPError) as info:
            await fal.submit(IMAGE_MODEL, {"prompt": "x", **faults(submit_status=code)})
        assert info.value.status_code == code and "detail" in info.value.response.json()
        assert [s.status_code for s in emu.submissions[before:]] == [code]
        assert emu.submissions[-1].request_id is None  # no request was created


async def test_submit_429_is_retried_by_fal_client(emu: FalEmulator, fal: fal_client.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fal_client.client, "_get_retry_delay", lambda *args, **kwargs: 0.0)
    before = len(emu.submissions)
    with pytest.raises(FalClientHTTPError) as info:
        await fal.submit(IMAGE_MODEL, {"prompt": "x", **faults(submit_status=429)})
    assert info.value.status_code == 429
    assert len(emu.submissions) - before == fal_client.client.MAX_ATTEMPTS


async def test_namespaced_app_ids(emu: FalEmulator, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit("workflows/someone/my-flow", {"prompt": "x"})
    assert handle.status_url.startswith(f"{emu.base_url}/workflows/someone/my-flow/requests/")
    assert (await handle.get(interval=0.02))["prompt"] == "x"
    assert (await fal.result("workflows/someone/my-flow", handle.request_id))["prompt"] == "x"


async def test_default_timing_is_an_engine_setting(http: httpx.AsyncClient) -> None:
    async with running_emulator(default_queue_ms=0, default_run_ms=7000) as emulator:
        response = await http.post(f"{emulator.base_url}/{IMAGE_MODEL}", json={"prompt": "x"}, headers=auth())
        request = emulator.requests[response.json()["request_id"]]
        assert (request.queue_ms, request.run_ms) == (0, 7000)
        await emulator.wait_until(lambda: request.state == "IN_PROGRESS")


async def test_aclose_is_idempotent(http: httpx.AsyncClient) -> None:
    async with running_emulator() as emulator:
        await http.post(f"{emulator.base_url}/{IMAGE_MODEL}", json={"prompt": "x", **faults(run_ms=10_000)}, headers=auth())
        await emulator.aclose()
        await emulator.aclose()
    await emulator.aclose()  # and again after the app's own on_shutdown
    assert emulator.closed
