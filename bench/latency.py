"""A TCP proxy that adds network latency, so the benchmark can show what a request costs
when the FHIR server is not on the same machine.

On loopback a request to the local HAPI costs about 15 ms of server time and nothing for
the network, so approaches that differ mostly in how many requests they send look alike.
Between a hospital's network and its FHIR server every request also pays a round trip.
:class:`DelayProxy` sits between the benchmark's clients and the server and delivers every
chunk of bytes, in each direction, ``one way`` later than it was read: a request and its
answer pay one round trip, and opening a connection pays one more (the TCP handshake).
Bandwidth is not limited; order is kept.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass, field

__all__ = ["DelayProxy"]

CHUNK_BYTES = 64 * 1024


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, one_way_s: float
) -> None:
    """Copy ``reader`` to ``writer``, each chunk delivered ``one_way_s`` after it was read.

    Reading goes on while earlier chunks wait, so the delay does not cut the throughput.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        try:
            while data := await reader.read(CHUNK_BYTES):
                queue.put_nowait((loop.time() + one_way_s, data))
        except ConnectionError:
            pass
        finally:
            queue.put_nowait((loop.time() + one_way_s, b""))  # end of stream, delayed too

    reading = asyncio.create_task(read())
    try:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        reading.cancel()


@dataclass
class DelayProxy:
    """Listens on a free loopback port and forwards to ``target_host:target_port`` with
    ``latency_ms`` of round trip; runs its own event loop in a daemon thread."""

    target_host: str
    target_port: int
    latency_ms: float
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _server: asyncio.Server | None = field(default=None, repr=False)

    @property
    def one_way_s(self) -> float:
        return self.latency_ms / 2000

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            await self._relay(client_reader, client_writer)
        except asyncio.CancelledError:
            # The proxy is stopping with the connection open: the end, not an error.
            client_writer.close()

    async def _relay(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            await asyncio.sleep(2 * self.one_way_s)  # the handshake's round trip
            server_reader, server_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(
                _pipe(client_reader, server_writer, self.one_way_s),
                _pipe(server_reader, client_writer, self.one_way_s),
            )
        finally:
            for writer in (server_writer, client_writer):
                writer.close()

    def start(self) -> DelayProxy:
        """Start listening; returns once the port is open."""
        listening = socket.create_server(("127.0.0.1", self.port))
        self.port = listening.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def serve() -> None:
            self._server = await asyncio.start_server(self._connection, sock=listening)
            ready.set()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="delay-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(timeout=10):
            raise RuntimeError("the delay proxy did not start")
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections."""
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shutdown() -> None:
            server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()
        self._loop = self._server = self._thread = None

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
