"""What each credential holds open in this process (SSE streams, `?wait=` requests, output
downloads): the limits on them, and the ending of its streams and waits when the credential is
revoked. A download in progress is left to finish: it is finite, and its output was the caller's
when it began.

Per process, in memory: a stream lives in one process, and counting it in Postgres would cost a
write per open and close and leak on a crash. So with N processes one credential can hold up to
N times the limit. Revocation reaches every process through `revalidate_forever`: one query per
interval per process over the credentials holding something open, whatever their number.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING, Literal

from service import metrics
from service.errors import TooManyRequests

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection

    from service.auth.callers import Caller

log = logging.getLogger(__name__)

Kind = Literal["stream", "wait", "download"]
REVOCABLE: tuple[Kind, ...] = ("stream", "wait")
"""What a revocation ends."""
RETRY_AFTER_S = 5
_HELD = {"stream": "open event streams", "wait": "concurrent ?wait= requests", "download": "downloads in progress"}


class Ticket:
    """One admitted stream, wait or download; `release()` (idempotent) gives its place back."""

    __slots__ = ("_admission", "_id", "close", "holder", "kind", "revoked")

    def __init__(self, admission: Admission, number: int, holder: str, kind: Kind, close: Callable[[], None]) -> None:
        self._admission = admission
        self._id = number
        self.holder = holder
        """Whose place it takes: a credential, or what a signed link opens."""
        self.kind = kind
        self.close = close
        self.revoked = False
        """Set when the credential was revoked: what it admitted must not answer any more."""

    def release(self) -> None:
        self._admission._release(self)


class Admission:
    def __init__(self, *, max_per_credential: int, max_downloads: int) -> None:
        self._max = max_per_credential
        self._max_downloads = max_downloads
        self._held: dict[tuple[str, Kind], dict[int, Ticket]] = {}
        self._ids = itertools.count()

    def admit(self, caller: Caller, kind: Kind, close: Callable[[], None] = lambda: None, *,
              holder: str | None = None) -> Ticket:
        """Take a place for `caller` (or for `holder`, when the place is not the caller's own), or
        raise TooManyRequests; `close` (settable later on the ticket) ends what was admitted."""
        holder = caller.credential if holder is None else holder
        if kind == "download":
            limit, setting = self._max_downloads, "MAX_DOWNLOADS_PER_USER"
        else:
            limit, setting = caller.max_streams or self._max, "MAX_STREAMS_PER_USER"
        held = self._held.setdefault((holder, kind), {})
        if len(held) >= limit:
            metrics.limit_refused(f"{kind}s")
            who = ("this key or session already holds" if holder == caller.credential
                   else "this output's signed links already hold")
            then = "wait for one to finish" if kind == "download" else "close one first"
            raise TooManyRequests(
                f"{kind}s: {who} {len(held)} {_HELD[kind]} ({setting} = {limit}); {then}",
                retry_after_s=RETRY_AFTER_S,
            )
        ticket = Ticket(self, next(self._ids), holder, kind, close)
        held[ticket._id] = ticket
        return ticket

    def _release(self, ticket: Ticket) -> None:
        held = self._held.get((ticket.holder, ticket.kind))
        if held is not None and held.pop(ticket._id, None) is not None and not held:
            del self._held[(ticket.holder, ticket.kind)]

    def held(self, holder: str, kind: Kind) -> int:
        return len(self._held.get((holder, kind), ()))

    def credentials(self) -> set[str]:
        """The credentials holding something a revocation would end."""
        return {holder for holder, kind in self._held if kind in REVOCABLE}

    def close_credential(self, credential: str) -> int:
        """End the streams and waits `credential` holds here; returns how many."""
        tickets = [t for kind in REVOCABLE for t in self._held.get((credential, kind), {}).values()]
        for ticket in tickets:
            ticket.revoked = True
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
