"""What the benchmarks share: a Postgres server, a scratch database on it, loopback sockets,
nearest-rank percentiles, CPU/memory readings from /proc, the emulator, and the service under test
as one process or N behind one port (`--processes N`). Scripts, not tests: nothing here asserts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

# Shared with the test suite; the benches import them from here.
from service.testing import admin_execute, scratch_database, with_database  # noqa: F401
from service.testing import loopback_socket as listening_socket

ROOT = Path(__file__).resolve().parent.parent


class BenchFailure(RuntimeError):
    pass


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def open_server(database_url: str | None) -> tuple[str, Any]:
    """(server DSN, pgserver handle or None): --database-url, else DATABASE_URL, else embedded."""
    dsn = database_url or os.environ.get("DATABASE_URL")
    if dsn:
        return dsn, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset in containers
        import pgserver

        print("[bench] no --database-url or DATABASE_URL: an embedded pgserver in a temporary folder", file=sys.stderr)
        server = pgserver.get_server(tempfile.mkdtemp(prefix="fal-jobs-bench-pg-"), cleanup_mode="delete")
    return server.get_uri(), server


# ---- processes: CPU, memory and descriptors from /proc ----------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process; (0, 0) once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime


def proc_cpu_s(pid: int) -> float:
    return sum(proc_cpu_split(pid))


def postgres_cpu_s(pids: Sequence[int]) -> float | None:
    """CPU seconds of those of `pids` that are Postgres processes on this machine; None when none is
    (a remote server: its CPU cannot be read from here)."""
    total, seen = 0.0, False
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/comm") as comm:
                if not comm.read().startswith("postgres"):
                    continue
            total += proc_cpu_s(pid)
            seen = True
    return total if seen else None


def rss_kib(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    raise BenchFailure(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (uvicorn's workers under its supervisor), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    parent = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores) since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def quiet_logging() -> None:
    # Otherwise httpx logs every request at INFO: load-generator CPU that is not the benchmark's.
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("httpx", "httpcore", "litestar", "uvicorn", "uvicorn.error", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ---- the emulator and the service ---------------------------------------------------------------

READY_TIMEOUT_S = 60.0

# Runs the service under cProfile; SIGUSR1 starts collecting, SIGUSR2 stops (one process only).
# The profiler's clock is the process's CPU time, not the wall clock: on a busy machine a wall-clock
# profile charges preemption (Postgres or the load generator woken by our write) to whatever ran.
PROFILE_WRAPPER = """
import cProfile, signal, sys, time
profile = cProfile.Profile(time.process_time)
signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
signal.signal(signal.SIGUSR2, lambda *_: profile.disable())
from service.cli import main
try:
    code = main(["run"])
finally:
    profile.disable()
    profile.dump_stats(sys.argv[1])
sys.exit(code)
"""


@dataclass
class Emulator:
    emulator: Any
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, timeout=10)
        with contextlib.suppress(Exception):
            await self.emulator.aclose()


async def start_emulator(fal_key: str) -> Emulator:
    """The local fal on its own loopback port, in this event loop."""
    from service.emulator import FalEmulator, create_emulator_app

    sock = listening_socket()
    host, port = sock.getsockname()
    emulator = FalEmulator(f"http://{host}:{port}", fal_key)
    config = uvicorn.Config(create_emulator_app(emulator), log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 20
    while not server.started:
        if task.done():
            task.result()
            raise BenchFailure("the emulator's uvicorn exited before it started")
        if time.monotonic() > deadline:
            raise BenchFailure("the emulator did not start within 20 s")
        await asyncio.sleep(0.01)
    quiet_logging()
    return Emulator(emulator, server, task)


@dataclass
class Service:
    """The service under test: one process (`python -m service run`), or N behind one port
    (`uvicorn --workers N`, each worker a full service process with its own pool and listener).
    CPU, memory and descriptors are summed over the supervisor and its workers."""

    process: subprocess.Popen[bytes]
    url: str
    port: int
    log_path: Path
    processes: int = 1
    profiling: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self) -> list[int]:
        return [self.process.pid, *descendants(self.process.pid)]

    def cpu_split(self) -> tuple[float, float]:
        splits = [proc_cpu_split(pid) for pid in self.pids()]
        return sum(s[0] for s in splits), sum(s[1] for s in splits)

    def cpu_s(self) -> float:
        return sum(self.cpu_split())

    def rss_kib(self) -> int:
        return sum(rss_kib(pid) for pid in self.pids())

    def open_fds(self) -> int:
        return sum(max(0, open_fds(pid)) for pid in self.pids())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchFailure(f"the service exited with {self.process.returncode}:\n{self.log_tail()}")

    async def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            deadline = time.monotonic() + 20
            while self.process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=10)


async def start_service(dsn: str, emulator: Any, fal_key: str, log_path: Path, *, processes: int = 1,
                        profile_path: str | None = None, extra_env: dict[str, str] | None = None) -> Service:
    """The service against `emulator` (webhooks to its own URL), on a free port, once /readyz says so."""
    if profile_path and processes != 1:
        raise BenchFailure("profiling needs --processes 1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "FAL_KEY": fal_key,
        "FAL_QUEUE_URL": emulator.base_url, "FAL_SCHEMA_URL": emulator.schema_url,
        "FAL_API_URL": emulator.base_url,
        "FAL_JWKS_URL": emulator.jwks_url,
        "APP_URL": url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": os.environ.get("BENCH_SERVICE_LOG_LEVEL", "WARNING"),
        "RECONCILE_INTERVAL_S": "3600",
        "FAL_JOBS_NO_VENV": "1",  # already on the project's interpreter: never bootstrap or pip install
        # `run` alone would start one process per core: --processes decides, and 1 means one.
        "WEB_CONCURRENCY": str(processes),
        **(extra_env or {}),
    }
    env.pop("LISTEN_DATABASE_URL", None)
    if profile_path:
        command = [sys.executable, "-c", PROFILE_WRAPPER, profile_path]
    elif processes == 1:
        command = [sys.executable, "-m", "service", "run"]
    else:
        # The Procfile's way, with N workers sharing the port (migrations are applied by the bench).
        env.setdefault("STREAM_TOKEN_SECRET", "bench-" + "s" * 40)  # tokens must verify in every worker
        command = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app_from_environment",
                   "--host", "127.0.0.1", "--port", str(port), "--workers", str(processes), "--no-access-log",
                   "--timeout-graceful-shutdown", "5"]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    service = Service(process, url, port, log_path, processes=processes, profiling=bool(profile_path))
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            service.check_alive()
            # With N workers: all forked, and one answers ready (the benches warm up before measuring).
            with contextlib.suppress(httpx.HTTPError):
                if len(descendants(process.pid)) >= (processes if processes > 1 else 0) and \
                        (await client.get(f"{url}/readyz")).status_code == 200:
                    return service
            if time.monotonic() > deadline:
                await service.stop()
                raise BenchFailure(f"the service was not ready within {READY_TIMEOUT_S:.0f} s:\n{service.log_tail()}")
            await asyncio.sleep(0.1)


def add_processes_argument(parser: Any) -> None:
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="service processes behind one port (uvicorn --workers N); 1 runs `python -m service run`")
