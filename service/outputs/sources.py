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
from urllib.parse import urlsplit

RESOLVE_TIMEOUT_S = 5.0


class SourceRefused(Exception):
    """This URL may not be fetched; the message says why."""


class SourcePolicy:
    def __init__(self, hosts: tuple[str, ...], *, emulator_media_base: str | None = None) -> None:
        self._hosts = tuple(host.strip().lower().lstrip(".") for host in hosts if host.strip())
        self._emulator_media_base = emulator_media_base.rstrip("/") + "/" if emulator_media_base else None

    def is_emulator(self, url: str) -> bool:
        return self._emulator_media_base is not None and url.startswith(self._emulator_media_base)

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
