"""/metrics after a real round trip: a job submitted to the emulator, its signed webhooks (one
applied, two duplicates), a live stream and a ?wait= request watching it; every counter and
histogram moved by exactly what that traffic did.

The service here allows one model no other test uses, so per-model series are this test's alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from service.auth.api_keys import NewUser
from service.emulator import FalEmulator
from tests.conftest import RunningServer, bearer, fal_settings, serve
from tests.sse import SseReader

PROBE_MODEL = "fal-ai/metrics-probe/dev"
METRICS_TOKEN = "metrics-scrape-token"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def metered(database_url: str, fal: FalEmulator) -> AsyncIterator[RunningServer]:
    from service.app import create_app

    running = await serve(lambda url: create_app(fal_settings(
        database_url, fal, url, ALLOWED_MODELS=f"fal-ai/flux/dev,{PROBE_MODEL}", METRICS_TOKEN=METRICS_TOKEN)))
    yield running
    await running.stop()


async def scrape(http: httpx.AsyncClient, url: str) -> Samples:
    response = await http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_metrics_need_the_token_when_one_is_set(metered: RunningServer, http: httpx.AsyncClient) -> None:
    refused = await http.get(f"{metered.url}/metrics")
    assert refused.status_code == 401 and refused.json()["error"] == "not_authenticated"
    wrong = await http.get(f"{metered.url}/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and METRICS_TOKEN not in wrong.text


async def test_a_round_trip_moves_every_counter_by_what_it_did(
    metered: RunningServer, fal: FalEmulator, http: httpx.AsyncClient, user: NewUser
) -> None:
    url = metered.url
    before = await scrape(http, url)
    created = await http.post(f"{url}/api/jobs", headers=bearer(user), json={
        "type": "image", "model_id": PROBE_MODEL,
        "input": {"prompt": "a gauge", "fal_emulator": {"queue_ms": 300, "run_ms": 300, "duplicates": 3}}})
    assert created.status_code == 202, created.text
    request_id = created.json()["request_id"]

    async with SseReader(http, f"{url}/api/jobs/{request_id}/events", bearer(user)) as stream:
        waiting = asyncio.create_task(http.get(f"{url}/api/jobs/{request_id}", params={"wait": 20}, headers=bearer(user)))
        _, snapshot = await stream.next_job()
        # While both wait: one stream and one ?wait= request open (the scrape itself is neither).
        for _ in range(200):
            during = await scrape(http, url)
            if value(during, "fal_jobs_wait_requests_open") - value(before, "fal_jobs_wait_requests_open") == 1:
                break
            await asyncio.sleep(0.01)
        assert moved(before, during, "fal_jobs_sse_streams_open") == 1
        assert moved(before, during, "fal_jobs_wait_requests_open") == 1
        # Every change after the snapshot, to the end (the job's outputs settle after `completed`).
        live = 0
        job = snapshot
        while True:
            try:
                _, job = await stream.next_job()
            except EOFError:
                break
            live += 1
        assert job["status"] == "completed"
    waited = await waiting
    assert waited.status_code == 200 and waited.json()["status"] == "completed"
    # The emulator delivers the webhook three times (two of them duplicates); wait until all were answered.
    for _ in range(500):
        if len([d for d in fal.deliveries_for(request_id) if d.status_code == 200]) == 3:
            break
        await asyncio.sleep(0.01)
    assert [d.status_code for d in fal.deliveries_for(request_id)] == [200, 200, 200]
    after = await scrape(http, url)

    assert moved(before, after, "fal_jobs_jobs_created_total", model=PROBE_MODEL) == 1
    assert moved(before, after, "fal_jobs_jobs_finished_total", model=PROBE_MODEL, status="completed") == 1
    assert moved(before, after, "fal_jobs_job_duration_seconds_count", model=PROBE_MODEL) == 1
    duration = moved(before, after, "fal_jobs_job_duration_seconds_sum", model=PROBE_MODEL)
    assert 0.5 <= duration < 20, f"submit to completed took {duration}s; the emulator queued 0.3 s and ran 0.3 s"
    assert moved(before, after, "fal_jobs_webhooks_total", outcome="applied", reason="") == 1
    assert moved(before, after, "fal_jobs_webhooks_total", outcome="duplicate", reason="") == 2
    # Each delivery that found no batch holding its job joined one (the first ended the job; a
    # duplicate that came later found it ended): batches of this one job.
    batches = moved(before, after, "fal_jobs_finish_batch_jobs_count")
    assert 1 <= batches <= 3 and moved(before, after, "fal_jobs_finish_batch_jobs_sum") == batches
    assert moved(before, after, "fal_jobs_finish_batch_failures_total") == 0
    assert moved(before, after, "fal_jobs_http_requests_total", method="POST", route="/api/jobs", status="202") == 1
    assert moved(before, after, "fal_jobs_http_requests_total", method="POST", route="/api/webhooks/fal", status="200") == 3
    assert moved(before, after, "fal_jobs_http_request_duration_seconds_count", method="POST", route="/api/webhooks/fal") == 3
    assert moved(before, after, "fal_jobs_http_requests_total",
                 method="GET", route="/api/jobs/{request_id}", status="200") == 1
    assert moved(before, after, "fal_jobs_http_requests_total",
                 method="GET", route="/api/jobs/{request_id}/events", status="200") == 1
    # Every change after the snapshot went out live on the one stream: one lag observation each.
    assert live >= 1
    assert moved(before, after, "fal_jobs_event_delivery_lag_seconds_count") == live
    assert moved(before, after, "fal_jobs_fal_requests_total", operation="submit", outcome="ok") == 1
    assert moved(before, after, "fal_jobs_fal_request_duration_seconds_count", operation="submit") == 1
    assert value(after, "fal_jobs_sse_streams_open") == value(before, "fal_jobs_sse_streams_open")
    assert value(after, "fal_jobs_wait_requests_open") == value(before, "fal_jobs_wait_requests_open")
    # A count of the process's connected listeners (the test run holds several services): this one's
    # stayed up through the round trip.
    assert value(after, "fal_jobs_listener_connected") == value(before, "fal_jobs_listener_connected") >= 1
    # pending, then at least one change, then completed: each published by this process's listener
    # (the other services of the test run publish them too, so at least that many).
    assert moved(before, after, "fal_jobs_events_published_total") >= 1 + live
    assert value(after, "fal_jobs_db_pool_connections", state="max") >= 10
    assert value(after, "fal_jobs_followers", state="active") >= 0


async def test_a_sweep_is_counted(metered: RunningServer, http: httpx.AsyncClient) -> None:
    before = await scrape(http, metered.url)
    report = await metered.app.state["reconciler"].sweep_once()
    after = await scrape(http, metered.url)
    result = "swept" if report.ran else "skipped"
    assert moved(before, after, "fal_jobs_sweep_runs_total", result=result) == 1



def test_the_grafana_dashboard_queries_only_metrics_that_exist() -> None:
    import re
    from pathlib import Path

    from prometheus_client import REGISTRY

    defined: set[str] = set()
    for family in REGISTRY.collect():
        suffixes = ("", "_total") if family.type == "counter" else ("", "_bucket", "_count", "_sum")
        defined.update(family.name + suffix for suffix in suffixes)
    dashboard = (Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json").read_text()
    used = set(re.findall(r"\bfal_jobs_[a-z_]+", dashboard))
    assert len(used) >= 15 and used <= defined, sorted(used - defined)
