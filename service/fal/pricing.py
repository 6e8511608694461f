"""fal's unit prices for the allowed models, read from its Platform API and kept for a while.

Prices are read on demand (the first submit after they went stale waits for them, within
`PRICES_TIMEOUT_S`), one read at a time per process, and stand for `ttl_s`. When fal cannot be
asked, the last known prices stand and the next try waits `RETRY_AFTER_FAILURE_S` (or the TTL,
if shorter), so that a fal outage does not make every submit wait for a time-out. A model fal
gives no price for has none here: its jobs' cost is unknown (null), never a guess.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from service.errors import UpstreamError

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.fal.gateway import FalGateway, FalPrice

log = logging.getLogger(__name__)

PRICES_TIMEOUT_S = 5.0
"""A submit waits at most this long for prices, once per TTL."""
RETRY_AFTER_FAILURE_S = 60.0


class PriceBook:
    def __init__(self, gateway: FalGateway, model_ids: tuple[str, ...], *, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._gateway = gateway
        self._model_ids = list(model_ids)
        self._ttl_s = ttl_s
        self._clock = clock
        self._prices: dict[str, FalPrice] = {}
        self._next_read_at: float | None = None
        """When the prices go stale; None: never read yet."""
        self._lock = asyncio.Lock()

    def _stale(self) -> bool:
        return self._next_read_at is None or self._clock() >= self._next_read_at

    async def price(self, model_id: str) -> FalPrice | None:
        """The model's price as last read from fal, read again first when it went stale."""
        if self._stale():
            async with self._lock:
                if self._stale():  # another task may have read them while this one waited
                    await self._read()
        return self._prices.get(model_id)

    async def warm(self) -> None:
        """Read the prices now (at start), so that the first submits do not wait for them together.
        A failure here leaves them unread: the next submit tries again (fal, or the mounted
        emulator, may not answer before the service is up)."""
        try:
            async with self._lock:
                if self._stale():
                    await self._read(back_off=False)
        except Exception:
            log.exception("reading fal's prices at start failed", extra={"action": "pricing.warm_failed"})

    async def _read(self, *, back_off: bool = True) -> None:
        try:
            prices = await self._gateway.prices(self._model_ids, timeout_s=PRICES_TIMEOUT_S)
        except UpstreamError as error:
            if back_off:
                self._next_read_at = self._clock() + min(self._ttl_s, RETRY_AFTER_FAILURE_S)
            log.warning("fal's prices could not be read; the last known ones stand (%d models)", len(self._prices),
                        extra={"action": "pricing.read_failed", "error": error.message})
            return
        self._prices = {price.endpoint_id: price for price in prices if price.endpoint_id in self._model_ids}
        self._next_read_at = self._clock() + self._ttl_s
        unpriced = sorted(set(self._model_ids) - set(self._prices))
        if unpriced:
            log.warning("fal gives no price for some allowed models: their jobs' cost is unknown",
                        extra={"action": "pricing.unpriced", "models": unpriced})
