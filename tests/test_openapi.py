"""The OpenAPI document tells the truth: Schemathesis, with all its checks and all its phases
(examples, coverage, fuzzing, stateful), against the live service over HTTP, finds 0 failures.

A bounded run with a fixed seed keeps this test to a few hundred cases (tens of seconds here);
`bench/schemathesis.py` runs the large one."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import httpx
import pytest

from service.auth.api_keys import NewUser
from tests.conftest import RunningServer

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tests" / "schemathesis.toml"


async def run_schemathesis(url: str, api_key: str, *, max_examples: int, seed: int | None,
                           extra: tuple[str, ...] = ()) -> tuple[int, str]:
    """`st run` against `url`; returns its exit code and output."""
    st = Path(sys.executable).parent / "st"
    command = [str(st), "--config-file", str(CONFIG), "run", f"{url}/schema/openapi.json", "--checks", "all",
               "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", str(max_examples),
               "-H", f"Authorization: Bearer {api_key}", "--no-color", *extra]
    if seed is not None:
        command += ["--seed", str(seed)]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace")


async def test_the_document_declares_auth_errors_and_streams(service: RunningServer, http: httpx.AsyncClient) -> None:
    document = (await http.get(f"{service.url}/schema/openapi.json")).json()
    assert set(document["components"]["securitySchemes"]) == {"BearerKey", "SessionCookie", "StreamToken"}
    operations = [(path, method, op) for path, item in document["paths"].items() for method, op in item.items()]
    for path, method, op in operations:
        assert "security" in op, f"{method} {path} says nothing about authentication"
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")) and path != "/readyz":  # readyz's 503 is its Health report
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, f"{method} {path} {status}"
    assert document["paths"]["/api/jobs/{request_id}/result"]["get"]["responses"].keys() >= {"200", "404", "409"}
    # An output asked for before its job completed is 409, and a created job's 202 says where it is.
    for method, path in (("get", "/api/jobs/{request_id}/outputs/{index}"), ("post", "/api/jobs/{request_id}/outputs/{index}/link")):
        assert "409" in document["paths"][path][method]["responses"], f"{method} {path}"
    created = document["paths"]["/api/jobs"]["post"]["responses"]["202"]
    assert created["headers"]["Location"]["schema"] == {"type": "string"}
    for path in ("/api/events", "/api/jobs/{request_id}/events", "/api/admin/events"):
        assert list(document["paths"][path]["get"]["responses"]["200"]["content"]) == ["text/event-stream"]
    assert document["components"]["schemas"]["ErrorBody"]["required"] == ["status", "error", "message"]


@pytest.mark.timeout(300)  # some 800 cases: about a minute alone, two or more on a busy machine
async def test_schemathesis_finds_no_failure(service: RunningServer, user: NewUser) -> None:
    # SCHEMATHESIS_MAX_EXAMPLES=300 SCHEMATHESIS_SEED=random: a large run on the same live service.
    seed = os.environ.get("SCHEMATHESIS_SEED", "20261201")
    code, output = await run_schemathesis(service.url, user.api_key,
                                          max_examples=int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "5")),
                                          seed=None if seed == "random" else int(seed))
    print(output[output.index("SUMMARY"):] if "SUMMARY" in output else output[-3000:])
    assert code == 0, output[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts is not None and int(counts[1]) == int(counts[2]) >= 300, output[-3000:]
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in output, output[-3000:]
