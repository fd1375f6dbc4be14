"""Test ports are drawn outside the kernel's ephemeral range (outgoing connections use it)."""

from __future__ import annotations

import socket
from pathlib import Path

from gateway.devtools.stack import free_port


def test_free_ports_avoid_the_ephemeral_range_and_repeat_nothing() -> None:
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(50)]
    assert all(not low <= p <= high for p in ports)
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:  # each one can be bound right away
        s.bind(("127.0.0.1", ports[-1]))
