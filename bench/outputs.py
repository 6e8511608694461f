"""Output copy benchmark: the service's copier (fal's CDN -> sha256 -> object store) against the
floor of a plain httpx -> file streaming loop, the memory each copy adds, and serving a stored
output with Range requests.

    python bench/outputs.py [--sizes-mb 1,50,500] [--database-url URL] [--tmp /tmp]

Copies: the emulator runs standalone in its own process and serves a video of the chosen size
(its sample repeated, made on the fly) from a stateless media URL. Each copy runs in a fresh child
process, floor and copier in turn, so that one copy's memory never hides another's; the child
resets its peak RSS (/proc/self/clear_refs) just before the copy and reports VmHWM - VmRSS, the
growth the copy caused. The store is the service's local folder store under --tmp; every file is
deleted as soon as it is measured. "ratio" is the median, over the pairs, of the floor's time over
the copier's time for a floor copy and the copier copy that ran next to it (which of the two goes
first alternates): on a shared machine the load moves both copies of a pair alike, where a ratio
of medians compares copies made minutes apart; "pairs" gives the lowest and highest pair, to show
the spread. CPU is the child's per GB copied; "(its loop)" is the part of the copier's spent on
the event loop's thread, the one every request of a service process shares.

Serving: the service (`python -m service run`, a separate process, its emulator mounted) on a
scratch database (--database-url, else DATABASE_URL, else an embedded pgserver; dropped at the
end) copies one 50 MB video job's output; then whole-file GETs and 1 MiB Range GETs at random
offsets (4 in flight) are timed against our URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402

from bench.harness import (  # noqa: E402
    BenchFailure,
    free_port,
    open_server,
    percentile,
    scratch_database,
)

KEY = "bench-key"
REPEATS = {1: 10, 50: 6, 500: 4}
MB = 1024 * 1024


# ---- one copy, in a child process ----------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchFailure(f"/proc/self/status has no {field}")


async def _child(mode: str, url: str, dest: str) -> dict[str, float]:
    from service.outputs.copier import Copier
    from service.outputs.sources import SourcePolicy
    from service.outputs.store import MediaStore

    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as http:
        store = MediaStore.open(None, dest)
        media_base = url.split("/media/", 1)[0] + "/media"
        copier = Copier(http, store, SourcePolicy(("fal.media",), emulator_media_base=media_base), max_bytes=2**40)
        # Connection, obstore's runtime and both code paths warm, as in a long-running service.
        await copier.copy(url.split("?", 1)[0] + "?bytes=100000", "video", "warm.bin")
        await store.delete("warm.bin")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before_kib = _status_kib("VmRSS")
        cpu_before = time.process_time()
        loop_cpu_before = time.thread_time()  # this thread runs the event loop
        started = time.perf_counter()
        if mode == "floor":
            size = 0
            async with http.stream("GET", url) as response:
                response.raise_for_status()
                with open(Path(dest) / "floor.bin", "wb") as file:
                    async for chunk in response.aiter_raw():
                        size += len(chunk)
                        file.write(chunk)
        else:
            change = await copier.copy(url, "video", "copy.bin")
            if change.status != "stored" or change.size is None:
                raise BenchFailure(f"copy failed: {change.error}")
            size = change.size
        seconds = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_before
        loop_cpu_s = time.thread_time() - loop_cpu_before
        peak_kib = _status_kib("VmHWM")
    return {"seconds": seconds, "bytes": size, "growth_kib": peak_kib - before_kib, "cpu_s": cpu_s,
            "loop_cpu_s": loop_cpu_s}


def run_child(mode: str, url: str, tmp: Path) -> dict[str, float]:
    dest = Path(tempfile.mkdtemp(prefix="fal-jobs-bench-copy-", dir=tmp))
    try:
        done = subprocess.run([sys.executable, __file__, "--child", mode, url, str(dest)], cwd=ROOT,
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise BenchFailure(f"{mode} child failed ({done.returncode}):\n{done.stdout[-1000:]}\n{done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(dest, ignore_errors=True)


async def start_emulator(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "service.emulator", "--port", str(port), "--key", KEY], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    async with httpx.AsyncClient(timeout=2) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"http://127.0.0.1:{port}/.well-known/jwks.json")).status_code == 200:
                    return process
            await asyncio.sleep(0.1)
    process.kill()
    raise BenchFailure("the emulator did not start")


async def copies(sizes_mb: list[int], tmp: Path) -> list[str]:
    port = free_port()
    emulator = await start_emulator(port)
    lines = [f"{'size':>7} {'floor MB/s':>10} {'copier MB/s':>11} {'ratio':>6} {'pairs':>10} {'floor RSS+ MB':>13} "
             f"{'copier RSS+ MB':>14} {'floor CPU s/GB':>14} {'copier CPU s/GB':>15} {'(its loop)':>10} {'runs':>4}"]
    try:
        for size_mb in sizes_mb:
            url = f"http://127.0.0.1:{port}/media/video/bench.mp4?bytes={size_mb * MB}"
            results: dict[str, list[dict[str, float]]] = {"floor": [], "copier": []}
            for round_ in range(REPEATS.get(size_mb, 2)):
                for mode in ("floor", "copier") if round_ % 2 == 0 else ("copier", "floor"):
                    results[mode].append(run_child(mode, url, tmp))
            rate = {m: statistics.median(r["bytes"] / r["seconds"] / MB for r in rs) for m, rs in results.items()}
            pairs = [f["seconds"] / c["seconds"] for f, c in zip(results["floor"], results["copier"], strict=True)]
            growth = {m: max(r["growth_kib"] for r in rs) / 1024 for m, rs in results.items()}
            cpu = {m: statistics.median(r["cpu_s"] / r["bytes"] * 1024**3 for r in rs) for m, rs in results.items()}
            loop_cpu = statistics.median(r["loop_cpu_s"] / r["bytes"] * 1024**3 for r in results["copier"])
            spread = f"{min(pairs):.2f}-{max(pairs):.2f}"
            lines.append(f"{size_mb:>5}MB {rate['floor']:>10.0f} {rate['copier']:>11.0f} "
                         f"{statistics.median(pairs):>6.2f} {spread:>10} {growth['floor']:>13.1f} {growth['copier']:>14.1f} "
                         f"{cpu['floor']:>14.2f} {cpu['copier']:>15.2f} {loop_cpu:>10.2f} {len(results['copier']):>4}")
            print(lines[-1], file=sys.stderr, flush=True)
    finally:
        emulator.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            emulator.wait(timeout=10)
        if emulator.poll() is None:
            emulator.kill()
    return lines


# ---- serving -----------------------------------------------------------------------------------


async def serving(database_url: str | None, tmp: Path, size_mb: int = 50) -> list[str]:
    from service.auth.api_keys import create_user

    server_dsn, embedded = open_server(database_url)
    media_dir = Path(tempfile.mkdtemp(prefix="fal-jobs-bench-media-", dir=tmp))
    process: subprocess.Popen[bytes] | None = None
    database = contextlib.AsyncExitStack()
    try:
        _, dsn = await database.enter_async_context(scratch_database(server_dsn, "fal_jobs_bench"))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "DATABASE_URL": dsn, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING",
               "MEDIA_DIR": str(media_dir), "RECONCILE_INTERVAL_S": "3600", "FAL_JOBS_NO_VENV": "1"}
        for unset in ("FAL_KEY", "APP_URL", "MEDIA_STORE_URL", "LISTEN_DATABASE_URL"):
            env.pop(unset, None)
        process = subprocess.Popen([sys.executable, "-m", "service", "run"], cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        user = await create_user(pool, "bench")
        await pool.close()
        headers = {"Authorization": f"Bearer {user.api_key}"}
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=120),
                                     limits=httpx.Limits(max_connections=8)) as http:
            await _wait_ready(http, url, process)
            output = await _stored_output(http, url, headers, size_mb)
            output_url = url + output["url"]
            size = output["size"]
            whole = await _whole_gets(http, output_url, headers, size)
            count, in_flight = 200, 4
            latencies, elapsed = await _range_gets(http, output_url, headers, size, count, in_flight)
        whole_rate = size / statistics.median(whole) / MB
        return [
            f"whole GET of a {size_mb} MB output: {whole_rate:.0f} MB/s (median of {len(whole)})",
            f"1 MiB Range GETs at random offsets, {in_flight} in flight: {count / elapsed:.0f} req/s, "
            f"{count / elapsed:.0f} MiB/s, p50 {percentile(latencies, 50) * 1000:.1f} ms, "
            f"p99 {percentile(latencies, 99) * 1000:.1f} ms",
        ]
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(media_dir, ignore_errors=True)
        await database.aclose()
        if embedded is not None:
            embedded.cleanup()


async def _wait_ready(http: httpx.AsyncClient, url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get(f"{url}/readyz")).status_code == 200:
                return
        if time.monotonic() > deadline or process.poll() is not None:
            raise BenchFailure("the service did not get ready")
        await asyncio.sleep(0.1)


async def _stored_output(http: httpx.AsyncClient, url: str, headers: dict[str, str], size_mb: int) -> dict[str, Any]:
    """A video job of `size_mb` MB from the emulator, once its output is copied into the store."""
    created = await http.post(f"{url}/api/jobs", headers=headers, json={
        "type": "video", "model_id": "fal-ai/kling-video/v2.1/master/text-to-video",
        "input": {"prompt": "bench", "fal_emulator": {"queue_ms": 0, "run_ms": 0, "video_bytes": size_mb * MB}}})
    request_id = created.json()["request_id"]
    deadline = time.monotonic() + 300
    while True:
        job = (await http.get(f"{url}/api/jobs/{request_id}?wait=10", headers=headers)).json()
        outputs = job.get("outputs") or []
        if outputs and outputs[0]["status"] != "pending":
            break
        if time.monotonic() > deadline:
            raise BenchFailure("the output was not copied in time")
        await asyncio.sleep(0.2)
    if outputs[0]["status"] != "stored":
        raise BenchFailure(f"copy failed: {outputs[0]}")
    return outputs[0]


async def _whole_gets(http: httpx.AsyncClient, output_url: str, headers: dict[str, str], size: int) -> list[float]:
    """The time of each of five whole GETs."""
    whole: list[float] = []
    for _ in range(5):
        started = time.perf_counter()
        got = 0
        async with http.stream("GET", output_url, headers=headers) as response:
            async for chunk in response.aiter_raw():
                got += len(chunk)
        whole.append(time.perf_counter() - started)
        if got != size:
            raise BenchFailure(f"whole GET sent {got} of {size} bytes")
    return whole


async def _range_gets(http: httpx.AsyncClient, output_url: str, headers: dict[str, str], size: int,
                      count: int, in_flight: int) -> tuple[list[float], float]:
    """`count` 1 MiB Range GETs at random offsets, `in_flight` at once: their sorted latencies,
    and the time they all took."""
    rng = random.Random(11)
    latencies: list[float] = []

    async def one_range() -> None:
        start = rng.randrange(0, size - MB)
        begun = time.perf_counter()
        response = await http.get(output_url, headers={**headers, "Range": f"bytes={start}-{start + MB - 1}"})
        latencies.append(time.perf_counter() - begun)
        if response.status_code != 206 or len(response.content) != MB:
            raise BenchFailure(f"range answered {response.status_code} with {len(response.content)} bytes")

    queue = list(range(count))

    async def worker() -> None:
        while queue:
            queue.pop()
            await one_range()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return latencies, elapsed


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT, then SIGKILL after 20 s: the service's own shutdown first."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        if process.poll() is None:
            process.kill()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", default="1,50,500")
    parser.add_argument("--database-url")
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="where copies are written (and deleted)")
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--skip-copies", action="store_true")
    args = parser.parse_args()
    tmp = Path(args.tmp)
    lines = [] if args.skip_copies else await copies([int(s) for s in args.sizes_mb.split(",")], tmp)
    if not args.skip_serving:
        lines += await serving(args.database_url, tmp)
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(asyncio.run(_child(sys.argv[2], sys.argv[3], sys.argv[4]))), flush=True)
        # obstore's runtime threads can abort the interpreter's finalization; the result is out.
        os._exit(0)
    else:
        asyncio.run(main())
