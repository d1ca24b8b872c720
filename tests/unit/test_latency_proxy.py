"""The benchmark's delaying TCP proxy (bench/latency.py), against a real echo server on
loopback: bytes arrive whole and in order, and every round trip pays the latency."""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from latency import DelayProxy

LATENCY_MS = 100


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _receive(sock: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(65536, size - got))
        assert chunk, "connection closed early"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def test_every_round_trip_pays_the_latency(echo_port: int) -> None:
    with (
        DelayProxy("127.0.0.1", echo_port, LATENCY_MS) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock,
    ):
        started = time.perf_counter()
        sock.sendall(b"ping")
        assert _receive(sock, 4) == b"ping"
        first = time.perf_counter() - started
        started = time.perf_counter()
        sock.sendall(b"pong")
        assert _receive(sock, 4) == b"pong"
        second = time.perf_counter() - started
    # A new connection: the handshake's round trip, then the request's.
    assert first >= 2 * LATENCY_MS / 1000
    # A kept-alive one: one round trip, and not much more (a loose bound for busy machines).
    assert LATENCY_MS / 1000 <= second < LATENCY_MS / 1000 + 1.0


def test_bytes_arrive_whole_and_in_order(echo_port: int) -> None:
    payload = os.urandom(2 * 1024 * 1024)
    with (
        DelayProxy("127.0.0.1", echo_port, 10) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock,
    ):
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        echoed = _receive(sock, len(payload))
        sender.join()
    assert echoed == payload


def test_a_stopped_proxy_refuses_connections(echo_port: int) -> None:
    proxy = DelayProxy("127.0.0.1", echo_port, 10).start()
    port = proxy.port
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_stopping_with_a_connection_open_is_quiet(
    echo_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = DelayProxy("127.0.0.1", echo_port, 10).start()
    with (
        caplog.at_level(logging.ERROR, logger="asyncio"),
        socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock,
    ):
        sock.sendall(b"ping")
        assert _receive(sock, 4) == b"ping"
        proxy.stop()
        assert sock.recv(4) == b""  # closed by the proxy
    assert not caplog.records
