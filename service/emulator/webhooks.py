"""Webhook delivery: sign, POST, retry on failure, log every attempt."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import httpx

from .signing import KeySet, signed_headers
from .wire import DeliveryAttempt

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

# fal: 10 retries over about two hours.
FAL_RETRY_SCHEDULE_S: tuple[float, ...] = (15, 30, 60, 120, 300, 600, 900, 1200, 1800, 2400)


class WebhookSender:
    def __init__(
        self,
        keys: KeySet,
        *,
        user_id: str,
        retry_schedule_s: Sequence[float],
        timeout_s: float,
        on_attempt: Callable[[DeliveryAttempt], None],
    ) -> None:
        self._keys = keys
        self._user_id = user_id
        self._schedule = tuple(retry_schedule_s)
        self._timeout_s = timeout_s
        self._on_attempt = on_attempt
        self._http: httpx.AsyncClient | None = None

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    def _client(self) -> httpx.AsyncClient:
        # Created lazily so it binds to the loop that actually serves requests.
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False, trust_env=False)
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def deliver(
        self,
        url: str,
        body: bytes,
        *,
        request_id: str,
        delivery: int,
        bad_signature: bool,
        after_first_attempt: Callable[[], None] | None = None,
    ) -> bool:
        """One delivery with fal's retries; True when some attempt got a 2xx."""
        for attempt in range(1, len(self._schedule) + 2):
            # Re-signed per attempt: a two-hour-old timestamp would fail every receiver's staleness check.
            key = self._keys.rogue if bad_signature else self._keys.current
            timestamp = int(time.time())
            headers = signed_headers(key, request_id=request_id, user_id=self._user_id, timestamp=timestamp, body=body)
            headers["Content-Type"] = "application/json"
            status_code: int | None = None
            error: str | None = None
            try:
                response = await self._client().post(url, content=body, headers=headers)
                status_code = response.status_code
            except httpx.TimeoutException as exc:
                error = f"timeout: {type(exc).__name__}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            record = DeliveryAttempt(
                request_id=request_id,
                url=url,
                delivery=delivery,
                attempt=attempt,
                status_code=status_code,
                error=error,
                timestamp=timestamp,
                kid=None if bad_signature else key.kid,
            )
            self._on_attempt(record)
            if after_first_attempt is not None:
                after_first_attempt()
                after_first_attempt = None
            if record.ok:
                return True
            if attempt <= len(self._schedule):
                await asyncio.sleep(self._schedule[attempt - 1])
        return False
