"""Streaming the audit export to a file and forwarding it to a SIEM as RFC 5424 syslog.

Both read ``GET /v1/audit/export`` (NDJSON, oldest first) line by line, so neither holds the
trail in memory. :class:`SyslogSender` writes one RFC 5424 message per event over UDP (one
datagram each) or TCP (octet-counting framing, RFC 6587 section 3.4.1); the message body is the
event's JSON, which holds metadata and hashes only, never raw tool arguments.

Sources: RFC 5424 (The Syslog Protocol), RFC 5426 (syslog over UDP), RFC 6587 (over TCP).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import httpx
import orjson

from gateway.cli.client import USER_AGENT, api_error
from gateway.cli.errors import CliError, ExitCode

__all__ = [
    "APP_NAME",
    "SD_ID",
    "SyslogSender",
    "copy_export",
    "export_chunks",
    "follow",
    "lines_of",
    "parse_syslog_url",
    "syslog_message",
]

APP_NAME = "mcp-gateway"
SD_ID = "mcpgw@32473"
"""The structured-data id: ``name@<private enterprise number>``; 32473 is the number RFC 5612
reserves for documentation. Operators with their own number may change it."""
FACILITY = 13
"""``log audit`` (RFC 5424 table 1)."""
_SEVERITY = {"allowed": 6, "denied": 4, "rejected": 4, "error": 3}
"""informational, warning, warning, error (RFC 5424 table 2)."""
MAX_UDP = 65_000
"""Longest message sent over UDP, in bytes (a larger one is truncated; RFC 5426 section 3.2)."""


def export_chunks(
    url: str, token: str, params: dict[str, Any], *, timeout: float, transport: httpx.BaseTransport | None = None
) -> Iterator[bytes]:
    """The body of ``GET <url>/v1/audit/export?params`` as it arrives, in chunks.

    Raises:
        CliError: 4xx/5xx (exit 1); the control plane unreachable, or the body cut short (exit 3).
    """
    headers = {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport) as http:
            with http.stream("GET", "/v1/audit/export", params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    raise api_error(response)
                yield from response.iter_bytes()
    except httpx.TimeoutException:
        raise CliError(f"GET {url}/v1/audit/export timed out", ExitCode.CONNECTION) from None
    except httpx.TransportError as e:
        reason = str(e) or type(e).__name__
        raise CliError(f"the export from {url} failed: {reason}", ExitCode.CONNECTION) from None


def lines_of(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """NDJSON lines (without the newline) of a chunked body."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


def _sd_value(value: Any) -> str:
    """A structured-data parameter value with ``"``, ``\\`` and ``]`` escaped (RFC 5424 section 6.3.3)."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _outcome(event: dict[str, Any]) -> str:
    status = event.get("status")
    if status in ("error", "rejected"):
        return str(status)
    return "allowed" if event.get("allowed") else "denied"


def syslog_message(event: dict[str, Any], *, trail: str, hostname: str) -> bytes:
    """One RFC 5424 message for an exported event (``trail`` ``decisions`` or ``control-plane``).

    ``<PRI>1 TIMESTAMP HOSTNAME mcp-gateway - MSGID [mcpgw@32473 ...] BOM{json}``: PRI is
    facility 13 (log audit) with severity 6 (allowed), 4 (denied, rejected) or 3 (error);
    TIMESTAMP is the event's; MSGID ``decision`` or ``admin``; the structured data names the
    decision id (and for the control plane the actor, action and record id); the message is
    the event as JSON (UTF-8, after a BOM).
    """
    outcome = _outcome(event)
    pri = FACILITY * 8 + _SEVERITY[outcome]
    timestamp = str(event.get("timestamp") or "-")
    host = (hostname or "-")[:255]
    if trail == "decisions":
        msgid = "decision"
        params = {"decision_id": event.get("decision_id"), "outcome": outcome, "subject": event.get("subject")}
    else:
        msgid = "admin"
        params = {
            "id": event.get("id"),
            "decision_id": event.get("decision_id"),
            "outcome": outcome,
            "actor": event.get("actor"),
            "action": event.get("action"),
        }
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_value(v)}"' for k, v in params.items() if v is not None) + "]"
    header = f"<{pri}>1 {timestamp} {host} {APP_NAME} - {msgid} {sd} "
    return header.encode() + b"\xef\xbb\xbf" + orjson.dumps(event)


def parse_syslog_url(url: str) -> tuple[str, str, int]:
    """``udp://host:port`` or ``tcp://host:port`` (port default 514) -> ``(scheme, host, port)``.

    Raises:
        CliError: (usage) another scheme, no host, or a bad port.
    """
    parts = urlsplit(url)
    try:
        port = parts.port or 514
    except ValueError:
        raise CliError(f"--syslog {url!r}: bad port", ExitCode.USAGE) from None
    if parts.scheme not in ("udp", "tcp") or not parts.hostname:
        raise CliError(f"--syslog {url!r}: expected udp://host[:port] or tcp://host[:port]", ExitCode.USAGE)
    return parts.scheme, parts.hostname, port


@dataclass
class SyslogSender:
    """Sends messages to one syslog receiver (UDP datagrams, or TCP with octet counting)."""

    url: str
    _sock: socket.socket | None = field(default=None, init=False)
    _scheme: str = field(default="udp", init=False)

    def __post_init__(self) -> None:
        self._scheme, host, port = parse_syslog_url(self.url)
        kind = socket.SOCK_DGRAM if self._scheme == "udp" else socket.SOCK_STREAM
        try:
            info = socket.getaddrinfo(host, port, type=kind)[0]
            self._sock = socket.socket(info[0], kind)
            self._sock.connect(info[4])
        except OSError as e:
            raise CliError(f"cannot reach the syslog receiver {self.url}: {e}", ExitCode.CONNECTION) from None

    def send(self, message: bytes) -> None:
        """Send one message.

        Raises:
            CliError: (connection) the socket failed.
        """
        assert self._sock is not None
        try:
            if self._scheme == "udp":
                self._sock.send(message[:MAX_UDP])
            else:
                self._sock.sendall(str(len(message)).encode() + b" " + message)
        except OSError as e:
            raise CliError(f"syslog {self.url}: {e}", ExitCode.CONNECTION) from None

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def follow(
    fetch: Callable[[str | None], Iterator[bytes]],
    deliver: Callable[[dict[str, Any]], None],
    *,
    since: str | None,
    key: str,
    keep_following: bool,
    interval: float,
    lag: float,
    count: int = 0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Deliver every exported event once, oldest first; with ``keep_following`` poll forever.

    Each poll asks for ``since`` = (newest timestamp seen - ``lag`` seconds), so an event that
    arrives late (data planes send in batches) but within ``lag`` of the newest is still
    delivered; the keys (``key`` field) already delivered within that window are skipped.

    Args:
        fetch: ``since -> NDJSON lines`` (oldest first; see :func:`lines_of`).
        deliver: Called with each new event.
        count: Stop after this many events (0: no limit).

    Returns:
        The number of events delivered.
    """
    seen: dict[Any, datetime] = {}
    newest: datetime | None = None
    delivered = 0
    cursor = since
    while True:
        for line in fetch(cursor):
            if not line.strip():
                continue
            event = orjson.loads(line)
            if event.get(key) in seen:
                continue
            stamp = datetime.fromisoformat(event["timestamp"])
            deliver(event)
            delivered += 1
            seen[event.get(key)] = stamp
            newest = stamp if newest is None or stamp > newest else newest
            if count and delivered >= count:
                return delivered
        if not keep_following:
            return delivered
        if newest is not None:
            horizon = newest - timedelta(seconds=lag)
            seen = {k: t for k, t in seen.items() if t >= horizon}
            cursor = horizon.isoformat()
        sleep(interval)


def copy_export(chunks: Iterator[bytes], out: BinaryIO) -> int:
    """Write ``chunks`` to ``out`` as they arrive; the number of bytes written."""
    written = 0
    for chunk in chunks:
        out.write(chunk)
        written += len(chunk)
    out.flush()
    return written
