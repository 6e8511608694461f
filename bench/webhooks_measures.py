"""What a phase of the webhook bench measures: its rate and latencies (Result), and the CPU that
this process, the service, the database's Postgres processes and the rest of the machine used."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from bench.harness import Service, percentile, postgres_cpu_s


async def postgres_pids(pool: asyncpg.Pool) -> list[int]:
    """This database's backends and the server's background processes (WAL writer, checkpointer, ...);
    not other databases' backends, so that a neighbour's tests on the same server do not count."""
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() OR backend_type <> 'client backend'"
    )
    return [row["pid"] for row in rows]


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


def self_cpu_s() -> float:
    return time.process_time()


@dataclass
class CpuSnapshot:
    bench: float
    service: float
    postgres: float | None
    busy: int
    total: int
    wall: float

    @classmethod
    def take(cls, service: Service | None, pg_pids: Sequence[int]) -> CpuSnapshot:
        busy, total = machine_jiffies()
        return cls(
            bench=self_cpu_s(),
            service=service.cpu_s() if service else 0.0,
            postgres=postgres_cpu_s(pg_pids),
            busy=busy,
            total=total,
            wall=time.perf_counter(),
        )


@dataclass
class CpuUse:
    bench: float
    service: float
    postgres: float | None
    wall: float
    machine_busy_cores: float

    @property
    def others(self) -> float:
        """CPU seconds the rest of the machine used meanwhile (noise from other processes)."""
        return self.machine_busy_cores * self.wall - self.bench - self.service - (self.postgres or 0.0)

    @classmethod
    def between(cls, a: CpuSnapshot, b: CpuSnapshot, ncpu: int) -> CpuUse:
        pg = None if a.postgres is None or b.postgres is None else b.postgres - a.postgres
        share = (b.busy - a.busy) / max(1, b.total - a.total)
        return cls(bench=b.bench - a.bench, service=b.service - a.service, postgres=pg,
                   wall=b.wall - a.wall, machine_busy_cores=share * ncpu)


@dataclass
class Result:
    label: str
    trigger: str
    count: int
    wall_s: float
    latencies_s: list[float]
    cpu: CpuUse | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def p50_ms(self) -> float:
        return percentile(sorted(self.latencies_s), 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(sorted(self.latencies_s), 99) * 1000

