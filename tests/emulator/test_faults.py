"""Each `fal_emulator` fault option, and webhook delivery (retries, duplicates, ordering)."""

from __future__ import annotations

import asyncio
import json

import fal_client
import httpx
import pytest
from fal_client import FalClientHTTPError

from service.emulator import FalEmulator, FaultOptions, FaultOptionsError
from service.emulator.faults import parse_fault_options
from service.fal.signatures import JwksKeyring, WebhookSignatureError, WebhookVerifier

from .conftest import FAST_RETRIES, WebhookReceiver, auth, closed_port_url, faults, lifecycle_over, running_emulator

MODEL = "fal-ai/flux/dev"


def test_parse_defaults_and_values() -> None:
    assert parse_fault_options(None) == FaultOptions()
    options = parse_fault_options({"queue_ms": 0, "outcome": "payload_error", "duplicates": 2, "logs": 4})
    assert (options.queue_ms, options.outcome, options.duplicates, options.logs) == (0, "payload_error", 2, 4)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"nope": 1}, "nope"),
        ({"queue_ms": -1}, "queue_ms"),
        ({"queue_ms": "10"}, "queue_ms"),
        ({"outcome": "explode"}, "outcome"),
        ({"duplicates": 0}, "duplicates"),
        ({"submit_status": 200}, "submit_status"),
        ({"bad_signature": "yes"}, "bad_signature"),
        ({"logs": 1.5}, "logs"),
    ],
)
def test_parse_rejects_naming_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(FaultOptionsError) as info:
        parse_fault_options(raw)
    assert info.value.field == field and field in str(info.value.detail())


async def test_bad_options_are_422_on_submit(emu: FalEmulator, fal: fal_client.AsyncClient, http: httpx.AsyncClient) -> None:
    with pytest.raises(FalClientHTTPError) as info:
        await fal.submit(MODEL, {"prompt": "x", **faults(run_ms="slow")})
    assert info.value.status_code == 422
    assert info.value.message[0]["loc"] == ["body", "fal_emulator", "run_ms"]
    response = await http.post(f"{emu.base_url}/{MODEL}", json={"fal_emulator": [1]}, headers=auth())
    assert response.status_code == 422
    response = await http.post(f"{emu.base_url}/{MODEL}", content=b"{not json", headers=auth())
    assert response.status_code == 422


async def test_fault_key_is_stripped(emu: FalEmulator, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit(MODEL, {"prompt": "x", **faults(logs=1)})
    assert "fal_emulator" not in emu.requests[handle.request_id].input
    assert "fal_emulator" not in json.dumps(await handle.get(interval=0.02))


async def test_payload_error(emu: FalEmulator, fal: fal_client.AsyncClient, receiver: WebhookReceiver) -> None:
    handle = await fal.submit(MODEL, {"prompt": "x", **faults(outcome="payload_error")}, webhook_url=receiver.url)
    [delivery] = await receiver.wait_for(1)
    body = json.loads(delivery.body)
    assert body["status"] == "OK" and body["payload"] is None and body["payload_error"]
    # The queue still has the real output.
    result = await handle.get(interval=0.02)
    assert result["images"] and result["seed"] > 2**53


async def test_duplicates(emu: FalEmulator, fal: fal_client.AsyncClient, receiver: WebhookReceiver) -> None:
    handle = await fal.submit(MODEL, {"prompt": "x", **faults(duplicates=3)}, webhook_url=receiver.url)
    received = await receiver.wait_for(3)
    assert len({r.body for r in received}) == 1
    await emu.wait_until(lambda: len(emu.deliveries_for(handle.request_id)) == 3)
    assert [(d.delivery, d.attempt, d.status_code) for d in emu.deliveries_for(handle.request_id)] == [
        (1, 1, 200), (2, 1, 200), (3, 1, 200)
    ]


async def test_retries_until_2xx(emu: FalEmulator, fal: fal_client.AsyncClient, receiver: WebhookReceiver) -> None:
    receiver.statuses.extend([500, 500, 200])
    handle = await fal.submit(MODEL, {"prompt": "x"}, webhook_url=receiver.url)
    received = await receiver.wait_for(3)
    assert len({r.body for r in received}) == 1  # same body, re-signed per attempt
    await emu.wait_until(lambda: len(emu.deliveries_for(handle.request_id)) == 3)
    attempts = emu.deliveries_for(handle.request_id)
    assert [(a.attempt, a.status_code, a.ok) for a in attempts] == [(1, 500, False), (2, 500, False), (3, 200, True)]
    await lifecycle_over(emu, handle.request_id)
    assert len(receiver.received) == 3  # nothing after the success


async def test_retries_give_up_after_schedule(emu: FalEmulator, fal: fal_client.AsyncClient, receiver: WebhookReceiver) -> None:
    receiver.statuses.extend([503] * 10)
    handle = await fal.submit(MODEL, {"prompt": "x"}, webhook_url=receiver.url)
    await receiver.wait_for(len(FAST_RETRIES) + 1)
    await lifecycle_over(emu, handle.request_id)
    assert len(emu.deliveries_for(handle.request_id)) == len(FAST_RETRIES) + 1
    assert all(d.status_code == 503 for d in emu.deliveries_for(handle.request_id))


async def test_retry_on_connection_error_and_timeout(receiver: WebhookReceiver, http: httpx.AsyncClient) -> None:
    # The time-out is generous (a loaded machine must answer the retry inside it) and the slow
    # answer far longer still, so which attempt times out does not depend on the machine's speed.
    async with running_emulator(webhook_timeout_s=2.0, retry_schedule_s=(0.05,)) as emulator:
        dead = await http.post(f"{emulator.base_url}/{MODEL}", params={"fal_webhook": closed_port_url()}, json={}, headers=auth())
        dead_id = dead.json()["request_id"]
        await emulator.wait_until(lambda: len(emulator.deliveries_for(dead_id)) == 2)
        assert all(d.status_code is None and d.error for d in emulator.deliveries_for(dead_id))

        receiver.delays_s.append(30.0)  # the first attempt outlives the 2 s time-out
        slow = await http.post(f"{emulator.base_url}/{MODEL}", params={"fal_webhook": receiver.url}, json={}, headers=auth())
        slow_id = slow.json()["request_id"]
        await emulator.wait_until(lambda: len(emulator.deliveries_for(slow_id)) == 2)
        first, second = emulator.deliveries_for(slow_id)
        assert first.status_code is None and "timeout" in (first.error or "")
        assert second.status_code == 200


async def test_webhook_delay_reorders_deliveries(emu: FalEmulator, fal: fal_client.AsyncClient, receiver: WebhookReceiver) -> None:
    late = await fal.submit(MODEL, {"prompt": "late", **faults(webhook_delay_ms=1000)}, webhook_url=receiver.url)
    early = await fal.submit(MODEL, {"prompt": "early"}, webhook_url=receiver.url)
    received = await receiver.wait_for(2)
    order = [r.headers["x-fal-webhook-request-id"] for r in received]
    assert order == [early.request_id, late.request_id]


async def test_webhook_before_submit_response(emu: FalEmulator, fal: fal_client.AsyncClient, receiver: WebhookReceiver) -> None:
    handle = await fal.submit(MODEL, {"prompt": "x", **faults(webhook_before_submit_response=True)}, webhook_url=receiver.url)
    # By the time submit answered, the webhook had already been delivered and the request was done.
    assert [r.headers["x-fal-webhook-request-id"] for r in receiver.received] == [handle.request_id]
    assert emu.requests[handle.request_id].state == "COMPLETED"


async def test_before_submit_response_even_when_receiver_fails(emu: FalEmulator, fal: fal_client.AsyncClient, receiver: WebhookReceiver) -> None:
    # A receiver that does not know the request id yet answers non-2xx; the submit must still return
    # after that first attempt, and fal retries later.
    receiver.statuses.append(404)
    handle = await fal.submit(MODEL, {"prompt": "x", **faults(webhook_before_submit_response=True)}, webhook_url=receiver.url)
    assert len(receiver.received) >= 1, "the first attempt came before the submit answered"
    await receiver.wait_for(2)  # (the fast retry may already have landed on a busy machine)
    await emu.wait_until(lambda: [d.status_code for d in emu.deliveries_for(handle.request_id)] == [404, 200])


async def test_bad_signature(emu: FalEmulator, fal: fal_client.AsyncClient, receiver: WebhookReceiver, http: httpx.AsyncClient) -> None:
    good = await fal.submit(MODEL, {"prompt": "x"}, webhook_url=receiver.url)
    bad = await fal.submit(MODEL, {"prompt": "x", **faults(bad_signature=True)}, webhook_url=receiver.url)
    await receiver.wait_for(2)
    verifier = WebhookVerifier(JwksKeyring(emu.jwks_url, http))
    [good_delivery], [bad_delivery] = receiver.for_request(good.request_id), receiver.for_request(bad.request_id)
    assert (await verifier.verify(good_delivery.headers, good_delivery.body)).request_id == good.request_id
    with pytest.raises(WebhookSignatureError):
        await verifier.verify(bad_delivery.headers, bad_delivery.body)
    assert emu.deliveries_for(bad.request_id)[0].kid is None


async def test_no_webhook_without_fal_webhook(emu: FalEmulator, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit(MODEL, {"prompt": "x"})
    await handle.get(interval=0.02)
    assert emu.deliveries_for(handle.request_id) == []


async def test_status_and_result_answer_500_for_a_while(emu: FalEmulator, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit(MODEL, {"prompt": "x", **faults(status_failures=2, result_failures=1, queue_ms=0, run_ms=0)})
    for _ in range(2):
        with pytest.raises(FalClientHTTPError) as failed:
            await fal.status(MODEL, handle.request_id)
        assert failed.value.status_code == 500
    await lifecycle_over(emu, handle.request_id)
    assert isinstance(await fal.status(MODEL, handle.request_id), fal_client.Completed)
    with pytest.raises(FalClientHTTPError) as result_failed:
        await fal.result(MODEL, handle.request_id)
    assert result_failed.value.status_code == 500
    assert (await fal.result(MODEL, handle.request_id))["seed"] > 2**53
    assert emu.requests[handle.request_id].status_calls >= 4


async def test_hold_waits_for_each_release(emu: FalEmulator, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit(MODEL, {"prompt": "x", **faults(hold=True, queue_ms=0, run_ms=0, logs=1)})
    request = emu.requests[handle.request_id]
    await emu.wait_until(lambda: request.countdown == 0)
    assert isinstance(await fal.status(MODEL, handle.request_id), fal_client.Queued)
    emu.release(handle.request_id)
    await emu.wait_until(lambda: len(request.logs) == 1)
    assert isinstance(await fal.status(MODEL, handle.request_id), fal_client.InProgress)
    emu.release(handle.request_id)
    await lifecycle_over(emu, handle.request_id)
    assert isinstance(await fal.status(MODEL, handle.request_id), fal_client.Completed)


async def status_stream(http: httpx.AsyncClient, emu: FalEmulator, request_id: str, sink: list[str],
                        first: asyncio.Event | None = None) -> None:
    url = f"{emu.base_url}/fal-ai/flux/requests/{request_id}/status/stream"
    async with http.stream("GET", url, headers=auth(), params={"logs": "1"}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                sink.append(json.loads(line[6:])["status"])
                if first is not None:
                    first.set()


async def test_a_status_stream_breaks_then_the_next_one_runs_to_the_end(emu: FalEmulator, fal: fal_client.AsyncClient, http: httpx.AsyncClient) -> None:
    handle = await fal.submit(MODEL, {"prompt": "x", **faults(hold=True, stream_breaks=1, queue_ms=0, run_ms=0)})
    first: list[str] = []
    got_one = asyncio.Event()
    broken = asyncio.create_task(status_stream(http, emu, handle.request_id, first, got_one))
    await asyncio.wait_for(got_one.wait(), 10)
    assert first == ["IN_QUEUE"]
    emu.release(handle.request_id)
    with pytest.raises(httpx.RemoteProtocolError):
        await broken  # cut mid-body at the next change, as a dropped connection is
    emu.release(handle.request_id)
    second: list[str] = []
    await status_stream(http, emu, handle.request_id, second)
    assert second[-1] == "COMPLETED"


async def test_a_stalled_status_stream_sends_nothing(emu: FalEmulator, fal: fal_client.AsyncClient, http: httpx.AsyncClient) -> None:
    handle = await fal.submit(MODEL, {"prompt": "x", **faults(stream_stall=True, queue_ms=0, run_ms=0)})
    url = f"{emu.base_url}/fal-ai/flux/requests/{handle.request_id}/status/stream"
    lines: list[str] = []
    async with http.stream("GET", url, headers=auth(), timeout=httpx.Timeout(10, read=1.0)) as response:
        with pytest.raises(httpx.ReadTimeout):
            async for line in response.aiter_lines():
                lines.append(line)
    await lifecycle_over(emu, handle.request_id)
    # One event, then silence (no heartbeat either) although the request went on and completed.
    assert [line for line in lines if line] == [lines[0]] and lines[0].startswith("data: ")


async def test_a_forgotten_request_ends_its_streams_and_answers_404(emu: FalEmulator, fal: fal_client.AsyncClient, http: httpx.AsyncClient) -> None:
    handle = await fal.submit(MODEL, {"prompt": "x", **faults(hold=True, queue_ms=0)})
    seen: list[str] = []
    got_one = asyncio.Event()
    streaming = asyncio.create_task(status_stream(http, emu, handle.request_id, seen, got_one))
    await asyncio.wait_for(got_one.wait(), 10)
    emu.forget(handle.request_id)
    await asyncio.wait_for(streaming, 10)  # ended, without COMPLETED
    assert seen == ["IN_QUEUE"]
    with pytest.raises(FalClientHTTPError) as lost:
        await fal.status(MODEL, handle.request_id)
    assert lost.value.status_code == 404
