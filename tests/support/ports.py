"""Loopback port helpers."""

from __future__ import annotations

import socket

from gateway.devtools.stack import free_port

__all__ = ["free_port", "port_open"]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
