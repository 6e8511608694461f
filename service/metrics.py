"""Every Prometheus metric of the service, and the one-line calls that move them.

The rest of the code never builds a metric: it calls a function here at the moment something
happens, so that the names, labels and buckets live in one place (and in the Grafana dashboard,
`deploy/grafana-dashboard.json`, built on these names).

Several processes behind one port (`run` and `serve` start WEB_CONCURRENCY uvicorn workers) share
their values through prometheus-client's multiprocess mode: `serve` points PROMETHEUS_MULTIPROC_DIR
at a fresh folder before the workers start, every worker writes its values there, and `/metrics`,
whichever worker answers, reports the sum over all of them (gauges: over the live ones). One
scrape target per server (machine or pod) is then right; servers are aggregated in the query,
e.g. `sum by (route) (rate(fal_jobs_http_requests_total[5m]))`. A single process without that
variable exposes its own registry, with the process and GC collectors.

The HTTP path is the hot one (every webhook): label children are looked up once per (method,
route, status) and cached, so a request costs a dict lookup, an increment and an observation.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

if TYPE_CHECKING:
    from datetime import datetime

PREFIX = "fal_jobs_"

# Latency buckets: from a webhook's ACK (milliseconds) to a fal call (up to tens of seconds).
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
# Gauges sum over the live processes in multiprocess mode (`livesum`).
STREAMS_OPEN = Gauge(PREFIX + "sse_streams_open", "Server-Sent Events streams open", multiprocess_mode="livesum")
WAITING_REQUESTS = Gauge(PREFIX + "wait_requests_open", "GET /api/jobs/{id}?wait= requests waiting",
                         multiprocess_mode="livesum")
FOLLOWERS = Gauge(PREFIX + "followers", "fal status streams followed (active) or queued for a slot (waiting)", ["state"],
                  multiprocess_mode="livesum")
LISTENER_CONNECTED = Gauge(PREFIX + "listener_connected", "Processes whose LISTEN connection is up",
                           multiprocess_mode="livesum")
POOL_CONNECTIONS = Gauge(PREFIX + "db_pool_connections", "asyncpg pool connections by state (in_use, idle, max)",
                         ["state"], multiprocess_mode="livesum")
LISTENER_RECONNECTS = Counter(PREFIX + "listener_reconnects_total", "Times the LISTEN connection was re-established")
EVENTS_PUBLISHED = Counter(PREFIX + "events_published_total", "Job events the listener handed to this process's hub")
FAL_REQUESTS = Counter(PREFIX + "fal_requests_total", "Calls to fal's queue API, by operation and outcome",
                       ["operation", "outcome"])
FAL_DURATION = Histogram(PREFIX + "fal_request_duration_seconds", "Latency of calls to fal's queue API",
                         ["operation"], buckets=FAST_BUCKETS)
SWEEP_RUNS = Counter(PREFIX + "sweep_runs_total",
                     "Reconciliation sweeps: swept, skipped (another process held the lock) or failed", ["result"])
SWEEP_FIXED = Counter(PREFIX + "sweep_jobs_fixed_total", "Jobs whose state the sweep changed after asking fal")
OUTPUT_COPIES = Counter(PREFIX + "output_copies_total", "Output copies into the store, by outcome (stored, failed)",
                        ["outcome"])
OUTPUT_BYTES = Counter(PREFIX + "output_copied_bytes_total", "Bytes of outputs stored")
OUTPUT_RETRIES = Counter(PREFIX + "output_copy_retries_total",
                         "Output copies scheduled for another try, by where the try failed (source, store)", ["cause"])
OUTPUT_REDRIVES = Counter(PREFIX + "output_redrives_total",
                          "Failed outputs set pending again, by who did it (sweep, command)", ["by"])
OUTPUT_ORPHANS_REMOVED = Counter(PREFIX + "output_orphans_removed_total",
                                 "Store objects no output names, removed: by a copy whose outcome was not written "
                                 "(copy), by `outputs gc` (gc), staging files left by a stopped upload (staging)",
                                 ["by"])
RETENTION_DELETED = Counter(PREFIX + "retention_deleted_rows_total", "Rows deleted by retention, by table", ["table"])
FINISH_BATCHES = Histogram(PREFIX + "finish_batch_jobs",
                           "Jobs ended per statement by the webhooks' batches (1 = a lone webhook; failed batches "
                           "are counted in finish_batch_failures_total)",
                           buckets=(1, 2, 4, 8, 16, 32, 64, 100))
FINISH_BATCH_FAILURES = Counter(PREFIX + "finish_batch_failures_total",
                                "Batches of job ends that failed (on a held row or a refused value each of their "
                                "webhooks then went alone; on a sick database each answered 503)")
LIMIT_REFUSALS = Counter(PREFIX + "limit_refusals_total",
                         "Requests refused with 429 by a limit (open_jobs, jobs_per_minute, streams, waits, downloads)", ["limit"])

_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once: `labels` takes a lock and builds a key on every call,
    and every request and webhook makes several. The label values are bounded (HTTP methods, route
    templates, statuses, outcomes, the allowed models), and so is this cache."""
    key = (id(metric), labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    _child(HTTP_REQUESTS, method, route, str(status)).inc()
    _child(HTTP_DURATION, method, route).observe(seconds)


def limit_refused(limit: str) -> None:
    LIMIT_REFUSALS.labels(limit).inc()


def webhook(outcome: str, reason: str = "") -> None:
    _child(WEBHOOKS, outcome, reason).inc()


def job_created(model_id: str) -> None:
    JOBS_CREATED.labels(model_id).inc()


def job_finished(model_id: str, status: str, created_at: datetime, completed_at: datetime | None) -> None:
    _child(JOBS_FINISHED, model_id, status).inc()
    if completed_at is not None:
        _child(JOB_DURATION, model_id).observe(max(0.0, (completed_at - created_at).total_seconds()))


_observe_lag = EVENT_DELIVERY_LAG.observe


def event_delivered(written_at: float) -> None:
    """`written_at`: the event's write time in Unix seconds (0 when unknown)."""
    if written_at:
        _observe_lag(max(0.0, time.time() - written_at))


def finish_batch(jobs: int, *, failed: bool = False) -> None:
    if failed:
        FINISH_BATCH_FAILURES.inc()
    else:
        FINISH_BATCHES.observe(jobs)


def followers(active: int, waiting: int) -> None:
    FOLLOWERS.labels("active").set(active)
    FOLLOWERS.labels("waiting").set(waiting)


def listener_connected(connected: bool) -> None:
    """Called on each change of a listener's state only (never twice alike): a count, not a flag,
    so that a second listener in the same process (the tests run several services) closing does
    not hide the first one's connection."""
    if connected:
        LISTENER_CONNECTED.inc()
    else:
        LISTENER_CONNECTED.dec()


def listener_reconnected() -> None:
    LISTENER_RECONNECTS.inc()


def events_published(count: int) -> None:
    if count:
        EVENTS_PUBLISHED.inc(count)


def sweep_ran(result: str, fixed: int = 0) -> None:
    SWEEP_RUNS.labels(result).inc()
    if fixed:
        SWEEP_FIXED.inc(fixed)


def output_copied(outcome: str, size: int | None) -> None:
    OUTPUT_COPIES.labels(outcome).inc()
    if outcome == "stored" and size:
        OUTPUT_BYTES.inc(size)


def output_copy_retry(cause: str) -> None:
    OUTPUT_RETRIES.labels(cause).inc()


def output_redriven(by: str, outputs: int) -> None:
    if outputs:
        OUTPUT_REDRIVES.labels(by).inc(outputs)


def output_orphan_removed(by: str, objects: int = 1) -> None:
    if objects:
        OUTPUT_ORPHANS_REMOVED.labels(by).inc(objects)


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
        if not inspect.iscoroutinefunction(function):
            raise TypeError(f"fal_call times coroutines only, not {function!r}")
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


_pools: list[Any] = []  # asyncpg pools take no weak references; closed ones are dropped


def watch_pool(pool: Any) -> None:
    _pools.append(pool)


def sample_pools() -> None:
    """Read this process's pools into the pool gauge (at each scrape, and every few seconds)."""
    _pools[:] = [pool for pool in _pools if not pool.is_closing()]
    size = sum(pool.get_size() for pool in _pools)
    idle = sum(pool.get_idle_size() for pool in _pools)
    POOL_CONNECTIONS.labels("in_use").set(size - idle)
    POOL_CONNECTIONS.labels("idle").set(idle)
    POOL_CONNECTIONS.labels("max").set(sum(pool.get_max_size() for pool in _pools))


async def sample_pools_forever(interval_s: float = 5.0) -> None:
    """Keeps this process's pool gauge fresh for scrapes another process answers."""
    while True:
        sample_pools()
        await asyncio.sleep(interval_s)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> bytes:
    """The text format: this process's registry, or the sum over every process of the server."""
    sample_pools()
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def process_exiting() -> None:
    """A worker that stops takes its gauges out of the live sum."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())
