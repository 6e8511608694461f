"""Which URLs the copier may fetch: fal's media hosts (an allow-list), and the mounted emulator.

A result is data from outside: a URL in it could point anywhere, our own network included. So a
URL is fetched only when its host is one of `MEDIA_HOSTS` (or a subdomain of one), over https,
and every address its name resolves to is public; the one exception is the emulator mounted in
this very process, whose media lives under its own http origin on loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import SplitResult, unquote, urlsplit

RESOLVE_TIMEOUT_S = 5.0


class SourceRefused(Exception):
    """This URL may not be fetched; the message says why."""


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(parts: SplitResult) -> tuple[str, str, int | None]:
    """Scheme, host and port as a client connects to them (ValueError for a port that is none)."""
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())


def _plain_path(path: str) -> bool:
    """No segment a client or server would resolve to somewhere else: `.`, `..` (spelt out or
    percent-encoded) or a backslash, which some treat as a slash."""
    if "%2e" in path.lower() or "%5c" in path.lower() or "%2f" in path.lower():
        return False
    decoded = unquote(path)
    return "\\" not in decoded and all(segment not in (".", "..") for segment in decoded.split("/"))


class SourcePolicy:
    def __init__(self, hosts: tuple[str, ...], *, emulator_media_base: str | None = None) -> None:
        self._hosts = tuple(host.strip().lower().lstrip(".") for host in hosts if host.strip())
        self._emulator: tuple[tuple[str, str, int | None], str] | None = None
        if emulator_media_base:
            base = urlsplit(emulator_media_base)
            self._emulator = (_origin(base), base.path.rstrip("/") + "/")

    def is_emulator(self, url: str) -> bool:
        """Under the mounted emulator's media base: the same scheme, host and port, and a path
        below the base's that no `..` leads out of. (A string prefix would let `<base>/../<anything>`
        through: clients and httpx resolve the `..`.)"""
        if self._emulator is None:
            return False
        origin, base_path = self._emulator
        parts = urlsplit(url)
        try:
            if _origin(parts) != origin:
                return False
        except ValueError:  # a port that is not a number
            return False
        if parts.username is not None or parts.password is not None:
            return False
        return parts.path.startswith(base_path) and _plain_path(parts.path)

    def _host_allowed(self, host: str) -> bool:
        return any(host == allowed or host.endswith("." + allowed) for allowed in self._hosts)

    def allows_redirect(self, url: str) -> bool:
        """Whether a client may be sent to `url` (a pending output's fal copy): the host part of
        the rule, without resolving it, since the client fetches it, not us."""
        if self.is_emulator(url):
            return True
        parts = urlsplit(url)
        return parts.scheme == "https" and self._host_allowed((parts.hostname or "").lower())

    async def check(self, url: str) -> None:
        """Raise SourceRefused unless `url` may be fetched."""
        if self.is_emulator(url):
            return
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme != "https":
            raise SourceRefused(f"source {host or url!r}: only https URLs are fetched")
        if not self._host_allowed(host):
            raise SourceRefused(f"source host {host!r} is not in MEDIA_HOSTS ({', '.join(self._hosts) or 'empty'})")
        if parts.username or parts.password:
            raise SourceRefused(f"source {host!r}: URLs with credentials are not fetched")
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as error:
            raise ConnectionError(f"source host {host!r} did not resolve: {error}") from None
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global:
                raise SourceRefused(f"source host {host!r} resolves to a private address ({address})")
