"""The fan-out bench's poll step, the seed's way: P clients each GET /api/jobs/{id} every 2 s over
one keep-alive connection, as asyncio Protocols driven by call_at timers (no task per client),
while a webhook completes the next job every 2.5 s."""

from __future__ import annotations

import asyncio
import gc
import random
import time

from bench.fanout_http import HttpConnection, WebhookSender, connect, decode_status
from bench.fanout_meters import CpuMeter
from bench.fanout_report import POLL_MODE, Row, log
from bench.fanout_setup import Context, create_jobs, new_user, serve, warm_up
from bench.harness import percentile, rss_kib

POLL_INTERVAL_S = 2.0
POLL_WEBHOOK_EVERY_S = 2.5


class PollState:
    def __init__(self, request_ids: list[str]) -> None:
        self.request_ids = request_ids
        self.paths = [f"/api/jobs/{r}".encode() for r in request_ids]
        self.sent: list[float | None] = [None] * len(request_ids)
        self.latencies_ms: list[list[float]] = [[] for _ in request_ids]
        self.responses = 0
        self.request_ms: list[float] = []
        self.errors: list[str] = []
        self.stopped = False
        self.before_webhook = 0

    def noticed(self, index: int, at: float) -> None:
        sent = self.sent[index]
        if sent is None:
            self.before_webhook += 1  # cannot happen: the job is completed only by our webhook
            return
        self.latencies_ms[index].append((at - sent) * 1000)


class Poller(HttpConnection):
    """Polls its current job every POLL_INTERVAL_S on a fixed schedule (random phase); when a
    response arrives late, the next poll follows at once instead of piling up."""

    def __init__(self, state: PollState, head_suffix: bytes, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.state = state
        self.head_suffix = head_suffix
        self.loop = loop
        self.index = 0
        self.next_at = 0.0
        self.sent_at = 0.0

    def start(self, first_at: float) -> None:
        self.next_at = first_at
        self.loop.call_at(first_at, self.poll)

    def poll(self) -> None:
        if self.state.stopped or self.closed or self.transport is None:
            return
        self.next_at += POLL_INTERVAL_S
        index = min(self.index, len(self.state.paths) - 1)
        self.sent_at = time.perf_counter()
        self.transport.write(b"GET " + self.state.paths[index] + self.head_suffix)

    def on_response(self, status: int, body: bytes, at: float) -> None:
        state = self.state
        state.responses += 1
        state.request_ms.append((at - self.sent_at) * 1000)
        if status != 200:
            state.errors.append(f"{status}: {body[:200]!r}")
        elif self.index < len(state.paths) and decode_status(body).status == "completed":
            state.noticed(self.index, at)
            self.index += 1
        if not state.stopped:
            self.loop.call_at(max(self.next_at, self.loop.time()), self.poll)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.state.stopped:
            self.state.errors.append("connection closed by the service")


async def poll_step(ctx: Context, pollers: int) -> Row:
    args = ctx.args
    row = Row(POLL_MODE, pollers)
    loop = asyncio.get_running_loop()
    service = await serve(ctx, f"poll-{pollers}")
    sender = WebhookSender(ctx.emulator, service.port)
    connections: list[Poller] = []
    try:
        user = await new_user(ctx.dsn, f"fanout-poll-{pollers}")
        await warm_up(ctx, service, user, sender, job_streams=False)
        window = args.poll_window_s
        webhook_count = max(1, int((window - 1.0 - POLL_INTERVAL_S - 0.5) // POLL_WEBHOOK_EVERY_S) + 1)
        request_ids = await create_jobs(ctx.dsn, user.user_id, webhook_count)
        state = PollState(request_ids)
        suffix = (f" HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\nAuthorization: Bearer {user.api_key}\r\n"
                  "Accept: application/json\r\n\r\n").encode()
        gc.collect()
        row.rss_before_kib, row.fds_before = service.rss_kib(), service.open_fds()
        bench_rss_before = rss_kib()
        log(f"poll {pollers}: opening {pollers} keep-alive connections")
        opened_at = time.perf_counter()
        for start in range(0, pollers, args.batch):
            size = min(args.batch, pollers - start)
            connections.extend(await asyncio.gather(
                *(connect(lambda: Poller(state, suffix, loop), service.port) for _ in range(size))))
        row.open_s = time.perf_counter() - opened_at
        # Random phases over one interval, starting now: the load ramps to its steady rate within 2 s.
        now = loop.time()
        for connection in connections:
            connection.start(now + random.uniform(0, POLL_INTERVAL_S))
        await asyncio.sleep(POLL_INTERVAL_S + 0.5)
        await sender.fresh()
        row.rss_open_kib, row.fds_open = service.rss_kib(), service.open_fds()
        row.bench_kib_per_client = (rss_kib() - bench_rss_before) / pollers
        responses0 = state.responses
        requests0 = len(state.request_ms)
        tx0 = await ctx.counter.read()
        meter = CpuMeter(service, await ctx.counter.backend_pids()).start()
        start = time.perf_counter()
        for index, request_id in enumerate(request_ids):
            due = start + 1.0 + index * POLL_WEBHOOK_EVERY_S
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            request = sender.prepare(request_id)
            await sender.send(request, lambda s, n, i=index: state.sent.__setitem__(i, s))
            service.check_alive()
        await asyncio.sleep(max(0.0, start + window - time.perf_counter()))
        row.window_s = time.perf_counter() - start
        meter.stop(row, await ctx.counter.backend_pids())
        tx1 = await ctx.counter.read()
        responses = state.responses - responses0
        state.stopped = True
        row.rounds = webhook_count
        row.tx_total = tx1 - tx0
        row.tx_per_s = row.tx_total / row.window_s
        row.requests_per_s = responses / row.window_s
        latencies = sorted(v for per_job in state.latencies_ms for v in per_job)
        row.deliveries = len(latencies)
        row.expected = webhook_count * pollers
        row.app_p50, row.app_p99 = percentile(latencies, 50), percentile(latencies, 99)
        acks = sorted(sender.acks_ms)
        row.ack_p50, row.ack_p99 = percentile(acks, 50), percentile(acks, 99)
        mean = sum(latencies) / len(latencies) if latencies else float("nan")
        row.notes.append(f"{row.requests_per_s:.0f} polls/s answered (asked: {pollers / POLL_INTERVAL_S:.0f}/s); "
                         f"{row.tx_total / max(1, responses):.2f} db tx per poll; mean latency {mean:.0f} ms; "
                         f"{webhook_count} webhooks, one per {POLL_WEBHOOK_EVERY_S} s")
        request_ms = sorted(state.request_ms[requests0:])
        row.notes.append(f"one poll (GET -> 200) took p50 {percentile(request_ms, 50):.1f} ms, "
                         f"p99 {percentile(request_ms, 99):.1f} ms, max {request_ms[-1] if request_ms else 0:.0f} ms")
        if state.errors:
            row.notes.append(f"{len(state.errors)} poll errors, first: {state.errors[0]}")
        if state.before_webhook:
            row.notes.append(f"{state.before_webhook} completions seen before their webhook was sent (a bench bug)")
        log(f"poll {pollers}: p50 {row.app_p50:.0f} ms, {row.tx_per_s:.0f} db tx/s, "
            f"{row.requests_per_s:.0f} polls/s; webhook acks ms {[round(v, 1) for v in sender.acks_ms]}; "
            f"per-webhook max latency ms {[round(max(v)) if v else None for v in state.latencies_ms]}")
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
        connections = []
        await asyncio.sleep(args.settle)
        row.rss_closed_kib, row.fds_closed = service.rss_kib(), service.open_fds()
        service.check_alive()
    finally:
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
        sender.close()
        await service.stop()
    return row
