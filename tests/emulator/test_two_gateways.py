"""Two FalGateways in one process, each aimed at its own fal, called concurrently: fal-client's
module-wide queue URL must not send one gateway's call to the other's queue."""

from __future__ import annotations

import asyncio

import fal_client.client

from service.fal.gateway import FalGateway

from .conftest import KEY, lifecycle_over, running_emulator

MODEL = "fal-ai/flux/dev"


async def test_two_gateways_in_one_process_each_reach_their_own_fal() -> None:
    async with running_emulator() as one, running_emulator() as two:
        gateways = {one: FalGateway(key=KEY, queue_url=one.base_url), two: FalGateway(key=KEY, queue_url=two.base_url)}
        previous = fal_client.client.QUEUE_URL_FORMAT
        try:
            # First calls on fresh gateways, interleaved: the riskiest moment (fal-client creates its
            # HTTP client on first use).
            submitted = await asyncio.gather(*(
                gateway.submit(MODEL, {"prompt": f"{emulator.base_url} {index}"}, None)
                for index in range(4) for emulator, gateway in gateways.items()))
            mine = {emulator: [request_id for request_id in submitted if request_id in emulator.requests]
                    for emulator in gateways}
            assert [len(ids) for ids in mine.values()] == [4, 4], "each submit reached its own gateway's fal"
            for emulator, ids in mine.items():
                assert all(emulator.requests[r].input["prompt"].startswith(emulator.base_url) for r in ids)
            # Someone else in the process (a raw fal-client user) aims the module global elsewhere.
            fal_client.client.QUEUE_URL_FORMAT = "http://127.0.0.1:9/"
            for emulator, ids in mine.items():
                for request_id in ids:
                    await lifecycle_over(emulator, request_id)
            outputs = await asyncio.gather(*(
                gateways[emulator].result(MODEL, request_id) for emulator, ids in mine.items() for request_id in ids))
            assert all(output["seed"] > 2**53 for output in outputs)
            statuses = await asyncio.gather(*(
                gateways[emulator].status(MODEL, request_id) for emulator, ids in mine.items() for request_id in ids))
            assert {status.status for status in statuses} == {"COMPLETED"}
            assert await gateways[one].cancel(MODEL, mine[two][0]) == "not_found", "one's fal does not know two's request"
            assert await gateways[two].cancel(MODEL, mine[two][0]) == "already_completed"
            assert fal_client.client.QUEUE_URL_FORMAT == "http://127.0.0.1:9/", \
                "status, result and cancel neither read nor move the module global"
            # And a submit after that still goes where its gateway points.
            late = await gateways[two].submit(MODEL, {"prompt": "late"}, None)
            assert late in two.requests and late not in one.requests
        finally:
            fal_client.client.QUEUE_URL_FORMAT = previous
            for gateway in gateways.values():
                await gateway.aclose()
