"""Shared by the credentials tests: canary secrets, their encodings, KEKs, and a body of every kind."""

from __future__ import annotations

import base64
import os
from typing import Any

CANARY = "canary-7f3c2b9e-SECRET"
"""Planted in secrets; must never show up outside the ciphertext."""


def canary(tag: str) -> str:
    """A distinct canary per field (``canary-7f3c2b9e-SECRET-<tag>``), all sharing :data:`CANARY`."""
    return f"{CANARY}-{tag}"


def encodings(secret: str | bytes) -> list[bytes]:
    """``secret`` as it could leak: raw, hex (both cases), and base64 at all three byte alignments.

    A base64 run inside a longer value depends on the offset mod 3, so each alignment's
    stable middle part is checked (the characters straddling the edges are dropped).
    """
    raw = secret.encode() if isinstance(secret, str) else secret
    forms = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for pad in range(3):
        encoded = base64.b64encode(b"\x00" * pad + raw)
        forms.append(encoded[4 if pad else 0 : -4])
        forms.append(base64.urlsafe_b64encode(b"\x00" * pad + raw)[4 if pad else 0 : -4])
    return forms


def new_kek() -> str:
    """The base64 of 32 fresh random bytes."""
    return base64.b64encode(os.urandom(32)).decode()


def bodies(name_prefix: str = "c") -> list[dict[str, Any]]:
    """One creation body of every kind, each secret value a distinct canary."""
    return [
        {"name": f"{name_prefix}-bearer", "kind": "bearer", "secret": {"token": canary("bearer")}},
        {
            "name": f"{name_prefix}-headers",
            "kind": "headers",
            "secret": {"headers": {"X-Api-Key": canary("header"), "X-Other": canary("other")}},
        },
        {"name": f"{name_prefix}-query", "kind": "query", "secret": {"params": {"api_key": canary("query")}}},
        {"name": f"{name_prefix}-env", "kind": "stdio_env", "secret": {"env": {"API_TOKEN": canary("env")}}},
        {
            "name": f"{name_prefix}-cc",
            "kind": "oauth_client_credentials",
            "config": {"token_url": "https://idp.example.com/token", "client_id": "gw", "scope": "read write"},
            "secret": {"client_secret": canary("cc")},
        },
        {
            "name": f"{name_prefix}-tx",
            "kind": "oauth_token_exchange",
            "config": {
                "token_url": "https://idp.example.com/token",
                "client_id": "gw",
                "audience": "https://api.example.com",
                "auth_method": "client_secret_post",
                "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
            },
            "secret": {"client_secret": canary("tx")},
        },
    ]
