"""What each credential holds open in this process (SSE streams, `?wait=` requests): the limit on
them, and the closing of all of them when the credential is revoked.

Per process, in memory: a stream lives in one process, and counting it in Postgres would cost a
write per open and close and leak on a crash. So with N processes one credential can hold up to
N times the limit. Revocation reaches every process through `revalidate_forever`: one query per
interval per process over the credentials holding something open, whatever their number.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Literal

from service import metrics
from service.auth.callers import Caller
from service.errors import TooManyRequests

log = logging.getLogger(__name__)

Kind = Literal["stream", "wait"]
RETRY_AFTER_S = 5


class Ticket:
    """One admitted stream or wait; `release()` (idempotent) gives its place back."""

    __slots__ = ("_admission", "_key", "close", "credential")

    def __init__(self, admission: Admission, key: int, credential: str, close: Callable[[], None] = lambda: None) -> None:
        self._admission = admission
        self._key = key
        self.credential = credential
        self.close = close

    def release(self) -> None:
        self._admission._release(self)


class Admission:
    def __init__(self, *, max_per_credential: int) -> None:
        self._max = max_per_credential
        self._held: dict[tuple[str, Kind], dict[int, Ticket]] = {}
        self._ids = itertools.count()

    def admit(self, caller: Caller, kind: Kind, close: Callable[[], None] = lambda: None) -> Ticket:
        """Take a place for `caller`, or raise TooManyRequests; `close` (settable later on the ticket)
        ends what was admitted."""
        limit = caller.max_streams or self._max
        held = self._held.setdefault((caller.credential, kind), {})
        if len(held) >= limit:
            metrics.limit_refused(f"{kind}s")
            what = "open event streams" if kind == "stream" else "concurrent ?wait= requests"
            raise TooManyRequests(
                f"{kind}s: this key or session already holds {len(held)} {what} (MAX_STREAMS_PER_USER = {limit}); "
                "close one first",
                retry_after_s=RETRY_AFTER_S,
            )
        ticket = Ticket(self, next(self._ids), caller.credential, close)
        held[ticket._key] = ticket
        return ticket

    def _release(self, ticket: Ticket) -> None:
        for kind in ("stream", "wait"):
            held = self._held.get((ticket.credential, kind))
            if held is not None and held.pop(ticket._key, None) is not None:
                if not held:
                    del self._held[(ticket.credential, kind)]
                return

    def held(self, credential: str, kind: Kind) -> int:
        return len(self._held.get((credential, kind), ()))

    def credentials(self) -> set[str]:
        return {credential for credential, _ in self._held}

    def close_credential(self, credential: str) -> int:
        """End everything `credential` holds open here; returns how many."""
        tickets = [t for kind in ("stream", "wait") for t in self._held.get((credential, kind), {}).values()]
        for ticket in tickets:
            ticket.close()
            ticket.release()
        return len(tickets)

    async def revalidate_forever(
        self, revoked_among: Callable[[Collection[str]], Awaitable[set[str]]], *, every_s: float
    ) -> None:
        """Close what revoked credentials hold, in every process within `every_s` of the revocation."""
        while True:
            await asyncio.sleep(every_s)
            credentials = self.credentials()
            if not credentials:
                continue
            try:
                revoked = await asyncio.wait_for(revoked_among(credentials), timeout=max(every_s, 5))
            except Exception as error:  # the database is sick: keep what is open, try again next round
                log.warning("credential check failed", extra={"action": "revalidate_credentials", "error": type(error).__name__})
                continue
            for credential in revoked:
                closed = self.close_credential(credential)
                log.info("closed what a revoked credential held open",
                         extra={"action": "close_revoked", "closed": closed})
