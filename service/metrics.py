"""Every Prometheus metric of the service, and the one-line calls that move them.

The rest of the code never builds a metric: it calls a function here at the moment something
happens, so that the names, labels and buckets live in one place (and in the Grafana dashboard,
`deploy/grafana-dashboard.json`, built on these names).

Each process keeps and exposes its own values at `/metrics` (prometheus-client's default
registry, plus its process and GC collectors). With several processes, scrape every process on
its own address (one Prometheus target per process or pod) and aggregate in the query, e.g.
`sum by (route) (rate(fal_jobs_http_requests_total[5m]))`; Prometheus labels each series with its
`instance`, so nothing is counted twice. Gauges are per process too (`sum` them).

The HTTP path is the hot one (every webhook): label children are looked up once per (method,
route, status) and cached, so a request costs a dict lookup, an increment and an observation.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "fal_jobs_"

# Latency buckets: a webhook ACK is ~1-20 ms here; a fal call up to tens of seconds.
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)

HTTP_REQUESTS = Counter(PREFIX + "http_requests_total", "HTTP requests answered, by route template and status",
                        ["method", "route", "status"])
HTTP_DURATION = Histogram(PREFIX + "http_request_duration_seconds",
                          "Time from a request's arrival to its last byte (streams: their whole life)",
                          ["method", "route"], buckets=FAST_BUCKETS)
WEBHOOKS = Counter(PREFIX + "webhooks_total",
                   "fal webhooks received, by outcome (applied, duplicate, parked, rejected) and rejection reason",
                   ["outcome", "reason"])
JOBS_CREATED = Counter(PREFIX + "jobs_created_total", "Jobs submitted to fal and recorded", ["model"])
JOBS_FINISHED = Counter(PREFIX + "jobs_finished_total", "Jobs that reached a terminal state, by final status",
                        ["model", "status"])
JOB_DURATION = Histogram(PREFIX + "job_duration_seconds", "Time from submit to terminal state, by model",
                         ["model"], buckets=JOB_BUCKETS)
EVENT_DELIVERY_LAG = Histogram(PREFIX + "event_delivery_lag_seconds",
                               "Time from an event's write (its commit) to its SSE write to one subscriber",
                               buckets=FAST_BUCKETS)
STREAMS_OPEN = Gauge(PREFIX + "sse_streams_open", "Server-Sent Events streams open in this process")
WAITING_REQUESTS = Gauge(PREFIX + "wait_requests_open", "GET /api/jobs/{id}?wait= requests waiting in this process")
FOLLOWERS = Gauge(PREFIX + "followers", "fal status streams followed (active) or queued for a slot (waiting)", ["state"])
LISTENER_CONNECTED = Gauge(PREFIX + "listener_connected", "1 while this process's LISTEN connection is up")
LISTENER_RECONNECTS = Counter(PREFIX + "listener_reconnects_total", "Times the LISTEN connection was re-established")
EVENTS_PUBLISHED = Counter(PREFIX + "events_published_total", "Job events the listener handed to this process's hub")
FAL_REQUESTS = Counter(PREFIX + "fal_requests_total", "Calls to fal's queue API, by operation and outcome",
                       ["operation", "outcome"])
FAL_DURATION = Histogram(PREFIX + "fal_request_duration_seconds", "Latency of calls to fal's queue API",
                         ["operation"], buckets=FAST_BUCKETS)
SWEEP_RUNS = Counter(PREFIX + "sweep_runs_total",
                     "Reconciliation sweeps: swept, skipped (another process held the lock) or failed", ["result"])
SWEEP_FIXED = Counter(PREFIX + "sweep_jobs_fixed_total", "Jobs whose state the sweep changed after asking fal")
RETENTION_DELETED = Counter(PREFIX + "retention_deleted_rows_total", "Rows deleted by retention, by table", ["table"])

_http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    key = (method, route, status)
    children = _http_children.get(key)
    if children is None:
        children = _http_children[key] = (HTTP_REQUESTS.labels(method, route, str(status)),
                                          HTTP_DURATION.labels(method, route))
    children[0].inc()
    children[1].observe(seconds)


def webhook(outcome: str, reason: str = "") -> None:
    WEBHOOKS.labels(outcome, reason).inc()


def job_created(model_id: str) -> None:
    JOBS_CREATED.labels(model_id).inc()


def job_finished(model_id: str, status: str, created_at: datetime, completed_at: datetime | None) -> None:
    JOBS_FINISHED.labels(model_id, status).inc()
    if completed_at is not None:
        JOB_DURATION.labels(model_id).observe(max(0.0, (completed_at - created_at).total_seconds()))


_observe_lag = EVENT_DELIVERY_LAG.observe


def event_delivered(written_at: float) -> None:
    """`written_at`: the event's write time in Unix seconds (0 when unknown)."""
    if written_at:
        _observe_lag(max(0.0, time.time() - written_at))


def followers(active: int, waiting: int) -> None:
    FOLLOWERS.labels("active").set(active)
    FOLLOWERS.labels("waiting").set(waiting)


def listener_connected(connected: bool) -> None:
    LISTENER_CONNECTED.set(1 if connected else 0)


def listener_reconnected() -> None:
    LISTENER_RECONNECTS.inc()


def events_published(count: int) -> None:
    if count:
        EVENTS_PUBLISHED.inc(count)


def sweep_ran(result: str, fixed: int = 0) -> None:
    SWEEP_RUNS.labels(result).inc()
    if fixed:
        SWEEP_FIXED.inc(fixed)


def retention_deleted(table: str, rows: int) -> None:
    if rows:
        RETENTION_DELETED.labels(table).inc(rows)


def _fal_outcome(error: BaseException) -> str:
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        return f"http_{status // 100}xx"
    if isinstance(error, TimeoutError) or "Timeout" in type(error).__name__:
        return "timeout"
    return "error"


F = TypeVar("F", bound=Callable[..., Any])


def fal_call(operation: str) -> Callable[[F], F]:
    """Decorates a coroutine method of the fal gateway: counts its outcome, times it."""

    def decorate(function: F) -> F:
        assert inspect.iscoroutinefunction(function), "fal_call times coroutines only"
        duration = FAL_DURATION.labels(operation)

        @functools.wraps(function)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = await function(*args, **kwargs)
            except Exception as error:  # a cancelled call (CancelledError) is no outcome of fal's
                FAL_REQUESTS.labels(operation, _fal_outcome(error)).inc()
                duration.observe(time.perf_counter() - started)
                raise
            FAL_REQUESTS.labels(operation, "ok").inc()
            duration.observe(time.perf_counter() - started)
            return result

        return timed  # type: ignore[return-value]

    return decorate


class _PoolCollector(Collector):
    """Connections of the asyncpg pools of this process, read at scrape time (no cost per query)."""

    def __init__(self) -> None:
        self.pools: list[Any] = []  # asyncpg pools take no weak references; closed ones are dropped

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(PREFIX + "db_pool_connections", "asyncpg pool connections by state", labels=["state"])
        size = idle = maximum = 0
        self.pools[:] = [pool for pool in self.pools if not pool.is_closing()]
        for pool in self.pools:
            size += pool.get_size()
            idle += pool.get_idle_size()
            maximum += pool.get_max_size()
        family.add_metric(["in_use"], size - idle)
        family.add_metric(["idle"], idle)
        family.add_metric(["max"], maximum)
        yield family


_pools = _PoolCollector()
REGISTRY.register(_pools)


def watch_pool(pool: Any) -> None:
    _pools.pools.append(pool)
