"""What a measurement window of the fan-out bench reads besides latency: who used the CPU (this
process, the service, the bench database's Postgres backends, the rest of the machine) and how
many transactions the bench database committed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from bench.harness import Service, machine_busy_s, postgres_cpu_s

if TYPE_CHECKING:
    from bench.fanout_report import Row

STATS_QUIET_S = 11.0
"""A Postgres backend that goes idle less than 1 s after its last statistics flush flushes its
pending counts 10 s later (PGSTAT_IDLE_INTERVAL): windows that must be exact wait this long."""


@dataclass
class CpuMeter:
    """Who used the CPU during a window: this process, the service, the bench database's Postgres
    backends, and everything else on the machine (other processes disturb the numbers)."""

    service_under_test: Service
    pg_pids: list[int]
    wall: float = 0.0
    bench: float = 0.0
    service: tuple[float, float] = (0.0, 0.0)
    postgres: float = 0.0
    machine: float = 0.0

    def start(self) -> CpuMeter:
        self.wall, self.bench = time.perf_counter(), time.process_time()
        # A remote server's CPU cannot be read from here: it counts as 0 in this table.
        self.service, self.postgres, self.machine = (self.service_under_test.cpu_split(),
                                                     postgres_cpu_s(self.pg_pids) or 0.0, machine_busy_s())
        return self

    def stop(self, row: Row, pg_pids: Sequence[int]) -> None:
        service = self.service_under_test.cpu_split()
        row.cpu_bench_s = time.process_time() - self.bench
        row.cpu_service_s = sum(service) - sum(self.service)
        row.cpu_service_sys_s = service[1] - self.service[1]
        # Backends that appeared during the window count from their start (their whole life).
        new = [pid for pid in pg_pids if pid not in self.pg_pids]
        row.cpu_postgres_s = (postgres_cpu_s(self.pg_pids) or 0.0) - self.postgres + (postgres_cpu_s(new) or 0.0)
        row.cpu_machine_s = machine_busy_s() - self.machine
        row.cpu_other_s = row.cpu_machine_s - row.cpu_bench_s - row.cpu_service_s - row.cpu_postgres_s
        window = time.perf_counter() - self.wall
        if row.cpu_other_s > 0.15 * window:
            row.notes.append(f"the machine was busy with other work: {row.cpu_other_s:.1f} CPU-s over {window:.1f} s "
                             "outside this process, the service and the bench database's backends "
                             "(other processes, Postgres housekeeping, kernel): the numbers are disturbed")


class XactCounter:
    """pg_stat_database.xact_commit of the bench database, read over a connection to another one."""

    def __init__(self, connection: asyncpg.Connection, database: str) -> None:
        self._connection = connection
        self._database = database

    async def backend_pids(self) -> list[int]:
        rows = await self._connection.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", self._database)
        return [row["pid"] for row in rows]

    async def read(self) -> int:
        await self._connection.execute("SELECT pg_stat_clear_snapshot()")
        value = await self._connection.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", self._database)
        return int(value or 0)

    async def idle_window(self, seconds: float) -> tuple[int, list[str]]:
        """(transactions committed in the bench database over `seconds`, what pg_stat_activity showed
        doing something in it meanwhile: any non-client backend, e.g. an autovacuum worker, and any
        client backend whose query started inside the window), sampled every 100 ms."""
        start = await self.read()
        seen: dict[tuple[Any, ...], str] = {}
        begun = await self._connection.fetchval("SELECT now()")  # this transaction's start, the server's clock
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for r in await self._connection.fetch(
                    "SELECT pid, backend_type, application_name, query_start, left(query, 60) AS query "
                    "FROM pg_stat_activity "
                    "WHERE datname = $1 AND (backend_type <> 'client backend' OR query_start > $2)",
                    self._database, begun):
                seen.setdefault((r["pid"], r["backend_type"], r["query_start"]),
                                f"{r['backend_type']} pid {r['pid']} ({r['application_name'] or 'no application_name'})"
                                f": {r['query']!r}")
            await asyncio.sleep(0.1)
        return await self.read() - start, list(seen.values())
