"""A TCP proxy for fault tests: forwards to an upstream (Postgres) until told to stop forwarding.

`partition()` is what a network partition or a frozen primary looks like to the service: the
connections stay open, bytes go in, nothing comes back and nothing is refused. `heal()` forwards
again (what was held is delivered). Before `start()` nobody listens on its port, which is what a
database that is down at start-up looks like to a client.

The proxy always listens on TCP 127.0.0.1; upstream it reaches Postgres the way the DSN does, over
TCP or over a Unix socket (the embedded server listens on a socket only: `?host=/dir`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# The DSN query parameters that say where the server is; in the proxy's URL the netloc says it.
_WHERE = ("host", "port")


def _server_of(dsn: str) -> tuple[str, int]:
    """Where `dsn` reaches its server: (host, port), the host a directory for a Unix socket. As
    libpq reads a URI: the netloc's host and port, else the `host` and `port` query parameters."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    host = parts.hostname or query.get("host") or "127.0.0.1"
    port = parts.port or int(query.get("port") or 5432)
    return host, port


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        """`upstream_host` may be a directory (it starts with a slash, as in libpq): the server's
        Unix socket in it, `.s.PGSQL.<port>`."""
        self._upstream = (upstream_host, upstream_port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    @classmethod
    def for_dsn(cls, dsn: str) -> TcpProxy:
        """A proxy in front of the server `dsn` reaches, over TCP or a Unix socket."""
        return cls(*_server_of(dsn))

    def url_for(self, dsn: str) -> str:
        """`dsn` with its host and port replaced by this proxy's (a socket's `?host=` dropped too)."""
        parts = urlsplit(dsn)
        netloc = parts.netloc.rsplit("@", 1)
        auth = netloc[0] + "@" if len(netloc) == 2 else ""
        query = urlencode([(key, value) for key, value in parse_qsl(parts.query) if key not in _WHERE])
        return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{self.port}", query=query))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    def cut(self) -> int:
        """Closes every connection open now, both ways, and goes on listening: what a network blip
        or a load balancer's idle time-out does to a long-lived stream. Answers how many it cut."""
        writers = list(self._writers)
        for writer in writers:
            writer.close()
        return len(writers) // 2

    def partition(self) -> None:
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            host, port = self._upstream
            if host.startswith("/"):
                upstream_reader, upstream_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        self._writers.update((client_writer, upstream_writer))
        pumps = [asyncio.create_task(self._pump(client_reader, upstream_writer)),
                 asyncio.create_task(self._pump(upstream_reader, client_writer))]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
                self._tasks.discard(pump)
            for writer in (client_writer, upstream_writer):
                writer.close()
                self._writers.discard(writer)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            await self._flowing.wait()  # partitioned: hold the bytes, answer nothing, refuse nothing
            writer.write(data)
            await writer.drain()
