"""Tags and metadata on jobs, over real HTTP against the live service and the real Postgres: created
and read back everywhere a job is shown, refused with the field named, listed and streamed by tag
(through an index, checked in EXPLAIN), and tag-scoped stream tokens that open only their tag's
streams. Metadata never reaches fal: the emulator's record of each submit is read."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import msgspec
import pytest

from service.auth.api_keys import NewUser
from service.emulator import FalEmulator
from service.jobs.models import JobChange, NewJob
from service.jobs.status_machine import apply_change, create_job
from service.jobs.tags import MAX_METADATA_BYTES
from tests.conftest import RunningServer, bearer
from tests.sse import SseReader
from tests.test_live_streams import caught_up
from tests.test_read_api import assert_error

IMAGE = {"type": "image", "model_id": "fal-ai/flux/dev"}


async def tagged_job(pool: asyncpg.Pool, user: NewUser, *tags: str, status: str | None = None) -> str:
    """A job written by the status machine (no fal, no limits), carrying `tags`."""
    request_id = str(uuid.uuid4())
    async with pool.acquire() as connection:
        await create_job(connection, NewJob(request_id=request_id, user_id=user.user_id, model_id="fal-ai/flux/dev",
                                            type="image", input={"prompt": "p"}, mode="webhook", tags=list(tags)))
        if status is not None:
            await apply_change(connection, request_id, JobChange(status=status))  # type: ignore[arg-type]
    return request_id


async def stream_token(http: httpx.AsyncClient, service: RunningServer, user: NewUser, body: dict[str, Any]) -> httpx.Response:
    return await http.post(f"{service.url}/api/stream-tokens", json=body, headers=bearer(user))


# --- Creating, reading back, and what fal is sent ---------------------------------------------


async def test_tags_and_metadata_are_stored_returned_everywhere_and_never_sent_to_fal(
    service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser,
) -> None:
    marker = f"app-secret-{uuid.uuid4()}"
    metadata = {"order": 42, "note": marker, "nested": {"list": [1, 2.5, None, True], "big": 196619188014358660}}
    body = {**IMAGE, "input": {"prompt": "a red fox", "fal_emulator": {"queue_ms": 300}},
            "tags": ["user:123", "project:9", "user:123", "~!#$%&'()*+,-./:;<=>?@[\\]^_`{|}"], "metadata": metadata}
    created = await http.post(f"{service.url}/api/jobs", json=body, headers=bearer(user))
    assert created.status_code == 202, created.text
    job = created.json()
    expected_tags = ["user:123", "project:9", "~!#$%&'()*+,-./:;<=>?@[\\]^_`{|}"]  # duplicates dropped, order kept
    assert (job["tags"], job["metadata"]) == (expected_tags, metadata)
    request_id = job["request_id"]

    read = (await http.get(f"{service.url}/api/jobs/{request_id}", headers=bearer(user))).json()
    assert (read["tags"], read["metadata"]) == (expected_tags, metadata)
    listed = (await http.get(f"{service.url}/api/jobs", headers=bearer(user))).json()["jobs"]
    assert [(j["tags"], j["metadata"]) for j in listed] == [(expected_tags, metadata)]
    async with SseReader(http, f"{service.url}/api/jobs/{request_id}/events?token={job['stream_token']}") as stream:
        while True:  # every event of the job carries them, its end included
            _, state = await stream.next_job()
            assert (state["tags"], state["metadata"]) == (expected_tags, metadata)
            if state["status"] == "completed" and all(o["status"] != "pending" for o in state["outputs"]):
                break
    done = (await http.get(f"{service.url}/api/jobs/{request_id}", headers=bearer(user))).json()
    assert (done["status"], done["tags"], done["metadata"]) == ("completed", expected_tags, metadata)

    sent = fal.requests[request_id]
    # fal got the input and nothing else (the emulator keeps it without its own `fal_emulator` options).
    assert sent.input == {"prompt": "a red fox"}
    assert marker not in msgspec.json.encode(sent.input).decode() and marker not in (sent.webhook_url or "")


async def test_a_job_without_tags_or_metadata_shows_them_empty(
    service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
) -> None:
    created = (await http.post(f"{service.url}/api/jobs", json={**IMAGE, "input": {"prompt": "p"}}, headers=bearer(user))).json()
    assert (created["tags"], created["metadata"]) == ([], {})
    older = await tagged_job(pool, user)
    read = (await http.get(f"{service.url}/api/jobs/{older}", headers=bearer(user))).json()
    assert (read["tags"], read["metadata"]) == ([], {})
    async with SseReader(http, f"{service.url}/api/jobs/{older}/events", bearer(user)) as stream:
        _, snapshot = await stream.next_job()
        assert (snapshot["tags"], snapshot["metadata"]) == ([], {})


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"tags": ["ok", "has space"]}, "tags[1]: 'has space' is not a tag"),
        ({"tags": [""]}, "tags[0]: '' is not a tag"),
        ({"tags": ["x" * 65]}, "tags[0]: "),
        ({"tags": ["ok", "ok", "caf\u00e9"]}, "tags[2]: "),
        ({"tags": ["tab\there"]}, "tags[0]: "),
        ({"tags": [f"t:{i}" for i in range(11)]}, "tags: 11 given; at most 10"),
        ({"tags": ["ok", 7]}, "tags[1]"),
        ({"tags": "user:1"}, "tags"),
        ({"tags": None}, "tags"),
        ({"metadata": ["a"]}, "metadata"),
        ({"metadata": None}, "metadata"),
        ({"metadata": {"blob": "x" * MAX_METADATA_BYTES}}, f"metadata: larger than {MAX_METADATA_BYTES} bytes"),
        ({"metadata": {"a": {"b": ["ok", "nul\u0000"]}}}, "metadata.a.b[1]: contains a NUL character"),
    ],
)
async def test_bad_tags_and_metadata_are_400_naming_the_field(
    service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser, fields: dict[str, Any], fragment: str,
) -> None:
    submitted = len(fal.submissions)
    response = await http.post(f"{service.url}/api/jobs", json={**IMAGE, "input": {"prompt": "p"}, **fields}, headers=bearer(user))
    assert_error(response, 400, fragment)
    assert response.json()["error"] == "invalid_request"
    assert len(fal.submissions) == submitted, "nothing was sent to fal"


async def test_metadata_of_exactly_the_limit_is_taken(service: RunningServer, http: httpx.AsyncClient, user: NewUser) -> None:
    envelope = len(msgspec.json.encode({"blob": ""}))
    metadata = {"blob": "x" * (MAX_METADATA_BYTES - envelope)}
    assert len(msgspec.json.encode(metadata)) == MAX_METADATA_BYTES
    response = await http.post(f"{service.url}/api/jobs", json={**IMAGE, "input": {"prompt": "p"}, "metadata": metadata},
                               headers=bearer(user))
    assert response.status_code == 202, response.text
    assert response.json()["metadata"] == metadata


async def test_an_idempotency_key_compares_tags_and_metadata(
    service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser,
) -> None:
    url, key = f"{service.url}/api/jobs", str(uuid.uuid4())
    headers = {**bearer(user), "Idempotency-Key": key}
    body = {**IMAGE, "input": {"prompt": "p"}, "tags": ["user:1", "user:1"], "metadata": {"a": 1, "b": {"c": 2}}}
    first = await http.post(url, json=body, headers=headers)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    submitted = len(fal.submissions)
    # The same request (its metadata's keys in another order, a duplicate tag fewer): the same job.
    same = {**body, "tags": ["user:1"], "metadata": {"b": {"c": 2}, "a": 1}}
    replayed = await http.post(url, json=same, headers=headers)
    assert replayed.status_code == 202 and replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json()["request_id"] == first.json()["request_id"]
    for changed in ({**body, "tags": ["user:2"]}, {**body, "tags": []}, {**body, "metadata": {"a": 2, "b": {"c": 2}}},
                    {**body, "metadata": {}}):
        refused = await http.post(url, json=changed, headers=headers)
        assert_error(refused, 422, "idempotency-key: already used with another request body")
    assert len(fal.submissions) == submitted


async def test_a_request_without_tags_or_metadata_keeps_its_idempotency_digest() -> None:
    """Keys stored before tags existed (24 h of them) still match a retry of the same body."""
    from service.jobs.reservations import body_digest
    from service.usecases.submit_job import CreateJobRequest

    class Before(msgspec.Struct, kw_only=True):  # the request as it was
        type: str
        model_id: str
        input: dict[str, Any]

    request = CreateJobRequest(type="image", model_id="fal-ai/flux/dev", input={"prompt": "p"})
    assert request.digest() == body_digest(Before(type="image", model_id="fal-ai/flux/dev", input={"prompt": "p"}))
    assert msgspec.structs.replace(request, tags=["t"]).digest() != request.digest()


# --- Listing by tag ------------------------------------------------------------------------------


async def test_list_by_tag_pages_newest_first_and_holds_only_that_tag(
    service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser, other_user: NewUser,
) -> None:
    tag = f"user:{uuid.uuid4().hex[:8]}"
    wanted: list[str] = []
    for i in range(7):
        wanted.append(await tagged_job(pool, user, "project:9", tag, status="completed" if i % 2 else None))
        await tagged_job(pool, user)  # untagged
        await tagged_job(pool, user, "project:9")  # another tag
    await tagged_job(pool, other_user, tag)  # the same tag, another user's

    async def pages(**params: str) -> tuple[list[str], int]:
        seen: list[str] = []
        cursor, count = None, 0
        while True:
            query = {"tag": tag, "limit": "3", **params, **({"cursor": cursor} if cursor else {})}
            page = (await http.get(f"{service.url}/api/jobs", params=query, headers=bearer(user))).json()
            assert all(tag in job["tags"] for job in page["jobs"])
            seen += [job["request_id"] for job in page["jobs"]]
            cursor, count = page["next_cursor"], count + 1
            if cursor is None:
                return seen, count

    assert await pages() == (list(reversed(wanted)), 3)
    assert await pages(status="completed") == ([r for i, r in enumerate(wanted) if i % 2][::-1], 1)
    none = await http.get(f"{service.url}/api/jobs", params={"tag": "never:used"}, headers=bearer(user))
    assert none.json() == {"jobs": [], "next_cursor": None}
    theirs = await http.get(f"{service.url}/api/jobs", params={"tag": tag}, headers=bearer(other_user))
    assert len(theirs.json()["jobs"]) == 1


@pytest.mark.parametrize("tag", ["", "two words", "x" * 65, "caf\u00e9"])
async def test_a_bad_tag_filter_is_400(service: RunningServer, http: httpx.AsyncClient, user: NewUser, tag: str) -> None:
    assert_error(await http.get(f"{service.url}/api/jobs", params={"tag": tag}, headers=bearer(user)), 400, "tag: ")
    assert_error(await http.get(f"{service.url}/api/events", params={"tag": tag}, headers=bearer(user)), 400, "tag: ")


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _plan_nodes(child))]


class RollBack(Exception):
    """Undoes the test's rows and statistics: the shared test database is left as it was."""


async def test_a_list_by_tag_reads_the_tag_index_not_the_users_jobs(database_url: str, user: NewUser) -> None:
    """A user with 5,000 jobs, each with one of 20 project tags, 50 of them also `hot`: a page of
    `hot` walks `fal_job_tags`' key and reads from `fal_jobs` only the rows it returns (by primary
    key), on the first page and with a cursor."""
    from service.jobs.queries import _LIST_BY_TAG

    connection = await asyncpg.connect(database_url)  # not the pool's: its 2 s statement time-out
    try:
        with pytest.raises(RollBack):
            async with connection.transaction():
                await connection.execute(
                    "INSERT INTO fal_jobs (request_id, user_id, model_id, type, input, status, mode, created_at, tags) "
                    "SELECT 'bulk-' || i || '-' || $1, $1, 'fal-ai/flux/dev', 'image', '{}', 'completed', 'webhook', "
                    "now() - make_interval(secs => i), "
                    "ARRAY['project:' || i % 20] || CASE WHEN i % 100 = 0 THEN ARRAY['hot'] ELSE ARRAY[]::text[] END "
                    "FROM generate_series(1, 5000) AS i", user.user_id)
                await connection.execute(
                    "INSERT INTO fal_job_tags (user_id, tag, created_at, request_id) "
                    "SELECT user_id, unnest(tags), created_at, request_id FROM fal_jobs WHERE user_id = $1", user.user_id)
                await connection.execute("ANALYZE fal_jobs; ANALYZE fal_job_tags")
                newest = await connection.fetchrow(
                    "SELECT created_at, request_id FROM fal_job_tags WHERE user_id = $1 AND tag = 'hot' "
                    "ORDER BY created_at DESC, request_id DESC OFFSET 20 LIMIT 1", user.user_id)
                for after in (None, (newest["created_at"], newest["request_id"])):
                    args = (user.user_id, None, None, *(after or (None, None)), 21, "hot")
                    raw = await connection.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {_LIST_BY_TAG}", *args)
                    plan = (raw if isinstance(raw, list) else msgspec.json.decode(raw))[0]["Plan"]
                    nodes = _plan_nodes(plan)
                    scans = {(n.get("Relation Name"), n["Node Type"], n.get("Index Name")) for n in nodes if "Relation Name" in n}
                    assert ("fal_job_tags", "Index Scan", "fal_job_tags_pkey") in scans or \
                        ("fal_job_tags", "Index Only Scan", "fal_job_tags_pkey") in scans, scans
                    assert {index for relation, _, index in scans if relation == "fal_jobs"} == {"fal_jobs_pkey"}, scans
                    jobs_read = sum(n["Actual Rows"] * n["Actual Loops"] for n in nodes if n.get("Relation Name") == "fal_jobs")
                    assert jobs_read == plan["Actual Rows"] <= 21, (jobs_read, plan["Actual Rows"])
                    assert plan["Actual Rows"] == 21
                raise RollBack
    finally:
        await connection.close()


# --- Streams by tag, and tag-scoped tokens ----------------------------------------------------------


async def test_the_user_stream_by_tag_sees_only_that_tags_jobs_live_and_on_resume(
    service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
) -> None:
    tag = f"user:{uuid.uuid4().hex[:8]}"
    await caught_up(service, pool)
    url = f"{service.url}/api/events?tag={quote(tag, safe='')}"
    async with SseReader(http, url, bearer(user)) as stream:
        ready = await stream.next()
        assert ready.event == "ready" and ready.id is not None
        await tagged_job(pool, user)
        await tagged_job(pool, user, "user:someone-else")
        mine = await tagged_job(pool, user, "project:1", tag)
        _, first = await stream.next_job()
        assert (first["request_id"], first["tags"]) == (mine, ["project:1", tag]), "the untagged and other jobs never came"
        await tagged_job(pool, user, "user:someone-else", status="completed")
        async with pool.acquire() as connection:
            await apply_change(connection, mine, JobChange(status="in_progress"))
        _, second = await stream.next_job()
        assert (second["request_id"], second["status"]) == (mine, "in_progress")
    # A resume replays only the tag's changes.
    async with SseReader(http, url, {**bearer(user), "Last-Event-ID": ready.id}) as resumed:
        got = [(await resumed.next_job())[1] for _ in range(2)]
        assert [(j["request_id"], j["version"]) for j in got] == [(mine, 1), (mine, 2)]


async def test_a_tag_token_opens_only_its_tags_streams(
    service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser, other_user: NewUser,
) -> None:
    tag = f"user:{uuid.uuid4().hex[:8]}"
    minted = await stream_token(http, service, user, {"scope": "tag", "tag": tag})
    assert minted.status_code == 201, minted.text
    token = minted.json()["token"]
    assert minted.json()["url"] == f"/api/events?token={token}&tag={quote(tag, safe='')}"
    tagged = await tagged_job(pool, user, "project:1", tag)
    async with SseReader(http, f"{service.url}/api/jobs/{tagged}/events?token={token}") as stream:
        _, snapshot = await stream.next_job()
        assert (snapshot["request_id"], snapshot["tags"]) == (tagged, ["project:1", tag])

    await caught_up(service, pool)
    async with SseReader(http, f"{service.url}{minted.json()['url']}") as stream:
        assert (await stream.next()).event == "ready"
        await tagged_job(pool, user)
        second = await tagged_job(pool, user, tag)
        assert (await stream.next_job())[1]["request_id"] == second

    refusals = {
        "another tag's job": f"/api/jobs/{await tagged_job(pool, user, 'user:other')}/events",
        "an untagged job": f"/api/jobs/{await tagged_job(pool, user)}/events",
        "a job that does not exist": f"/api/jobs/{uuid.uuid4()}/events",
        "another user's job with the tag": f"/api/jobs/{await tagged_job(pool, other_user, tag)}/events",
        "the user stream without the filter": "/api/events",
        "the user stream of another tag": "/api/events?tag=user%3Aother",
    }
    for what, path in refusals.items():
        sep = "&" if "?" in path else "?"
        response = await http.get(f"{service.url}{path}{sep}token={token}")
        assert response.status_code == 401, (what, response.text)
        assert response.json()["error"] == "not_authenticated", what
        assert f"opens only the streams of jobs tagged {tag!r}" in response.json()["message"], what
    # Not a signed link to an output either.
    output = await http.get(f"{service.url}/api/jobs/{tagged}/outputs/0?token={token}")
    assert output.status_code == 401 and "another stream" in output.json()["message"]


async def test_the_existing_scopes_do_not_open_tag_streams_they_were_not_for(
    service: RunningServer, http: httpx.AsyncClient, pool: asyncpg.Pool, user: NewUser,
) -> None:
    tagged = await tagged_job(pool, user, "user:1")
    job_token = (await stream_token(http, service, user, {"scope": "job", "request_id": tagged})).json()["token"]
    by_tag = await http.get(f"{service.url}/api/events?tag=user%3A1&token={job_token}")
    assert by_tag.status_code == 401 and "another stream" in by_tag.json()["message"]
    user_token = (await stream_token(http, service, user, {"scope": "user"})).json()["token"]
    async with SseReader(http, f"{service.url}/api/events?tag=user%3A1&token={user_token}") as stream:
        assert (await stream.next()).event == "ready", "a user token opens the user stream, filtered or not"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"scope": "tag"}, "tag: required for a tag-scoped token"),
        ({"scope": "tag", "tag": "two words"}, "tag: 'two words' is not a tag"),
        ({"scope": "tag", "tag": None}, "tag"),
        ({"scope": "tag", "tag": "user:1", "request_id": "abc"}, "request_id: a tag-scoped token"),
        ({"scope": "user", "tag": "user:1"}, "tag: only a tag-scoped token takes a tag"),
        ({"scope": "job", "request_id": "abc", "tag": "user:1"}, "tag: only a tag-scoped token takes a tag"),
        ({"scope": "tags", "tag": "user:1"}, "scope"),
    ],
)
async def test_a_bad_tag_token_request_is_400(
    service: RunningServer, http: httpx.AsyncClient, user: NewUser, body: dict[str, Any], fragment: str,
) -> None:
    assert_error(await stream_token(http, service, user, body), 400, fragment)


async def test_the_python_client_sends_tags_and_metadata(service: RunningServer, user: NewUser) -> None:
    from service.client import FalJobsClient

    async with FalJobsClient(service.url, user.api_key) as client:
        job = await client.create_job("image", "fal-ai/flux/dev", {"prompt": "p"}, tags=["user:7"], metadata={"k": [1]})
        assert (job.tags, job.metadata) == (["user:7"], {"k": [1]})
        assert (await client.get_job(job.request_id)).tags == ["user:7"]


async def test_the_migration_gives_older_events_the_defaults(database_url: str, user: NewUser) -> None:
    """Events written before the migration get `tags: []` and `metadata: {}`, as every later one has
    them: a stream that replays or snapshots an older job sends the same fields."""
    import importlib

    migration = importlib.import_module("piccolo_migrations.fal_jobs_2026_12_05t10_00_00_000000_tags_and_metadata")
    connection = await asyncpg.connect(database_url)
    try:
        with pytest.raises(RollBack):
            async with connection.transaction():
                await connection.execute(migration.BACKWARDS_SQL)
                await connection.execute("INSERT INTO fal_jobs (request_id, user_id, model_id, type, input) "
                                         "VALUES ('before-tags', $1, 'fal-ai/flux/dev', 'image', '{}')", user.user_id)
                before = await connection.fetchval("SELECT data FROM fal_job_events WHERE request_id = 'before-tags'")
                assert "tags" not in msgspec.json.decode(before)
                await connection.execute(migration.FORWARDS_SQL)
                after = msgspec.json.decode(
                    await connection.fetchval("SELECT data FROM fal_job_events WHERE request_id = 'before-tags'"))
                assert (after["tags"], after["metadata"], after["request_id"]) == ([], {}, "before-tags")
                raise RollBack
    finally:
        await connection.close()
