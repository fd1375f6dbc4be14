"""Request-head size/time limits and the body-read timeout on both real servers, over raw sockets.

Each server (uvicorn + httptools, hypercorn + h11) runs in its own process exactly as
``gateway serve`` runs it (``gateway.__main__.run``), serving a tiny Starlette app.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.procs import ManagedProcess

pytestmark = pytest.mark.integration

MAX_HEADER_BYTES = 8 * 1024
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
MARGIN = 1.5
"""Seconds a limit may take beyond its configured value (scheduling on a busy 2-core machine)."""


class Server:
    def __init__(self, kind: str, proc: ManagedProcess, port: int) -> None:
        self.kind = kind
        self.proc = proc
        self.port = port

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return sock

    def log(self) -> str:
        return self.proc.read_log()


@pytest.fixture(scope="module", params=["uvicorn", "hypercorn"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    kind = request.param
    port = free_port()
    argv = [sys.executable, "-m", "tests.support.limits_server", "--server", kind, "--port", str(port)]
    argv += ["--max-header-bytes", str(MAX_HEADER_BYTES), "--header-timeout", str(HEADER_TIMEOUT)]
    argv += ["--body-timeout", str(BODY_TIMEOUT)]
    proc = ManagedProcess(kind, argv, log_dir=tmp_path_factory.mktemp(f"limits-{kind}"), cwd=Path(__file__).parents[1])
    with proc.start():
        proc.wait_port("127.0.0.1", port)
        yield Server(kind, proc, port)


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may refuse before reading it all; its answer is still in our receive buffer


def _read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``deadline`` passes: AssertionError)."""
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"connection still open at the deadline; received {data[:200]!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _post(body: bytes, extra_headers: bytes = b"") -> bytes:
    head = b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n" % len(body)
    return head + extra_headers + b"\r\n" + body


def test_a_request_head_over_the_limit_gets_431_and_a_closed_connection(server: Server) -> None:
    with server.connect() as sock:
        _send(sock, _post(b"{}", b"x-big: " + b"a" * (64 * 1024) + b"\r\n"))

        answer = _read_until_closed(sock, time.monotonic() + 5)

    assert answer.startswith(b"HTTP/1.1 431 ")


def test_a_request_head_just_under_the_limit_is_served(server: Server) -> None:
    with server.connect() as sock:
        _send(sock, _post(b"12345", b"x-big: " + b"a" * (MAX_HEADER_BYTES - 200) + b"\r\nconnection: close\r\n"))

        answer = _read_until_closed(sock, time.monotonic() + 5)

    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"\r\n\r\n5")


@pytest.mark.parametrize("chunk", [7, 1000, None], ids=["7-byte-sends", "1000-byte-sends", "one-send"])
def test_pipelined_requests_split_anywhere_are_all_served(server: Server, chunk: int | None) -> None:
    requests = (
        _post(b"a" * 3000) + _post(b"b" * 10, b"x-pad: " + b"p" * 5000 + b"\r\n") + _post(b"", b"connection: close\r\n")
    )
    with server.connect() as sock:
        step = chunk or len(requests)
        for i in range(0, len(requests), step):
            _send(sock, requests[i : i + step])

        answer = _read_until_closed(sock, time.monotonic() + 5)

    assert answer.count(b"HTTP/1.1 200 ") == 3
    assert answer.endswith(b"\r\n\r\n0")


@pytest.mark.parametrize("trickle", [True, False], ids=["trickling-head", "silent-connection"])
def test_a_request_head_that_never_completes_is_closed_after_the_header_timeout(server: Server, trickle: bool) -> None:
    with server.connect() as sock:
        started = time.monotonic()
        if trickle:
            _send(sock, b"POST /echo HTTP/1.1\r\nhost: test\r\n")
        deadline = started + HEADER_TIMEOUT + MARGIN
        answer = b""
        sock.settimeout(0.1)
        while time.monotonic() < deadline:
            if trickle:
                _send(sock, b"x-slow: 1\r\n")
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        else:
            raise AssertionError(f"still open {HEADER_TIMEOUT + MARGIN}s after connecting")
        elapsed = time.monotonic() - started

    assert elapsed >= HEADER_TIMEOUT * 0.9
    if trickle and server.kind == "uvicorn":
        assert answer.startswith(b"HTTP/1.1 408 ")
    else:  # hypercorn's idle timer closes without a response; nothing to answer on a silent connection
        assert answer == b""


def test_a_request_body_that_stalls_gets_408_and_a_closed_connection(server: Server) -> None:
    with server.connect() as sock:
        started = time.monotonic()
        _send(sock, b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)

        answer = _read_until_closed(sock, started + BODY_TIMEOUT + MARGIN)

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started >= BODY_TIMEOUT * 0.9


def test_a_client_gone_mid_body_is_one_info_line_not_a_traceback(server: Server) -> None:
    before = server.log()
    with server.connect() as sock:
        _send(sock, b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
        deadline = time.monotonic() + 5
        while server.log()[len(before) :].count("echo: reading the body") < 1:
            assert time.monotonic() < deadline, "the app never started reading the body"
            time.sleep(0.02)

    deadline = time.monotonic() + 5
    while "disconnected before its request body was read" not in server.log()[len(before) :]:
        assert time.monotonic() < deadline, server.log()[len(before) :]
        time.sleep(0.05)
    new = server.log()[len(before) :]

    assert new.count("disconnected before its request body was read") == 1
    assert " INFO gateway.server client 127.0.0.1:" in new
    assert "Traceback" not in new and " ERROR " not in new
