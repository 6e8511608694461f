"""Job inputs checked against the model's own schema (fal's per-endpoint OpenAPI, served by the
emulator) before anything is sent to fal; the schema read once and kept; what happens when it
cannot be had; and GET /api/models describing each model's fields."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from service.auth.api_keys import NewUser
from service.emulator import FalEmulator
from tests.conftest import RunningServer, bearer, fal_settings, serve
from tests.test_uploads import solid_png, upload

SCHNELL = "fal-ai/flux/schnell"
DEV = "fal-ai/flux/dev"
I2I = "fal-ai/flux/dev/image-to-image"
I2V = "fal-ai/kling-video/v2.1/master/image-to-video"


async def start(database_url: str, fal: FalEmulator, **overrides: str) -> RunningServer:
    """A service of its own: its schema cache starts empty."""
    from service.app import create_app

    values = {"MEDIA_DIR": tempfile.mkdtemp(prefix="fal-jobs-schemas-"), **overrides}
    return await serve(lambda url: create_app(fal_settings(database_url, fal, url, **values)))


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_service(database_url: str, fal: FalEmulator) -> AsyncIterator[RunningServer]:
    running = await start(database_url, fal)
    yield running
    await running.stop()


async def create(http: httpx.AsyncClient, url: str, user: NewUser, model_id: str, model_input: dict[str, Any],
                 job_type: str = "image") -> httpx.Response:
    return await http.post(f"{url}/api/jobs", headers=bearer(user),
                           json={"type": job_type, "model_id": model_id, "input": model_input})


async def test_an_input_without_a_required_field_is_422_and_never_sent(
    service_url: str, http: httpx.AsyncClient, fal: FalEmulator, user: NewUser,
) -> None:
    before = len(fal.submissions)
    answer = await create(http, service_url, user, SCHNELL, {})
    assert answer.status_code == 422, answer.text
    assert answer.json()["message"] == f"input.prompt: required by {SCHNELL} (a string)"
    answer = await create(http, service_url, user, I2V, {"prompt": "x"}, "video")
    assert answer.status_code == 422, answer.text
    assert answer.json()["message"].startswith(f"input.image_url: required by {I2V} (a URL of an image, or upload:<id>)")
    assert len(fal.submissions) == before


@pytest.mark.parametrize(("model_input", "message"), [
    ({"prompt": "p", "image_size": "huge"},
     "input.image_size: 'huge' is not one of 'square_hd', 'square', 'portrait_4_3', 'portrait_16_9', "
     "'landscape_4_3', 'landscape_16_9'"),
    ({"prompt": "p", "num_images": "four"}, "input.num_images: 'four' is not an integer from 1 to 8"),
    ({"prompt": 42}, "input.prompt: 42 is not a string"),
    ({"prompt": "p", "image_size": {"width": 0, "height": 512}},
     f"input.image_size.width: 0 is out of range; {SCHNELL} takes an integer above 0, at most 2048"),
    ({"prompt": "p", "num_images": 2, "output_format": "gif"}, "input.output_format: 'gif' is not one of 'jpeg', 'png'"),
])
async def test_a_wrong_type_or_value_names_what_the_model_takes(
    service_url: str, http: httpx.AsyncClient, fal: FalEmulator, user: NewUser, model_input: dict[str, Any],
    message: str,
) -> None:
    before = len(fal.submissions)
    answer = await create(http, service_url, user, SCHNELL, model_input)
    assert answer.status_code == 422, answer.text
    assert answer.json()["message"] == message
    assert len(fal.submissions) == before


async def test_an_upload_reference_passes_where_the_model_takes_an_image_url(
    fresh_service: RunningServer, http: httpx.AsyncClient, fal: FalEmulator, user: NewUser,
) -> None:
    upload_id = (await upload(http, fresh_service.url, user, solid_png(8, 8, (10, 200, 30)))).json()["upload_id"]
    # A field the schema does not name (here the emulator's own options) passes, as fal ignores it.
    created = await create(http, fresh_service.url, user, I2I,
                           {"prompt": "greener", "image_url": f"upload:{upload_id}", "strength": 0.5,
                            "fal_emulator": {"run_ms": 10}})
    assert created.status_code == 202, created.text
    job = (await http.get(f"{fresh_service.url}/api/jobs/{created.json()['request_id']}?wait=60",
                          headers=bearer(user))).json()
    assert job["status"] == "completed", job
    refused = await create(http, fresh_service.url, user, I2I, {"prompt": "p", "image_url": "a-file.png"})
    assert refused.status_code == 422
    assert refused.json()["message"] == "input.image_url: 'a-file.png' is not a URL of an image, or upload:<id>"
    refused = await create(http, fresh_service.url, user, I2I,
                           {"prompt": "p", "image_url": f"upload:{upload_id}", "strength": 2})
    assert refused.json()["message"] == f"input.strength: 2 is out of range; {I2I} takes a number from 0.01 to 1"


async def test_the_schema_is_read_once_and_kept(
    fresh_service: RunningServer, http: httpx.AsyncClient, fal: FalEmulator, user: NewUser,
) -> None:
    before = fal.schema_reads.count(DEV)
    for _ in range(2):
        answer = await create(http, fresh_service.url, user, DEV, {"prompt": "a fox"})
        assert answer.status_code == 202, answer.text
    assert (await create(http, fresh_service.url, user, DEV, {})).status_code == 422
    assert fal.schema_reads.count(DEV) == before + 1


async def test_a_schema_never_had_leaves_the_input_unchecked_and_logged(
    database_url: str, http: httpx.AsyncClient, fal: FalEmulator, user: NewUser, caplog: pytest.LogCaptureFixture,
) -> None:
    running = await start(database_url, fal)
    fal.schemas_available = False
    try:
        before = len(fal.submissions)
        with caplog.at_level(logging.WARNING):
            answer = await create(http, running.url, user, SCHNELL, {})
        assert answer.status_code == 202, answer.text  # fal is the judge of it, as before
        assert len(fal.submissions) == before + 1
        actions = [getattr(record, "action", None) for record in caplog.records]
        assert "model_schema.unavailable" in actions and "model_schema.unchecked" in actions
        models = (await http.get(f"{running.url}/api/models")).json()
        assert {m["model_id"]: m["fields"] for m in models}[SCHNELL] is None
    finally:
        fal.schemas_available = True
        await running.stop()


async def test_the_last_known_schema_stands_while_fal_cannot_give_it(
    database_url: str, http: httpx.AsyncClient, fal: FalEmulator, user: NewUser,
) -> None:
    running = await start(database_url, fal, FAL_SCHEMA_TTL_S="0.001")
    try:
        assert (await create(http, running.url, user, SCHNELL, {"prompt": "p"})).status_code == 202
        fal.schemas_available = False
        reads = len(fal.schema_reads)
        answer = await create(http, running.url, user, SCHNELL, {})
        assert len(fal.schema_reads) == reads + 1  # it was out of date, and asked for again
        assert answer.status_code == 422, answer.text
        assert answer.json()["message"].startswith("input.prompt: required")
    finally:
        fal.schemas_available = True
        await running.stop()


async def test_the_model_list_describes_each_models_fields(service_url: str, http: httpx.AsyncClient) -> None:
    answer = await http.get(f"{service_url}/api/models")
    assert answer.status_code == 200
    models = {m["model_id"]: m for m in answer.json()}
    assert models[SCHNELL]["type"] == "image" and models[I2V]["type"] == "video"
    fields = {f["name"]: f for f in models[SCHNELL]["fields"]}
    assert list(fields)[:2] == ["prompt", "image_size"]  # fal's order
    assert fields["prompt"]["required"] is True and fields["prompt"]["type"] == "string"
    assert fields["image_size"]["type"] == "string" and "square_hd" in fields["image_size"]["enum"]
    assert fields["image_size"]["default"] == "landscape_4_3" and fields["image_size"]["required"] is False
    assert (fields["num_images"]["minimum"], fields["num_images"]["maximum"]) == (1, 8)
    assert all(f["file"] is None for f in fields.values())
    i2v = {f["name"]: f for f in models[I2V]["fields"]}
    assert i2v["image_url"]["file"] == "image" and i2v["image_url"]["required"] is True
    assert i2v["duration"]["enum"] == ["5", "10"]
    i2i = {f["name"]: f for f in models[I2I]["fields"]}
    assert i2i["image_url"]["file"] == "image" and i2i["strength"]["default"] == 0.95
