"""FalJobsClient: a small typed Python client for API consumers.

The seed's `createFalJob` / `waitForFalJob` in Python, with push instead of polling: waiting reads
the job's Server-Sent Event stream and, if the connection drops, resumes with Last-Event-ID, so no
change is lost and none is seen twice.

    async with FalJobsClient("http://127.0.0.1:8000", api_key) as client:
        job = await client.create_job("image", "fal-ai/flux/dev", {"prompt": "a fox"})
        done = await client.wait_for_job(job.request_id, timeout=300)
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import msgspec
from httpx_sse import aconnect_sse

from service.jobs.models import Job
from service.uploads.library import Upload

if TYPE_CHECKING:
    import os
    from collections.abc import AsyncIterator


class FalJobsError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message


class JobWaitTimeout(TimeoutError):
    def __init__(self, job: Job | None) -> None:
        super().__init__("the job did not finish in time")
        self.job = job
        """The last state seen before the deadline."""


def _error_code(response: httpx.Response) -> str | None:
    try:
        return response.json().get("error")
    except ValueError:
        return None


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
        raise FalJobsError(response.status_code, body.get("error", "error"), body.get("message", response.text))
    except ValueError:
        raise FalJobsError(response.status_code, "error", response.text[:200]) from None


class FalJobsClient:
    def __init__(self, base_url: str, api_key: str, *, http: httpx.AsyncClient | None = None,
                 reconnect_delay_s: float = 0.5) -> None:
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None))
        self._owns_http = http is None
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._reconnect_delay_s = reconnect_delay_s

    async def __aenter__(self) -> FalJobsClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def create_job(self, type: Literal["image", "video"], model_id: str, input: dict[str, Any], *,
                         tags: list[str] | None = None, metadata: dict[str, Any] | None = None,
                         idempotency_key: str | None = None, attempts: int = 4) -> Job:
        """Create a job (with your own `tags` and `metadata`, never sent to fal). Every create carries
        an Idempotency-Key (a new one unless given), so it is retried safely on a transport error or
        a 409 "still in progress": fal is paid once."""
        headers = {**self._headers, "Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        body: dict[str, Any] = {"type": type, "model_id": model_id, "input": input}
        if tags:
            body["tags"] = tags
        if metadata:
            body["metadata"] = metadata
        url = f"{self._base}/api/jobs"
        for attempt in range(1, attempts):
            try:
                response = await self._http.post(url, headers=headers, json=body)
            except httpx.TransportError:
                await asyncio.sleep(self._reconnect_delay_s * attempt)
                continue
            if response.status_code == 409 and _error_code(response) == "idempotency_in_progress":
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            _raise_for_error(response)
            return msgspec.json.decode(response.content, type=Job)
        response = await self._http.post(url, headers=headers, json=body)  # the last try: its failure is the caller's
        _raise_for_error(response)
        return msgspec.json.decode(response.content, type=Job)

    async def upload(self, file: str | os.PathLike[str] | bytes) -> Upload:
        """Upload a file (a path, streamed from disk, or bytes) for use as a job input: name it in
        `input` as `f"upload:{upload.upload_id}"`. The service reads its type from the bytes."""
        headers = {**self._headers, "Content-Type": "application/octet-stream"}
        content: bytes | AsyncIterator[bytes]
        if isinstance(file, bytes):
            content = file
        else:
            path = Path(file)
            headers["Content-Length"] = str(path.stat().st_size)
            content = _file_pieces(path)
        response = await self._http.post(f"{self._base}/api/uploads", headers=headers, content=content)
        _raise_for_error(response)
        return msgspec.json.decode(response.content, type=Upload)

    async def get_job(self, request_id: str) -> Job:
        response = await self._http.get(f"{self._base}/api/jobs/{request_id}", headers=self._headers)
        _raise_for_error(response)
        return msgspec.json.decode(response.content, type=Job)

    async def iter_events(self, request_id: str, *, last_event_id: int | None = None) -> AsyncIterator[Job]:
        """The job's snapshot, then each change, until it is terminal; reconnects and resumes."""
        while True:
            headers = dict(self._headers)
            if last_event_id is not None:
                headers["Last-Event-ID"] = str(last_event_id)
            try:
                async with aconnect_sse(self._http, "GET", f"{self._base}/api/jobs/{request_id}/events", headers=headers) as source:
                    if source.response.status_code == 204:
                        return  # finished before we (re)connected: nothing more will come
                    if not source.response.is_success:
                        await source.response.aread()
                        _raise_for_error(source.response)
                    async for message in source.aiter_sse():
                        if message.event != "job":
                            continue
                        last_event_id = int(message.id)
                        job = msgspec.json.decode(message.data, type=Job)
                        yield job
                        if job.is_terminal:
                            return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                pass
            await asyncio.sleep(self._reconnect_delay_s)

    async def wait_for_job(self, request_id: str, timeout: float = 300) -> Job:
        """The job once it is completed, failed or cancelled; JobWaitTimeout past `timeout`."""
        last: Job | None = None
        try:
            async with asyncio.timeout(timeout):
                async for job in self.iter_events(request_id):
                    last = job
                    if job.is_terminal:
                        return job
        except TimeoutError:
            raise JobWaitTimeout(last) from None
        return last if last is not None else await self.get_job(request_id)

    async def download_output(self, job: Job | str, n: int, path: str | os.PathLike[str]) -> Path:
        """Stream output `n` of a job to `path`: our stored copy, or fal's while the copy is still
        pending. Written beside `path` and renamed at the end, so a failed download leaves no
        half-written file; returns the path."""
        request_id = job if isinstance(job, str) else job.request_id
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        url = f"{self._base}/api/jobs/{request_id}/outputs/{n}"
        headers = self._headers
        try:
            for _ in range(3):
                async with self._http.stream("GET", url, headers=headers, follow_redirects=False) as response:
                    if response.is_redirect and "location" in response.headers:
                        # fal's CDN: our API key stays with us.
                        url, headers = str(response.url.join(response.headers["location"])), {}
                        continue
                    if not response.is_success:
                        await response.aread()
                        _raise_for_error(response)
                    with partial.open("wb") as file:
                        async for chunk in response.aiter_bytes():
                            file.write(chunk)
                    partial.replace(target)
                    return target
            raise FalJobsError(508, "too_many_redirects", f"output {n} of job {request_id!r} redirected too often")
        finally:
            partial.unlink(missing_ok=True)


UPLOAD_PIECE_BYTES = 1024 * 1024


async def _file_pieces(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as file:
        while piece := await asyncio.to_thread(file.read, UPLOAD_PIECE_BYTES):
            yield piece
