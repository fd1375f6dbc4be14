"""The SSRF guard: address classes, and the network backend against real loopback listeners."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import anyio
import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.apiadapter.guard import GuardedBackend, GuardedTransport, IPAddress, refusal
from gateway.errors import UpstreamAddressRefused

ALWAYS = [
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("::ffff:169.254.169.254", "metadata"),
    ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of 169.254.169.254
    ("169.254.170.23", "metadata"),  # EKS Pod Identity
    ("fd00:ec2::23", "metadata"),
    ("168.63.129.16", "metadata"),  # Azure WireServer: a public address
    ("::a9fe:a9fe", "metadata"),  # IPv4-compatible 169.254.169.254
    ("::ffff:0:a9fe:a9fe", "metadata"),  # IPv4-translated (SIIT) 169.254.169.254
    ("::ffff:0:0:0", "unspecified"),  # IPv4-translated 0.0.0.0
    ("::2", "unspecified"),  # IPv4-compatible 0.0.0.2
]
NOT_GLOBAL = [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("::ffff:10.0.0.1", "private"),
    ("169.254.1.1", "link_local"),
    ("fe80::1", "link_local"),
    ("100.64.0.1", "shared"),
    ("100.127.255.254", "shared"),
    ("fd12:3456::1", "unique_local"),
    ("fc00::1", "unique_local"),
    ("fec0::1", "site_local"),
    ("192.0.2.1", "non_global"),  # TEST-NET-1
    ("2001:db8::1", "non_global"),
    ("198.18.0.1", "non_global"),
    ("192.0.0.8", "non_global"),
    ("240.0.0.1", "reserved"),
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("::127.0.0.1", "loopback"),  # IPv4-compatible: Python 3.11 calls it global
    ("::ffff:0:7f00:1", "loopback"),  # IPv4-translated (SIIT): Python 3.11 calls it global
    ("::10.0.0.1", "private"),
    ("::ffff:0:c0a8:101", "private"),  # ::ffff:0:192.168.1.1
]
GLOBAL = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "168.63.129.17",  # next to Azure WireServer: an ordinary public address
]


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(("address", "reason"), ALWAYS)
def test_always_refused_even_internal(address: str, reason: str) -> None:
    assert refusal(ip(address), internal=False) == reason
    assert refusal(ip(address), internal=True) == reason


@pytest.mark.parametrize(("address", "reason"), NOT_GLOBAL)
def test_non_global_refused_unless_internal(address: str, reason: str) -> None:
    assert refusal(ip(address), internal=False) == reason
    assert refusal(ip(address), internal=True) is None


@pytest.mark.parametrize("address", GLOBAL)
def test_global_allowed(address: str) -> None:
    assert refusal(ip(address), internal=False) is None
    assert refusal(ip(address), internal=True) is None


# ---------------------------------------------------------------- the backend, for real


@contextlib.contextmanager
def listener(host: str = "127.0.0.1") -> Iterator[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()


def accepted(sock: socket.socket, wait: float) -> bool:
    """True when a connection arrives within ``wait`` seconds (polled)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
            continue
        conn.close()
        return True


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_refused_without_internal_and_nothing_connects(host: str) -> None:
    with listener() as sock:
        port = sock.getsockname()[1]
        with pytest.raises(UpstreamAddressRefused) as err:
            await GuardedBackend(internal=False).connect_tcp(host, port, timeout=5)
        assert f"{host!r}" in str(err.value) and "loopback" in str(err.value)
        assert not accepted(sock, 0.2)


@pytest.mark.anyio
async def test_loopback_allowed_when_internal() -> None:
    with listener() as sock:
        port = sock.getsockname()[1]
        stream = await GuardedBackend(internal=True).connect_tcp("localhost", port, timeout=5)
        try:
            assert accepted(sock, 5)
        finally:
            await stream.aclose()


@pytest.mark.anyio
async def test_ipv6_loopback_literal_refused() -> None:
    with pytest.raises(UpstreamAddressRefused, match="loopback"):
        await GuardedBackend(internal=False).connect_tcp("::1", 9, timeout=5)


@pytest.mark.anyio
async def test_unix_sockets_refused() -> None:
    with pytest.raises(UpstreamAddressRefused):
        await GuardedBackend(internal=True).connect_unix_socket("/tmp/x.sock")


class Recording(httpcore.AsyncNetworkBackend):
    """An inner backend that records what it was asked to dial, then dials it for real."""

    def __init__(self) -> None:
        self.dialled: list[str] = []
        self._real = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.dialled.append(host)
        return await self._real.connect_tcp(host, port, timeout, local_address, socket_options)


class FixedDns(GuardedBackend):
    """Resolves names from a table (a test double of the resolver only; the check is the real one)."""

    def __init__(self, table: dict[str, list[str]], *, internal: bool, inner: httpcore.AsyncNetworkBackend) -> None:
        super().__init__(internal=internal, inner=inner)
        self.table = table
        self.lookups = 0

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.lookups += 1
        if host == "slow.example.test":
            await anyio.sleep(30)
        if host not in self.table:
            return await super().resolve(host, port)
        return [ip(a) for a in self.table[host]]


@pytest.mark.anyio
async def test_any_refused_address_refuses_the_name_and_nothing_is_dialled() -> None:
    inner = Recording()
    backend = FixedDns({"mixed.example.test": ["93.184.215.14", "127.0.0.1"]}, internal=False, inner=inner)
    with pytest.raises(UpstreamAddressRefused, match="'mixed.example.test'.*loopback"):
        await backend.connect_tcp("mixed.example.test", 80, timeout=5)
    assert inner.dialled == []


@pytest.mark.anyio
async def test_the_checked_address_is_dialled_not_the_name() -> None:
    inner = Recording()
    backend = FixedDns({"api.example.test": ["127.0.0.1"]}, internal=True, inner=inner)
    with listener() as sock:
        stream = await backend.connect_tcp("api.example.test", sock.getsockname()[1], timeout=5)
        await stream.aclose()
    assert inner.dialled == ["127.0.0.1"] and backend.lookups == 1


@pytest.mark.anyio
async def test_resolution_is_bounded_by_the_connect_timeout() -> None:
    backend = FixedDns({}, internal=True, inner=Recording())
    started = time.monotonic()
    with pytest.raises(httpcore.ConnectTimeout):
        await backend.connect_tcp("slow.example.test", 80, timeout=0.3)
    assert time.monotonic() - started < 2


@pytest.mark.anyio
async def test_unresolvable_name_is_a_connect_error() -> None:
    with pytest.raises(httpcore.ConnectError):
        await GuardedBackend(internal=True).connect_tcp("name.invalid", 80, timeout=5)


# ---------------------------------------------------------------- the transport under httpx


@contextlib.asynccontextmanager
async def http_server(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """A minimal HTTP/1.1 server on 127.0.0.1 answering ``ok`` to everything; yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.anyio
async def test_transport_refusal_passes_through_httpx() -> None:
    async with http_server() as port:
        async with httpx.AsyncClient(transport=GuardedTransport(internal=False), trust_env=False) as client:
            with pytest.raises(UpstreamAddressRefused):
                await client.get(f"http://127.0.0.1:{port}/x?secret=1")
        async with httpx.AsyncClient(transport=GuardedTransport(internal=True), trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{port}/x")
            assert (response.status_code, response.text) == (200, "ok")


@pytest.mark.anyio
async def test_transport_maps_connect_errors_to_httpx() -> None:
    with listener() as sock:
        port = sock.getsockname()[1]
    async with httpx.AsyncClient(transport=GuardedTransport(internal=True), trust_env=False) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


def make_certificates(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    """(CA cert, leaf cert, leaf key) PEM files; the leaf is valid for DNS ``name``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (tmp / "ca.pem", tmp / "leaf.pem", tmp / "leaf.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.mark.anyio
async def test_tls_verifies_the_url_host_while_dialling_the_checked_address(tmp_path: Path) -> None:
    ca, leaf, key = make_certificates(tmp_path, "api.example.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(leaf, key)
    client_ctx = ssl.create_default_context(cafile=str(ca))
    table = {"api.example.test": ["127.0.0.1"], "other.example.test": ["127.0.0.1"]}
    async with http_server(server_ctx) as port:
        inner = Recording()
        backend = FixedDns(table, internal=True, inner=inner)
        transport = GuardedTransport(internal=True, ssl_context=client_ctx, backend=backend)
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            response = await client.get(f"https://api.example.test:{port}/")
            assert (response.status_code, response.text) == (200, "ok")
            assert inner.dialled == ["127.0.0.1"]
            # Same address, a name the certificate does not cover: verification fails.
            with pytest.raises(httpx.ConnectError, match="(?i)certificate|hostname"):
                await client.get(f"https://other.example.test:{port}/")
            # Verification is on at all: the address itself is not in the certificate either.
            with pytest.raises(httpx.ConnectError):
                await client.get(f"https://127.0.0.1:{port}/")
