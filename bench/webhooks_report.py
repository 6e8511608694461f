"""What the webhook bench prints: one line per phase, the CPU lines, the full table with the
service/floor ratios against their targets, and the service's profile when it ran under cProfile."""

from __future__ import annotations

import argparse
import io

from bench.webhooks_measures import Result
from bench.webhooks_phases import RAW_CONCURRENCIES


def row(result: Result, label: str | None = None) -> str:
    return (f"{(label or result.label):<38} {result.trigger:<8} {result.rate:>16.0f}  "
            f"{result.p50_ms:>6.2f}  {result.p99_ms:>6.2f}{('  ' + result.note) if result.note else ''}")


def cpu_line(result: Result, n_cpu: int) -> str:
    cpu = result.cpu
    assert cpu is not None
    pg = f", postgres {cpu.postgres:.1f} s" if cpu.postgres is not None else ""
    per = cpu.service / result.count * 1e6
    return (f"cpu (trigger {result.trigger}): bench process {cpu.bench:.1f} s, service process {cpu.service:.1f} s"
            f"{pg}, other processes {cpu.others:.1f} s, wall {cpu.wall:.1f} s; machine busy "
            f"{cpu.machine_busy_cores:.2f} of {n_cpu} cores; service {per:.0f} us CPU per webhook")


def print_profile(path: str, limit: int = 30) -> None:
    import pstats

    for sort in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(path, stream=out)
        stats.strip_dirs().sort_stats(sort).print_stats(limit)
        print(f"\n--- service profile (webhook phase, trigger on), top {limit} by {sort} ---")
        print("\n".join(out.getvalue().splitlines()[4:]))


def print_report(args: argparse.Namespace, results: dict[str, Result], checks: list[str], version: str,
                 pg_settings: dict[str, str], embedded: bool, ncpu: int) -> None:
    """The full run's table: every phase, the ratios against their targets, CPU, and the checks."""
    best_on = max((results[f"raw_on_{c}"] for c in RAW_CONCURRENCIES), key=lambda r: r.rate)
    best_off = max((results[f"raw_off_{c}"] for c in RAW_CONCURRENCIES), key=lambda r: r.rate)
    best_off_c = best_off.label.split("C=")[1].rstrip(")")
    ratio = results["service_on"].rate / best_on.rate
    ack_p99 = results["service_on"].p99_ms
    print()
    print(f"fal-jobs webhook benchmark: N={args.n}, concurrency={args.concurrency}, Postgres {version}, {ncpu} cores "
          f"(synchronous_commit={pg_settings['synchronous_commit']}, fsync={pg_settings['fsync']}, "
          f"{'embedded pgserver' if embedded else 'server from URL'}, client {args.client})")
    print(f"{'path':<38} {'trigger':<8} {'tx or webhooks/s':>16}  {'p50 ms':>6}  {'p99 ms':>6}")
    print(row(results["service_on"]))
    for c in RAW_CONCURRENCIES:
        print(row(results[f"raw_on_{c}"]))
    print(row(results["intake_on"]))
    print(row(results["service_off"]))
    print(row(best_off, f"raw asyncpg UPDATE+INSERT (best C={best_off_c})"))
    print(f"ratio service/floor (trigger on): {ratio:.2f}   target >= 0.50 ({'met' if ratio >= 0.5 else 'MISSED'});  "
          f"ACK p99 target < 50 ms ({ack_p99:.1f} ms, {'met' if ack_p99 < 50 else 'MISSED'})")
    print(f"ratio service/floor (trigger off): {results['service_off'].rate / best_off.rate:.2f};  "
          f"NOTIFY cost: service {results['service_off'].rate / results['service_on'].rate:.2f}x, "
          f"raw floor {best_off.rate / best_on.rate:.2f}x faster without the trigger")
    print("raw floor trigger off, each C: " + ", ".join(
        f"C={c} {results[f'raw_off_{c}'].rate:.0f}/s (p50 {results[f'raw_off_{c}'].p50_ms:.2f}, "
        f"p99 {results[f'raw_off_{c}'].p99_ms:.2f} ms)" for c in RAW_CONCURRENCIES))
    on = results["service_on"].cpu
    assert on is not None
    print(f"cpu: bench process {on.bench:.1f} s, service process {on.service:.1f} s, wall {on.wall:.1f} s "
          f"(service phase, trigger on)")
    print(cpu_line(results["service_on"], ncpu))
    print(cpu_line(results["service_off"], ncpu))
    for key in ("intake_on", f"raw_on_{best_on.label.split('C=')[1].rstrip(')')}"):
        cpu = results[key].cpu
        assert cpu is not None
        pg = f", postgres {cpu.postgres:.1f} s" if cpu.postgres is not None else ""
        print(f"cpu ({results[key].label}, trigger on): bench process {cpu.bench:.1f} s{pg}, other processes "
              f"{cpu.others:.1f} s, wall {cpu.wall:.1f} s; machine busy {cpu.machine_busy_cores:.2f} of {ncpu} cores")
    for line in checks:
        print(line)
    if args.profile_service:
        print("NOTE: the service ran under cProfile; its rows are slowed by the profiler.")
        print_profile(args.profile_service)
