"""What the fan-out bench prints: a step's result (Row), the primary, secondary and details tables,
the verdict against the targets, and the progress lines on stderr."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

from service.app import CREDENTIAL_CHECK_S

TARGETS = ("targets: p50 <= 3 ms and p99 <= 10 ms at 10,000; p99(10,000) <= 2 x p99(10); "
           "<= 24 KiB per idle subscriber; 0 db queries per waiting client")


def log(message: str) -> None:
    print(f"[fanout {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


JOB_MODE = "sse-job"
BROADCAST_MODE = "broadcast"
POLL_MODE = "poll 2s"
STREAMS = {
    JOB_MODE: "GET /api/jobs/{id}/events?token=<job-scoped stream token>: one subscriber per job, each watching "
              "its own job; one webhook -> one delivery, with S subscribers open (PRIMARY)",
    BROADCAST_MODE: "GET /api/events?token=<user stream token> of ONE user: every event goes to all S (secondary)",
    POLL_MODE: "GET /api/jobs/{id} with a Bearer API key every 2 s (the seed's way)",
}


@dataclass
class Row:
    mode: str
    clients: int
    deliveries: int = 0
    expected: int = 0
    app_p50: float = float("nan")
    app_p99: float = float("nan")
    wire_p50: float = float("nan")
    wire_p99: float = float("nan")
    last_p50: float = float("nan")
    last_p99: float = float("nan")
    wire_last_p50: float = float("nan")
    wire_last_p99: float = float("nan")
    kib_per_client: float = float("nan")
    tx_per_s: float = float("nan")
    tx_total: int = 0
    window_s: float = 0.0
    rounds: int = 0
    cpu_bench_s: float = float("nan")
    cpu_service_s: float = float("nan")
    cpu_service_sys_s: float = float("nan")
    cpu_postgres_s: float = float("nan")
    cpu_machine_s: float = float("nan")
    cpu_other_s: float = float("nan")
    ack_p50: float = float("nan")
    ack_p99: float = float("nan")
    rss_before_kib: int = 0
    rss_open_kib: int = 0
    rss_closed_kib: int = 0
    fds_before: int = 0
    fds_open: int = 0
    fds_closed: int = 0
    bench_kib_per_client: float = float("nan")
    open_s: float = float("nan")
    cpu_service_open_s: float = float("nan")
    cpu_bench_open_s: float = float("nan")
    requests_per_s: float = float("nan")
    idle_tx: int = -1
    idle_s: float = 0.0
    users: int = 0
    resubscribes: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def tx_per_round(self) -> float:
        return self.tx_total / self.rounds if self.rounds else float("nan")


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN -> "-"


def pair(a: float, b: float, digits: int = 1) -> str:
    return f"{fmt(a, digits)}/{fmt(b, digits)}"


def print_tables(rows: list[Row], cores: int, pg_version: str, processes: int) -> None:
    primary = [row for row in rows if row.mode == JOB_MODE]
    secondary = [row for row in rows if row.mode != JOB_MODE]
    print()
    print(f"fal-jobs fan-out benchmark ({cores} cores, Postgres {pg_version}); streams: "
          + "; ".join(f"{mode} = {STREAMS[mode]}" for mode in (JOB_MODE, BROADCAST_MODE, POLL_MODE)))
    print()
    print(f"PRIMARY ({JOB_MODE}): webhook sent -> `completed` at the one subscriber watching that job, "
          "S subscribers open on their own jobs")
    print(f"{'mode':<9} {'clients':>7} {'rounds':>6} {'p50 ms':>7} {'p99 ms':>7} {'wire p50/p99 ms':>15} "
          f"{'ack p50/p99 ms':>14} {'KiB/idle sub':>12} {'idle db tx/client':>17} {'db tx/round':>11} "
          f"{'cpu bench s':>11} {'cpu service s':>13} {'cpu other s':>11}")
    for row in primary:
        if row.error:
            print(f"{row.mode:<9} {row.clients:>7} FAILED: {row.error}")
            continue
        rounds = f"{row.rounds}" + ("" if row.deliveries == row.expected else f" ({row.deliveries}/{row.expected})")
        idle = fmt(row.idle_tx / row.clients, 4) if row.idle_tx >= 0 else "-"
        print(f"{row.mode:<9} {row.clients:>7} {rounds:>6} {fmt(row.app_p50, 2):>7} {fmt(row.app_p99, 2):>7} "
              f"{pair(row.wire_p50, row.wire_p99, 2):>15} {pair(row.ack_p50, row.ack_p99, 2):>14} "
              f"{fmt(row.kib_per_client):>12} {idle:>17} {fmt(row.tx_per_round):>11} "
              f"{fmt(row.cpu_bench_s, 2):>11} {fmt(row.cpu_service_s, 2):>13} {fmt(row.cpu_other_s, 2):>11}")
    print_verdict(primary, secondary, processes)
    print_notes(primary)

    if secondary:
        print()
        print(f"SECONDARY: {BROADCAST_MODE} (every event to all S subscribers of one user stream; grows with S by "
              f"nature) and {POLL_MODE} (the seed's way)")
        print(f"{'mode':<9} {'clients':>7} {'deliveries':>10} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'last-client p50/p99 ms':>22} {'KiB/idle client':>15} {'db tx/s during window':>21} "
              f"{'cpu bench s':>11} {'cpu service s':>13} {'cpu other s':>11}")
        for row in secondary:
            if row.error:
                print(f"{row.mode:<9} {row.clients:>7} FAILED: {row.error}")
                continue
            last = pair(row.last_p50, row.last_p99) if row.mode == BROADCAST_MODE else "-"
            deliveries = f"{row.deliveries}" + ("" if row.deliveries == row.expected else f"/{row.expected}")
            print(f"{row.mode:<9} {row.clients:>7} {deliveries:>10} {fmt(row.app_p50):>8} {fmt(row.app_p99):>8} "
                  f"{last:>22} {fmt(row.kib_per_client):>15} {fmt(row.tx_per_s):>21} "
                  f"{fmt(row.cpu_bench_s, 2):>11} {fmt(row.cpu_service_s, 2):>13} {fmt(row.cpu_other_s, 2):>11}")
        if any(row.mode == BROADCAST_MODE for row in secondary):
            print(f"note ({BROADCAST_MODE}): run only for the --broadcast counts (default 10 and 1,000): at 10,000 one "
                  "round is 10,000 socket writes and 10,000 reads by this one-core load generator, which measures "
                  "the broadcast's nature (one write per subscriber) and the bench's own reading, not the product's "
                  "case; an earlier run took ~40 s of a capped phase for it, outside the time budget")
        print_notes(secondary)

    print()
    print("details (app clock = parsed by this process; wire = kernel receive timestamp, i.e. without this "
          "process's own queueing)")
    print(f"{'mode':<9} {'clients':>7} {'users':>5} {'rounds':>6} {'window s':>8} {'wire p50/p99 ms':>16} "
          f"{'wire last p50/p99':>17} {'ack p50/p99 ms':>14} {'db tx':>6} {'idle db tx':>10} "
          f"{'svc us/deliv':>12} {'bench us/deliv':>14} {'cpu s: svc sys/pg/other':>23} "
          f"{'svc RSS MiB before/open/closed':>30} {'svc fds before/open/closed':>26} {'bench KiB/client':>16} "
          f"{'open s (svc/bench cpu s)':>24}")
    for row in rows:
        if row.error:
            continue
        sse = row.mode != POLL_MODE and row.deliveries > 0
        per_delivery_service = row.cpu_service_s / row.deliveries * 1e6 if sse else float("nan")
        per_delivery_bench = row.cpu_bench_s / row.deliveries * 1e6 if sse else float("nan")
        idle = f"{row.idle_tx}/{row.idle_s:.0f}s" if row.idle_tx >= 0 else "-"
        cpu = f"{fmt(row.cpu_service_sys_s, 2)}/{fmt(row.cpu_postgres_s, 2)}/{fmt(row.cpu_other_s, 2)}"
        wire = pair(row.wire_p50, row.wire_p99, 2) if row.mode != POLL_MODE else "-"
        wire_last = pair(row.wire_last_p50, row.wire_last_p99) if row.mode == BROADCAST_MODE else "-"
        rss = (f"{row.rss_before_kib / 1024:.1f}/{row.rss_open_kib / 1024:.1f}/{row.rss_closed_kib / 1024:.1f}"
               if row.rss_before_kib else "-")
        fds = f"{row.fds_before}/{row.fds_open}/{row.fds_closed}" if row.fds_before else "-"
        opening = (f"{fmt(row.open_s)} ({fmt(row.cpu_service_open_s)}/{fmt(row.cpu_bench_open_s)})"
                   if row.open_s == row.open_s else "-")
        users = f"{row.users}" if row.users else "1"
        print(f"{row.mode:<9} {row.clients:>7} {users:>5} {row.rounds:>6} {fmt(row.window_s):>8} {wire:>16} "
              f"{wire_last:>17} {pair(row.ack_p50, row.ack_p99, 2):>14} {row.tx_total:>6} {idle:>10} "
              f"{fmt(per_delivery_service):>12} {fmt(per_delivery_bench):>14} {cpu:>23} {rss:>30} {fds:>26} "
              f"{fmt(row.bench_kib_per_client):>16} {opening:>24}")


def print_notes(rows: list[Row]) -> None:
    for row in rows:
        for note in row.notes:
            print(f"note ({row.mode} {row.clients}): {note}")


def print_verdict(primary: list[Row], secondary: list[Row], processes: int) -> None:
    done = sorted((row for row in primary if not row.error and row.deliveries), key=lambda r: r.clients)
    print()
    print(TARGETS)
    if not done:
        print(f"  no {JOB_MODE} step finished: nothing to evaluate")
        return
    small, large = done[0], done[-1]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"evaluated on the PRIMARY rows ({JOB_MODE}), at the largest step ({large.clients} subscribers) unless "
          "said otherwise:")
    print(f"  p50 <= 3 ms: {large.app_p50:.2f} ms (wire {large.wire_p50:.2f} ms) -> {verdict(large.app_p50 <= 3)}")
    print(f"  p99 <= 10 ms: {large.app_p99:.2f} ms (wire {large.wire_p99:.2f} ms) -> {verdict(large.app_p99 <= 10)}")
    if large is not small:
        ratio = large.app_p99 / small.app_p99
        wire_ratio = large.wire_p99 / small.wire_p99
        print(f"  p99({large.clients}) <= 2 x p99({small.clients}): {large.app_p99:.2f} / {small.app_p99:.2f} ms "
              f"= {ratio:.2f}x (wire {wire_ratio:.2f}x) -> {verdict(ratio <= 2)}")
    else:
        print("  p99(largest) <= 2 x p99(smallest): only one step ran -> not evaluated")
    per_step = ", ".join(f"{fmt(row.kib_per_client)} at {row.clients}" for row in done)
    print(f"  <= 24 KiB per idle subscriber: {large.kib_per_client:.1f} KiB ({per_step}) -> "
          f"{verdict(large.kib_per_client <= 24)}")
    idle = ", ".join(f"{row.idle_tx} tx / {row.clients} clients at {row.clients}" for row in done)
    # What a process does while its clients wait, whatever their number: one credential check per
    # CREDENTIAL_CHECK_S (revoked keys close their streams) and the listener's idle read.
    processes = max(1, processes)
    allowance = processes * (math.ceil(large.idle_s / CREDENTIAL_CHECK_S) + 1)
    waiting_ok = all(row.idle_tx <= allowance for row in done)
    print(f"  0 db queries per waiting client: {large.idle_s:.0f} s idle with every stream open: {idle} "
          f"(per process, not per client: <= {allowance} = {processes} process(es) x (one credential check per "
          f"{CREDENTIAL_CHECK_S:.0f} s + the listener's idle read)) -> {verdict(waiting_ok)}")
    per_round = ", ".join(f"{fmt(row.tx_per_round)} at {row.clients}" for row in done if row.rounds)
    broadcast = ", ".join(f"{fmt(row.tx_per_round)} at {row.clients}" for row in secondary
                          if row.mode == BROADCAST_MODE and not row.error and row.rounds)
    print(f"  (not a target) db tx per round, {JOB_MODE} = one webhook + one stream re-open: {per_round}; "
          f"per webhook alone ({BROADCAST_MODE} rows): {broadcast or '-'}")
