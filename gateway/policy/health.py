"""OPA readiness for the data plane's ``/readyz`` (OPA Health API, ``GET /health?bundles``).

Uses ``opa-python-client`` (a synchronous ``requests`` client) off the event
loop in a worker thread: readiness probes are rare, so the hot path keeps its
own client (:mod:`gateway.httpclient`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import anyio
from opa_client.opa import OpaClient

__all__ = ["OpaHealth"]


class OpaHealth:
    """Ask an OPA server whether it is up and has activated its bundles.

    Args:
        url: OPA base URL, e.g. ``http://127.0.0.1:8181``.
        timeout: Seconds per probe.
    """

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        parts = urlsplit(url)
        self._client = OpaClient(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 8181,
            ssl=parts.scheme == "https",
            timeout=timeout,
        )

    async def bundles_ready(self) -> bool:
        """True when ``GET /health?bundles`` answers 200 (every configured bundle activated once)."""
        return await anyio.to_thread.run_sync(lambda: self._client.check_health({"bundles": True}))

    def close(self) -> None:
        """Close the probe's HTTP session."""
        self._client.close_connection()
