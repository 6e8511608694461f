"""What each credential holds open in this process (SSE streams, `?wait=` requests, output
downloads): the limits on them, and the ending of its streams and waits when the credential is
revoked. A download in progress is left to finish: it is finite, and its output was the caller's
when it began.

Per process, in memory: a stream lives in one process, and counting it in Postgres would cost a
write per open and close and leak on a crash. So with N processes one credential can hold up to
N times the limit. Revocation reaches every process through `revalidate_forever`: one query per
interval per process over the credentials holding something open, whatever their number, and one
over the users holding a stream only an admin may hold (the operator's stream of every user's
jobs), which ends once they are admins no more.
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

    Check = Callable[[Collection[str]], Awaitable[set[str]]]
    """Given what is held (credentials, user ids): those whose holdings must end."""

log = logging.getLogger(__name__)

Kind = Literal["stream", "wait", "download"]
REVOCABLE: tuple[Kind, ...] = ("stream", "wait")
"""What a revocation ends."""
RETRY_AFTER_S = 5
_HELD = {"stream": "open event streams", "wait": "concurrent ?wait= requests", "download": "downloads in progress"}


class Ticket:
    """One admitted stream, wait or download; `release()` (idempotent) gives its place back."""

    __slots__ = ("_admission", "_id", "admin", "close", "holder", "kind", "revoked")

    def __init__(self, admission: Admission, number: int, holder: str, kind: Kind, close: Callable[[], None],
                 admin: str | None = None) -> None:
        self._admission = admission
        self._id = number
        self.holder = holder
        """Whose place it takes: a credential, or what a signed link opens."""
        self.kind = kind
        self.close = close
        self.admin = admin
        """The user id whose admin status it needs (an operator's stream), else None."""
        self.revoked = False
        """Set when the credential was revoked: what it admitted must not answer any more."""

    def release(self) -> None:
        self._admission._release(self)


class Admission:
    def __init__(self, *, max_per_credential: int, max_downloads: int) -> None:
        self._max = max_per_credential
        self._max_downloads = max_downloads
        self._held: dict[tuple[str, Kind], dict[int, Ticket]] = {}
        self._admin_only: dict[int, Ticket] = {}
        """The tickets only an admin may hold, apart: a few, checked every round among thousands."""
        self._ids = itertools.count()

    def admit(self, caller: Caller, kind: Kind, close: Callable[[], None] = lambda: None, *,
              holder: str | None = None, admin_only: bool = False) -> Ticket:
        """Take a place for `caller` (or for `holder`, when the place is not the caller's own), or
        raise TooManyRequests; `close` (settable later on the ticket) ends what was admitted.
        `admin_only`: what was admitted ends too once the caller is no longer an admin."""
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
        ticket = Ticket(self, next(self._ids), holder, kind, close, caller.user_id if admin_only else None)
        held[ticket._id] = ticket
        if admin_only:
            self._admin_only[ticket._id] = ticket
        return ticket

    def _release(self, ticket: Ticket) -> None:
        self._admin_only.pop(ticket._id, None)
        held = self._held.get((ticket.holder, ticket.kind))
        if held is not None and held.pop(ticket._id, None) is not None and not held:
            del self._held[(ticket.holder, ticket.kind)]

    def held(self, holder: str, kind: Kind) -> int:
        return len(self._held.get((holder, kind), ()))

    def credentials(self) -> set[str]:
        """The credentials holding something a revocation would end."""
        return {holder for holder, kind in self._held if kind in REVOCABLE}

    def admins(self) -> set[str]:
        """The users holding something only an admin may hold."""
        return {t.admin for t in self._admin_only.values() if t.admin is not None}

    def close_credential(self, credential: str) -> int:
        """End the streams and waits `credential` holds here; returns how many."""
        return self._end([t for kind in REVOCABLE for t in self._held.get((credential, kind), {}).values()])

    def close_admin_only(self, user_id: str) -> int:
        """End what only an admin may hold, of `user_id` (an admin no more); returns how many."""
        return self._end([t for t in self._admin_only.values() if t.admin == user_id])

    @staticmethod
    def _end(tickets: list[Ticket]) -> int:
        for ticket in tickets:
            ticket.revoked = True
            ticket.close()
            ticket.release()
        return len(tickets)

    async def revalidate_forever(
        self, revoked_among: Check, *, every_s: float, not_admins_among: Check | None = None,
    ) -> None:
        """Close what revoked credentials hold, and what only an admin may hold of users who are
        admins no more, in every process within `every_s` of the change."""
        while True:
            await asyncio.sleep(every_s)
            await _revalidate(revoked_among, self.credentials(), self.close_credential, every_s=every_s,
                              action="close_revoked")
            if not_admins_among is not None:
                await _revalidate(not_admins_among, self.admins(), self.close_admin_only, every_s=every_s,
                                  action="close_demoted")


async def _revalidate(check: Check, held: set[str], close: Callable[[str], int], *, every_s: float,
                      action: str) -> None:
    """`close` each of `held` that `check` names (one query for all of them)."""
    if not held:
        return
    try:
        ended = await asyncio.wait_for(check(held), timeout=max(every_s, 5))
    except Exception as error:  # the database is sick: keep what is open, try again next round
        log.warning("credential check failed", extra={"action": "revalidate_credentials", "error": type(error).__name__})
        return
    for key in ended:
        closed = close(key)
        log.info("closed what a credential may hold open no more", extra={"action": action, "closed": closed})
