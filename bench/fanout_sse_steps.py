"""The fan-out bench's SSE steps. `sse-job`, the primary: S subscribers each on their own job's
stream, one webhook per round, each round's event going to exactly one of them. `broadcast`, the
secondary: S subscribers on one user's stream, every event written to all S."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import signal
import sys
import time

from bench.fanout_http import WebhookSender
from bench.fanout_meters import STATS_QUIET_S, CpuMeter
from bench.fanout_report import BROADCAST_MODE, JOB_MODE, Row, log
from bench.fanout_setup import (
    ROUND_TIMEOUT_S,
    Context,
    create_jobs,
    create_owned_jobs,
    new_user,
    new_users,
    serve,
    stream_token,
    warm_up,
)
from bench.fanout_sse import Round, SseClient, SseHub, close_subscribers, open_subscribers
from bench.harness import BenchFailure, Service, percentile, rss_kib
from service.auth.api_keys import hash_key
from service.auth.callers import KEY, Caller
from service.auth.stream_tokens import job_scope


def _check_hub(hub: SseHub, row: Row) -> None:
    if hub.no_timestamp:
        row.notes.append(f"{hub.no_timestamp} reads without a kernel timestamp")
    if hub.unexpected or hub.other_events or hub.ended or hub.failed:
        row.notes.append(f"unexpected completed events {hub.unexpected}, other job events {hub.other_events}, "
                         f"streams ended by the service {hub.ended}, failures {len(hub.failed)}")
    if hub.heartbeats:
        row.notes.append(f"{hub.heartbeats} heartbeats received during the step (SSE_HEARTBEAT_S=15: the streams take "
                         "turns, a slice of them every ~60 ms)")


def _note_idle_activity(row: Row, seen: list[str]) -> None:
    if seen:
        row.notes.append(f"idle window: {row.idle_tx} db tx; pg_stat_activity showed in the bench database: "
                         + "; ".join(seen[:5]) + (f" (+{len(seen) - 5} more)" if len(seen) > 5 else ""))
    elif row.idle_tx:
        row.notes.append(f"idle window: {row.idle_tx} db tx, and pg_stat_activity caught no backend at work "
                         "(sampled every 100 ms)")


def _latency_stats(row: Row, rounds: list[Round], sender: WebhookSender) -> None:
    row.rounds = len(rounds)
    row.expected = sum(r.expected for r in rounds)
    app = sorted(v for r in rounds for v in r.app_ms)
    wire = sorted(v for r in rounds for v in r.wire_ms)
    row.deliveries = len(app)
    row.app_p50, row.app_p99 = percentile(app, 50), percentile(app, 99)
    row.wire_p50, row.wire_p99 = percentile(wire, 50), percentile(wire, 99)
    last = sorted(max(r.app_ms) for r in rounds if r.app_ms)
    row.last_p50, row.last_p99 = percentile(last, 50), percentile(last, 99)
    wire_last = sorted(max(r.wire_ms) for r in rounds if r.wire_ms)
    row.wire_last_p50, row.wire_last_p99 = percentile(wire_last, 50), percentile(wire_last, 99)
    acks = sorted(sender.acks_ms)
    row.ack_p50, row.ack_p99 = percentile(acks, 50), percentile(acks, 99)
    if wire and wire[0] < 0:
        row.notes.append(f"{sum(1 for v in wire if v < 0)} wire timestamps before the send (clock steps?)")
    if app:
        row.notes.append(f"latency max {app[-1]:.2f} ms (wire {wire[-1] if wire else float('nan'):.2f} ms) over "
                         f"{len(app)} deliveries (p99 is nearest-rank)")
    slowest = sorted(((max(r.app_ms), i) for i, r in enumerate(rounds, 1) if r.app_ms), reverse=True)[:5]
    if slowest:
        row.notes.append("slowest rounds (last delivery, app ms): "
                         + ", ".join(f"#{i} {ms:.1f}" for ms, i in slowest))


def _note_resubscribes(row: Row, resubscribe_ms: list[float]) -> None:
    if resubscribe_ms:
        resubscribe_ms.sort()
        row.notes.append(f"re-subscribe (connect -> snapshot) between rounds: p50 "
                         f"{percentile(resubscribe_ms, 50):.1f} ms, p99 {percentile(resubscribe_ms, 99):.1f} ms")


async def _await_release(service: Service, row: Row, settle: float) -> None:
    """With every subscriber closed: give the service 20 s at most to release its side, settle,
    then measure what it holds."""
    deadline = time.monotonic() + 20
    while service.open_fds() > row.fds_before + 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(settle)
    row.rss_closed_kib, row.fds_closed = service.rss_kib(), service.open_fds()
    service.check_alive()


async def job_step(ctx: Context, subscribers: int, profile: bool) -> Row:
    """The primary measurement: S subscribers on their own jobs' streams; each round completes one
    random watched job, and its subscriber is replaced by one on a spare pending job."""
    args = ctx.args
    row = Row(JOB_MODE, subscribers)
    loop = asyncio.get_running_loop()
    service = await serve(ctx, f"job-{subscribers}", profile=profile)
    sender = WebhookSender(ctx.emulator, service.port)
    clients: dict[str, SseClient] = {}
    try:
        per_user = args.subscribers_per_user
        users = await new_users(ctx.dsn, f"fanout-job-{subscribers}", -(-subscribers // per_user))
        row.users = len(users)
        await warm_up(ctx, service, users[0], sender, job_streams=True)
        total = subscribers + args.webhooks  # W spare jobs: one replacement subscriber per round
        owners = [users[(i % subscribers) // per_user] for i in range(total)]
        log(f"{JOB_MODE} {subscribers}: creating {total} pending jobs for {len(users)} users")
        request_ids = await create_owned_jobs(ctx.dsn, [owner.user_id for owner in owners])
        # Minted here, as POST /api/stream-tokens would for the owner's API key (same secret, same
        # StreamTokens code; the token names the key, which the service checks at open).
        callers = {owner.user_id: Caller(user_id=owner.user_id, credential=KEY + hash_key(owner.api_key)) for owner in users}
        streams = {request_id: (f"/api/jobs/{request_id}/events?token="
                                f"{ctx.tokens.issue(callers[owner.user_id], job_scope(request_id))[0]}", request_id)
                   for request_id, owner in zip(request_ids, owners, strict=True)}
        watched, spare = request_ids[:subscribers], request_ids[subscribers:]
        await asyncio.sleep(1.0 + total / 5000)  # the listener publishes the pending events before anyone subscribes
        gc.collect()
        row.rss_before_kib, row.fds_before = service.rss_kib(), service.open_fds()
        bench_rss_before = rss_kib()

        hub = SseHub()
        log(f"{JOB_MODE} {subscribers}: opening {subscribers} job streams ({args.batch} at a time)")
        opened_at, service_cpu0, bench_cpu0 = time.perf_counter(), service.cpu_s(), time.process_time()
        opened = await open_subscribers(hub, service.port, [streams[r] for r in watched], args.batch)
        clients = dict(zip(watched, opened, strict=True))
        row.open_s = time.perf_counter() - opened_at
        row.cpu_service_open_s = service.cpu_s() - service_cpu0
        row.cpu_bench_open_s = time.process_time() - bench_cpu0
        quiet_since = time.monotonic()  # each open reads the database: the last work before the idle window
        await asyncio.sleep(args.settle)
        service.check_alive()
        row.rss_open_kib, row.fds_open = service.rss_kib(), service.open_fds()
        row.kib_per_client = (row.rss_open_kib - row.rss_before_kib) / subscribers
        row.bench_kib_per_client = (rss_kib() - bench_rss_before) / subscribers
        # Idle window: nothing happens but S open streams, once every backend flushed its counts.
        await asyncio.sleep(max(0.0, quiet_since + STATS_QUIET_S - time.monotonic()))
        row.idle_tx, seen = await ctx.counter.idle_window(args.idle_s)
        row.idle_s = args.idle_s
        _note_idle_activity(row, seen)
        closed = sum(1 for client in clients.values() if not client.open)
        if hub.failed or closed:
            raise BenchFailure(f"{closed} job streams closed while idle; {hub.failed[:1]}")
        log(f"{JOB_MODE} {subscribers}: open in {row.open_s:.1f} s; service RSS "
            f"{row.rss_before_kib / 1024:.1f} -> {row.rss_open_kib / 1024:.1f} MiB; idle db tx {row.idle_tx}")

        # The latency phase: one webhook at a time, each for a different random watched job. The
        # bench's S client objects are frozen out of its own garbage collector, whose full passes
        # would otherwise stall the reading of a round's one socket (the wire clock is immune anyway).
        budget = max(5.0, min(args.max_phase_s, ctx.remaining() - 60))
        gc.collect()
        gc.freeze()
        await sender.fresh()
        if profile and service.profiling:
            service.process.send_signal(signal.SIGUSR1)
        tx0 = await ctx.counter.read()
        heartbeats0 = hub.heartbeats
        meter = CpuMeter(service, await ctx.counter.backend_pids()).start()
        start = time.perf_counter()
        rounds: list[Round] = []
        open_ids = list(watched)
        resubscribe_ms: list[float] = []
        for _ in range(args.webhooks):
            if time.perf_counter() - start > budget:
                row.notes.append(f"latency phase capped at {budget:.0f} s: {len(rounds)} of {args.webhooks} "
                                 "webhooks sent (--max-phase-s)")
                break
            index = random.randrange(len(open_ids))
            request_id = open_ids[index]
            open_ids[index] = open_ids[-1]
            open_ids.pop()
            request = sender.prepare(request_id)  # signed before the clock starts
            round_ = Round(request_id, 1, loop.create_future())
            hub.rounds[request_id] = round_
            rounds.append(round_)
            await sender.send(request, lambda s, n, r=round_: r.stamp(s, n))
            try:
                await asyncio.wait_for(asyncio.shield(round_.done), ROUND_TIMEOUT_S)
            except TimeoutError:
                row.notes.append(f"round {len(rounds)}: no `completed` within {ROUND_TIMEOUT_S:.0f} s")
                break
            if hub.failed:
                raise BenchFailure(hub.failed[0])
            finished = clients.pop(request_id)
            finished.close()  # normally closed already, right after its terminal event
            # Keep S open: a new subscriber on a spare pending job, ready before the next round.
            replacement = spare.pop()
            reopen_at = time.perf_counter()
            [clients[replacement]] = await open_subscribers(hub, service.port, [streams[replacement]], 1)
            resubscribe_ms.append((time.perf_counter() - reopen_at) * 1000)
            open_ids.append(replacement)
            row.resubscribes += 1
            await asyncio.sleep(args.gap_ms / 1000)
        row.window_s = time.perf_counter() - start
        phase_end = time.monotonic()
        meter.stop(row, await ctx.counter.backend_pids())
        gc.unfreeze()
        if profile and service.profiling:
            service.process.send_signal(signal.SIGUSR2)
        row.notes.append(f"heartbeats received during the latency phase: {hub.heartbeats - heartbeats0} "
                         "(each stream one per SSE_HEARTBEAT_S, the streams taking turns by slice)")
        _latency_stats(row, rounds, sender)
        still_open = sum(1 for client in clients.values() if client.open)
        if still_open != subscribers:
            row.notes.append(f"{still_open} of {subscribers} subscribers open at the end of the phase")
        _check_hub(hub, row)
        _note_resubscribes(row, resubscribe_ms)
        log(f"{JOB_MODE} {subscribers}: {row.rounds} rounds in {row.window_s:.1f} s, p50 {row.app_p50:.2f} ms "
            f"(wire {row.wire_p50:.2f}), p99 {row.app_p99:.2f} ms (wire {row.wire_p99:.2f})")

        sender.close()
        close_subscribers(clients.values())
        clients = {}
        await _await_release(service, row, args.settle)
        await asyncio.sleep(max(0.0, phase_end + STATS_QUIET_S - time.monotonic()))
        row.tx_total = await ctx.counter.read() - tx0
        row.tx_per_s = row.tx_total / row.window_s
        if row.rounds:
            row.notes.append(f"db tx per round {row.tx_per_round:.1f} (one webhook + one stream re-open; "
                             f"{row.tx_total} over {row.window_s:.1f} s)")
    finally:
        gc.unfreeze()
        close_subscribers(clients.values())
        sender.close()
        await service.stop()
    if profile and args.profile_service:
        print_profile(args.profile_service)
    return row


async def broadcast_step(ctx: Context, subscribers: int) -> Row:
    """Secondary: S subscribers on one user's stream, every event delivered to all S."""
    args = ctx.args
    row = Row(BROADCAST_MODE, subscribers)
    loop = asyncio.get_running_loop()
    service = await serve(ctx, f"broadcast-{subscribers}")
    sender = WebhookSender(ctx.emulator, service.port)
    clients: list[SseClient] = []
    try:
        user = await new_user(ctx.dsn, f"fanout-broadcast-{subscribers}")
        await warm_up(ctx, service, user, sender, job_streams=False)
        token = await stream_token(service, user)
        path = f"/api/events?token={token}"
        request_ids = await create_jobs(ctx.dsn, user.user_id, args.webhooks)
        await asyncio.sleep(1.0)  # the listener publishes the pending events before anyone subscribes
        gc.collect()
        row.rss_before_kib, row.fds_before = service.rss_kib(), service.open_fds()
        bench_rss_before = rss_kib()

        hub = SseHub()
        log(f"{BROADCAST_MODE} {subscribers}: opening {subscribers} subscribers ({args.batch} at a time)")
        opened_at, service_cpu0, bench_cpu0 = time.perf_counter(), service.cpu_s(), time.process_time()
        clients = await open_subscribers(hub, service.port, [(path, None)] * subscribers, args.batch)
        quiet_since = time.monotonic()  # each open checks its token's credential: the last database work
        row.open_s = time.perf_counter() - opened_at
        row.cpu_service_open_s = service.cpu_s() - service_cpu0
        row.cpu_bench_open_s = time.process_time() - bench_cpu0
        await asyncio.sleep(args.settle)
        service.check_alive()
        row.rss_open_kib, row.fds_open = service.rss_kib(), service.open_fds()
        row.kib_per_client = (row.rss_open_kib - row.rss_before_kib) / subscribers
        row.bench_kib_per_client = (rss_kib() - bench_rss_before) / subscribers
        # Idle window: nothing happens but S open streams. It starts once every backend had the time
        # to flush the counts of the set-up and the opens above, so it is exact.
        await asyncio.sleep(max(0.0, quiet_since + STATS_QUIET_S - time.monotonic()))
        row.idle_tx, seen = await ctx.counter.idle_window(args.idle_s)
        row.idle_s = args.idle_s
        _note_idle_activity(row, seen)
        log(f"{BROADCAST_MODE} {subscribers}: open in {row.open_s:.1f} s; service RSS "
            f"{row.rss_before_kib / 1024:.1f} -> {row.rss_open_kib / 1024:.1f} MiB")

        # The latency phase: one webhook at a time.
        budget = max(5.0, min(args.max_phase_s, ctx.remaining() - 60))
        await sender.fresh()
        tx0 = await ctx.counter.read()
        meter = CpuMeter(service, await ctx.counter.backend_pids()).start()
        start = time.perf_counter()
        rounds: list[Round] = []
        for request_id in request_ids:
            if time.perf_counter() - start > budget:
                row.notes.append(f"latency phase capped at {budget:.0f} s: {len(rounds)} of {len(request_ids)} "
                                 "webhooks sent (--max-phase-s)")
                break
            request = sender.prepare(request_id)  # signed before the clock starts
            round_ = Round(request_id, len(clients), loop.create_future())
            hub.rounds[request_id] = round_
            rounds.append(round_)
            await sender.send(request, lambda s, n, r=round_: r.stamp(s, n))
            try:
                await asyncio.wait_for(asyncio.shield(round_.done), ROUND_TIMEOUT_S)
            except TimeoutError:
                row.notes.append(f"round {len(rounds)}: {len(round_.app_ms)} of {round_.expected} deliveries "
                                 f"within {ROUND_TIMEOUT_S:.0f} s")
                break
            if hub.failed:
                raise BenchFailure(hub.failed[0])
            await asyncio.sleep(args.gap_ms / 1000)
        row.window_s = time.perf_counter() - start
        phase_end = time.monotonic()
        meter.stop(row, await ctx.counter.backend_pids())
        _latency_stats(row, rounds, sender)
        _check_hub(hub, row)
        log(f"{BROADCAST_MODE} {subscribers}: {row.rounds} rounds in {row.window_s:.1f} s, p50 {row.app_p50:.2f} ms "
            f"(wire {row.wire_p50:.2f}), last-client p50 {row.last_p50:.1f} ms")

        # Close everything; the service must release its side.
        sender.close()
        close_subscribers(clients)
        clients = []
        await _await_release(service, row, args.settle)
        # Nothing touched the database since the phase ended: once the backends flushed, the
        # counter holds exactly the phase's transactions.
        await asyncio.sleep(max(0.0, phase_end + STATS_QUIET_S - time.monotonic()))
        row.tx_total = await ctx.counter.read() - tx0
        row.tx_per_s = row.tx_total / row.window_s
        if row.rounds:
            row.notes.append(f"db tx per webhook {row.tx_per_round:.1f} "
                             f"(= {row.tx_per_s:.1f} tx/s over {row.window_s:.1f} s with {subscribers} waiting clients)")
    finally:
        close_subscribers(clients)
        sender.close()
        await service.stop()
    return row


def print_profile(path: str) -> None:
    import pstats

    with contextlib.suppress(OSError):
        print(f"\nservice profile of the largest SSE step's latency phase ({path}), by own time:", file=sys.stderr)
        stats = pstats.Stats(path, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)
