"""What the gateway presents to an upstream on a caller's behalf: brokered credential material.

The data plane resolves a credential (``gateway.dataplane.credentials``) into an
:class:`UpstreamCredential`; the upstream transports apply it to every request they make:
headers and query parameters on streamable HTTP and legacy SSE (the ``GET`` stream, the
message ``POST``s, resumption and ``DELETE`` alike), environment variables on stdio (set
when the process starts). The material never appears in a ``repr``, a log line or an error.

**Refused material.** An HTTP upstream that answers **401** to a request sent with brokered
material did not process it (RFC 9110 section 15.5.2): the transport asks the material's
``renew`` hook (set by the data plane's broker) once for other material, and when it gets
some, sends the request once more with it; otherwise, or when that is refused too, the
request fails with :class:`UpstreamCredentialRejected`. Never more than one retry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from gateway.errors import UpstreamCredentialRejected, UpstreamError

__all__ = ["UpstreamCredential", "UpstreamCredentialRejected", "adopt_renewal", "renewed", "with_query"]


@dataclass(frozen=True, slots=True, repr=False)
class UpstreamCredential:
    """Credential material for one upstream and caller.

    Attributes:
        key: Non-secret identity of the material's source: ``<credential id>@<version>``
            (plus ``/<subject>`` for per-user kinds). Upstream sessions are keyed by it, so
            two identities never share a session; a token refreshed under the same key keeps
            the session and is sent from the next request on.
        headers: Header name (lower case) -> value, e.g. ``{"authorization": "Bearer ..."}``.
        query: Query parameter name -> value, added to the upstream URL.
        env: Environment variables of a stdio upstream's process.
        renew: Called with this material when an upstream refused it (HTTP 401): other
            material of the same key (a token fetched anew), or None when there is none to
            try (its source refreshes at most once per interval). Not part of equality.
    """

    key: str
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    renew: Callable[[UpstreamCredential], Awaitable[UpstreamCredential | None]] | None = field(
        default=None, compare=False
    )

    def same_material(self, other: UpstreamCredential) -> bool:
        """True when ``other`` would send exactly what this sends."""
        return (self.headers, self.query, self.env) == (other.headers, other.query, other.env)

    def sends_to(self, transport: str) -> bool:
        """True when a ``transport`` upstream would get something of it: environment variables
        for ``stdio``, headers or query parameters for HTTP."""
        return bool(self.env if transport == "stdio" else (self.headers or self.query))

    def __repr__(self) -> str:
        names = sorted({*self.headers, *self.query, *self.env})
        return f"UpstreamCredential(key={self.key!r}, fields={names!r})"

    __str__ = __repr__


async def renewed(refused: UpstreamCredential | None) -> UpstreamCredential | None:
    """Other material to send instead of ``refused`` (which an upstream answered 401), or None.

    None when there is no hook, the hook has nothing new, or it failed (a
    :class:`~gateway.errors.CredentialUnavailable`, logged by its source): the caller then
    reports the refusal.
    """
    if refused is None or refused.renew is None:
        return None
    try:
        fresh = await refused.renew(refused)
    except UpstreamError:
        return None
    if fresh is None or fresh.key != refused.key or fresh.same_material(refused):
        return None
    return fresh


async def adopt_renewal(
    refused: UpstreamCredential,
    current: Callable[[], UpstreamCredential | None],
    use: Callable[[UpstreamCredential], None],
) -> bool:
    """After a 401 to ``refused``: :func:`renewed` material, given to ``use`` unless a concurrent
    request already replaced ``refused`` (``current()`` holds other material); False when there
    is none to try (the caller reports the refusal)."""
    fresh = await renewed(refused)
    if fresh is None:
        return False
    now = current()
    if now is None or now.same_material(refused):  # not renewed by a concurrent request
        use(fresh)
    return True


def with_query(url: str, query: Mapping[str, str]) -> str:
    """``url`` with ``query`` added to its query string (a parameter it already has is replaced).

    Example::

        with_query("http://h/mcp?x=1", {"api_key": "k"}) == "http://h/mcp?x=1&api_key=k"
    """
    if not query:
        return url
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in query]
    return urlunsplit(parts._replace(query=urlencode([*kept, *query.items()])))
