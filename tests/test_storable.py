"""Text from fal that Postgres cannot store (NUL, lone surrogates) is stored escaped, never refused."""

from __future__ import annotations

import asyncpg
import httpx
import msgspec

from service.db.storable import storable, storable_json
from service.emulator import FalEmulator
from tests.conftest import RunningServer
from tests.test_webhook_endpoint import open_job, post, signed


def test_nul_and_lone_surrogates_become_their_escapes_and_nothing_else_changes() -> None:
    assert storable({"k\x00": ["a\x00b", "\ud800c", "😀", 7, None]}) == {"k\\u0000": ["a\\u0000b", "\\ud800c", "😀", 7, None]}
    raw = rb'{"a":"x\u0000y","b":"\ud800z","c":"\\u0000 was text","d":"\ud83d\ude00","e":"\udc00"}'
    assert msgspec.json.decode(storable_json(raw)) == {
        "a": "x\\u0000y", "b": "\\ud800z", "c": "\\u0000 was text", "d": "😀", "e": "\\udc00"}
    assert storable_json(b'{"plain": "text"}') == b'{"plain": "text"}'


async def test_a_webhook_with_nul_and_lone_surrogates_is_stored_escaped(
    service: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, pool: asyncpg.Pool,
) -> None:
    request_id = await open_job(pool)
    body = (b'{"request_id": "%s", "status": "ERROR", "error": "runner said \\u0000 and \\udc80",'
            b' "payload": {"detail": [{"msg": "bad \\u0000 byte"}], "log\\u0000": "\\ud800"}}') % request_id.encode()
    response = await post(http, service.url, body, signed(fal.keyset.current, request_id, body))
    assert response.status_code == 200, response.text
    row = await pool.fetchrow("SELECT status, error, result FROM fal_jobs WHERE request_id = $1", request_id)
    assert row["status"] == "failed"
    assert row["error"].startswith("runner said \\u0000 and \\udc80")
    assert row["result"] == {"detail": [{"msg": "bad \\u0000 byte"}], "log\\u0000": "\\ud800"}
    event = await pool.fetchval("SELECT data->>'error' FROM fal_job_events WHERE request_id = $1 ORDER BY id DESC LIMIT 1",
                                request_id)
    assert event == row["error"]
