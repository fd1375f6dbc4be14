"""Credential brokering on the hot path: which credential a call uses, and its material.

The projection carries, per server, the bindings that apply to it: ids, subject selectors
and credential metadata (id, kind, version), never a secret. For each governed request:

1. :func:`choose` picks the binding (most specific wins: user > client > role > everyone,
   :func:`gateway.credentials.bindings.select_binding`); the policy input gets its metadata
   as ``credential`` (:func:`credential_input`), and a policy may pick another of the
   server's credentials with the obligation ``credential`` (a credential id).
2. After the decision allowed the request, :class:`CredentialBroker` resolves the chosen
   credential into :class:`~gateway.mcp.credential.UpstreamCredential` material: from its
   in-memory cache, or from the control plane's broker endpoint
   (``POST /v1/dataplane/credentials/resolve``, internal token; every resolution is audited
   there). The client's own token is never sent upstream; for ``oauth_token_exchange`` it is
   sent to the control plane, which trades it for an upstream-audience token (RFC 8693); for
   ``oauth_authorization_code`` it is sent with the caller's identity so that the broker can
   verify whose stored tokens to hand out (it never leaves the gateway), and a caller who has
   not connected their upstream account gets :class:`~gateway.errors.CredentialNotConnected`
   carrying the connect URL.

A server that requires a credential (registered with ``requires_credential``, or bound once)
refuses a caller no binding matches (``credential_required``): nothing is sent unauthenticated.

Cache: per (credential id, version[, caller token digest, or ``issuer|sub``]) for the lifetime the control plane
gives (a token's expiry less a margin; static kinds :data:`MAX_TTL`), least recently used
beyond :data:`MAX_ENTRIES`. A new projection drops every entry of a credential it no longer
references (revoked, unbound) or references at another version (rotated): revocation takes
effect on this data plane as soon as the projection arrives.

Refused material: when an HTTP upstream answers 401 to material from here, the transport
calls :meth:`CredentialBroker.renew` (the material's ``renew`` hook); for a token kind
(:data:`RENEWABLE_KINDS`; a static secret would come back the same), unless the cache already
holds other material for that key (renewed by a concurrent request), it resolves again with
``"refresh": true``, which makes the control plane fetch a new token instead of answering its
cached one, and caches what comes back in place of the refused material. At most one such
forced refresh per key (credential, version, caller) per :data:`REFRESH_INTERVAL` seconds, so
an upstream that always answers 401 cannot make every call reach the token endpoint; within
the interval the refusal is the caller's answer (``upstream_credential_rejected``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import httpx

from gateway.config import Config
from gateway.credentials.bindings import Binding, select_binding
from gateway.credentials.bindings import Subject as BindingSubject
from gateway.errors import CredentialNotConnected, CredentialUnavailable
from gateway.mcp.credential import UpstreamCredential
from gateway.policy.input import Subject

__all__ = [
    "MAX_ENTRIES",
    "MAX_TTL",
    "PER_USER_KINDS",
    "REFRESH_INTERVAL",
    "RENEWABLE_KINDS",
    "SUBJECT_TOKEN_KINDS",
    "BindingRef",
    "CredentialBroker",
    "CredentialRef",
    "CredentialResolver",
    "NoCredential",
    "SERVICE_SUBJECT",
    "background_material",
    "choose",
    "credential_input",
    "for_transport",
]

log = logging.getLogger(__name__)

MAX_TTL = 300.0
"""Most seconds resolved material is cached (also for static kinds), so a data plane cut off
from the control plane stops using a secret after this long at most."""

MAX_ENTRIES = 10_000
"""Most cached materials (least recently used dropped first)."""

REFRESH_INTERVAL = 30.0
"""Least seconds between two forced refreshes of one key after upstream 401s."""

RENEWABLE_KINDS = frozenset({"oauth_client_credentials", "oauth_token_exchange", "oauth_authorization_code"})
"""Kinds whose material a forced refresh can change (tokens); a static secret the upstream
refuses comes back the same, so it is not resolved again (rotate the credential)."""

PER_USER_KINDS = frozenset({"oauth_token_exchange", "oauth_authorization_code"})
"""Kinds whose material differs per caller: ``oauth_token_exchange`` is cached per caller
token (:data:`SUBJECT_TOKEN_KINDS`: traded for another), ``oauth_authorization_code`` per
caller identity (the control plane holds each user's own tokens; the caller's token only
proves the identity to the broker)."""
SUBJECT_TOKEN_KINDS = frozenset({"oauth_token_exchange"})
"""Per-user kinds whose material is a function of the caller's token (cached per token)."""


def _cache_key(cred: CredentialRef, subject: Subject) -> tuple[str, str, str]:
    """(credential id, version, who): who is the SHA-256 of the caller's token for
    :data:`SUBJECT_TOKEN_KINDS`, ``issuer|sub`` for the other per-user kinds, else empty."""
    token = subject.token if cred.kind in SUBJECT_TOKEN_KINDS else ""
    if token:
        who = hashlib.sha256(token.encode()).hexdigest()
    else:
        who = f"{subject.issuer}|{subject.sub}" if cred.per_user else ""
    return (cred.id, cred.version, who)


RESOLVE_PATH = "/v1/dataplane/credentials/resolve"


@dataclass(frozen=True, slots=True)
class CredentialRef:
    """A credential as the projection names it: no secret, only what identifies the material."""

    id: str
    kind: str
    version: str
    """Changes whenever the secret does (the credential's fingerprint)."""

    @property
    def per_user(self) -> bool:
        return self.kind in PER_USER_KINDS


@dataclass(frozen=True, slots=True)
class BindingRef:
    """One binding of a server: ``subject_kind`` ``user``/``client``/``role``/``everyone``."""

    id: str
    subject_kind: str
    subject_value: str | None
    credential: CredentialRef

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> BindingRef:
        """From the routing table's ``{"id", "subject": {"kind", "value"}, "credential": {"id", "kind", "version"}}``.

        Raises:
            ValueError: A malformed record.
        """
        subject, cred = record.get("subject"), record.get("credential")
        if not isinstance(subject, Mapping) or not isinstance(cred, Mapping):
            raise ValueError("binding needs subject and credential objects")
        fields = (record.get("id"), subject.get("kind"), cred.get("id"), cred.get("kind"), cred.get("version"))
        if not all(isinstance(f, str) and f for f in fields):
            raise ValueError("binding id, subject kind and credential id/kind/version must be strings")
        value = subject.get("value")
        if value is not None and not isinstance(value, str):
            raise ValueError("binding subject value must be a string or null")
        return cls(str(record["id"]), str(subject["kind"]), value, CredentialRef(*(str(f) for f in fields[2:])))


class NoCredential(Exception):
    """The server requires a credential and none applies to this caller (or the policy's
    ``credential`` obligation names none of the server's). ``category`` says which."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category


def choose(bindings: Iterable[BindingRef], subject: Subject) -> BindingRef | None:
    """The binding that applies to ``subject`` (most specific wins), None when none does."""
    by_id = {b.id: b for b in bindings}
    rows = [Binding(b.id, "", "", "", b.subject_kind, b.subject_value, b.credential.id) for b in by_id.values()]
    who = BindingSubject(subject.sub, frozenset(subject.roles), subject.client_id)
    chosen = select_binding(rows, tenant="", environment="", server="", subject=who)
    return by_id[chosen.id] if chosen is not None else None


def obligated(bindings: Iterable[BindingRef], obligations: Mapping[str, Any], chosen: BindingRef | None) -> BindingRef:
    """Apply the decision's ``credential`` obligation (a credential id of one of the server's
    bindings) to ``chosen``.

    Raises:
        NoCredential: ``credential_required`` when nothing applies; ``credential_obligation``
            when the obligation is not a credential id bound to this server.
    """
    wanted = obligations.get("credential")
    if wanted is not None:
        for binding in bindings:
            if binding.credential.id == wanted:
                return binding
        raise NoCredential(
            "credential_obligation", "The policy's credential obligation names no credential of this server"
        )
    if chosen is None:
        raise NoCredential("credential_required", "This server needs a credential and none is bound for this caller")
    return chosen


def for_transport(material: UpstreamCredential, server: str, transport: str) -> UpstreamCredential:
    """``material`` when it can authenticate a ``transport`` server: environment variables for
    ``stdio``, headers or query parameters for HTTP (the control plane refuses other bindings;
    this holds for older ones too).

    Raises:
        CredentialUnavailable: Nothing in it this transport would send: fail closed.
    """
    if not material.sends_to(transport):
        raise CredentialUnavailable(f"the credential of {server} carries nothing a {transport} upstream gets")
    return material


def credential_input(binding: BindingRef | None) -> dict[str, Any] | None:
    """The policy input's ``credential`` member: metadata only (schema ``decision_input.json``)."""
    if binding is None:
        return None
    return {
        "binding": binding.id,
        "subject_kind": binding.subject_kind,
        "id": binding.credential.id,
        "kind": binding.credential.kind,
    }


SERVICE_SUBJECT = Subject(sub="gateway", issuer="urn:gateway:dataplane")
"""Whom the data plane's own background requests (drift re-lists, list-change watches) are
made for, in the broker's audit (``credential_uses``)."""


async def background_material(
    broker: CredentialResolver | None,
    server: str,
    bindings: Iterable[BindingRef],
    *,
    required: bool,
    transport: str,
) -> UpstreamCredential | None:
    """The credential of the data plane's own requests to a server (nobody's call): the server's
    ``everyone`` binding, when it requires a credential.

    Raises:
        CredentialUnavailable: The server requires one but has no ``everyone`` binding of a kind
            that needs no caller (so no background request is made), or it could not be resolved.
    """
    bound = list(bindings)
    if not required:
        return None
    everyone = next((b for b in bound if b.subject_kind == "everyone" and not b.credential.per_user), None)
    if everyone is None or broker is None:
        raise CredentialUnavailable(f"no everyone binding of {server} for the data plane's own requests")
    return for_transport(await broker.resolve(server, everyone, SERVICE_SUBJECT), server, transport)


class CredentialResolver(Protocol):
    """What the PEP needs of the broker (:class:`CredentialBroker`; a double in unit tests)."""

    async def resolve(self, server: str, binding: BindingRef, subject: Subject) -> UpstreamCredential: ...


@dataclass(eq=False, slots=True)
class _Flight:
    """One resolution in progress and its outcome (material, or the error)."""

    done: anyio.Event = field(default_factory=anyio.Event)
    material: UpstreamCredential | None = None
    error: CredentialUnavailable | None = None
    refresh: bool = False
    """Asked the control plane for fresh material (after an upstream refused the cached one)."""
    superseded: bool = False
    """A forced refresh replaced it: its outcome is not cached."""


class CredentialBroker:
    """Resolves credentials into material, with a bounded in-memory cache.

    Args:
        config: Control-plane URL, internal token and this data plane's id.
        http: The client to the control plane.
        max_ttl: Most seconds material stays cached.
        refresh_interval: Least seconds between two forced refreshes of one key (:meth:`renew`).
    """

    def __init__(
        self,
        config: Config,
        http: httpx.AsyncClient,
        *,
        max_ttl: float = MAX_TTL,
        refresh_interval: float = REFRESH_INTERVAL,
    ) -> None:
        cp = config.control_plane
        self._url = cp.url.rstrip("/") + RESOLVE_PATH
        self._token = cp.internal_token
        self._dataplane = config.data_plane.id
        self._http = http
        self._max_ttl = max_ttl
        self._cache: OrderedDict[tuple[str, str, str], tuple[UpstreamCredential, float]] = OrderedDict()
        self._pending: dict[tuple[str, str, str], _Flight] = {}
        self._refresh_interval = refresh_interval
        self._forced: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        """Key -> monotonic time of its last forced refresh."""
        self.resolutions = 0
        """Resolutions asked of the control plane (cache misses)."""
        self.forced_refreshes = 0
        """Resolutions with ``refresh`` (after an upstream refused the material)."""

    def __len__(self) -> int:
        return len(self._cache)

    def retain(self, refs: Iterable[CredentialRef]) -> None:
        """Keep only the cached material of ``refs`` (a new projection's credentials)."""
        keep = {(r.id, r.version) for r in refs}
        for key in [k for k in self._cache if k[:2] not in keep]:
            del self._cache[key]

    async def resolve(
        self, server: str, binding: BindingRef, subject: Subject, *, refresh: bool = False
    ) -> UpstreamCredential:
        """The material of ``binding``'s credential for ``subject`` calling ``server``.

        ``refresh``: skip the cache and ask the control plane for fresh material (it fetches a
        new token rather than answering its cached one); used by :meth:`renew` only.

        Raises:
            CredentialUnavailable: The control plane could not resolve it (revoked, a
                token endpoint failed, the control plane unreachable): fail closed.
        """
        cred = binding.credential
        token = subject.token if cred.kind in SUBJECT_TOKEN_KINDS else ""
        if cred.kind in SUBJECT_TOKEN_KINDS and not token:
            raise CredentialUnavailable(f"credential {cred.id} needs the caller's token")
        if cred.per_user and not token and not (subject.issuer and subject.sub):
            raise CredentialUnavailable(f"credential {cred.id} needs the caller's identity")
        key = _cache_key(cred, subject)
        while True:
            hit = self._cache.get(key)
            if not refresh and hit is not None and hit[1] > time.monotonic():
                self._cache.move_to_end(key)
                return hit[0]
            flight = self._pending.get(key)
            if flight is None or (refresh and not flight.refresh):
                break
            # One resolution per key at a time: its outcome is everyone's. When its owner was
            # cancelled (its client left) there is none: the next waiter resolves.
            await flight.done.wait()
            if flight.material is not None:
                return flight.material
            if isinstance(flight.error, CredentialNotConnected):  # the same link for the same caller
                raise CredentialNotConnected(str(flight.error), connect_url=flight.error.connect_url)
            if flight.error is not None:
                raise CredentialUnavailable(str(flight.error))
        if flight is not None:  # a plain resolution under way may answer the refused material
            flight.superseded = True
        flight = self._pending[key] = _Flight(refresh=refresh)
        try:
            material, ttl = await self._ask(server, binding, subject, token, refresh=refresh)
            material = dataclasses.replace(material, renew=self._renewer(server, binding, subject))
            flight.material = material
        except CredentialUnavailable as exc:
            flight.error = exc
            raise
        finally:
            if self._pending.get(key) is flight:
                del self._pending[key]
            flight.done.set()
        if flight.superseded:
            return material
        self._cache[key] = (material, time.monotonic() + min(ttl, self._max_ttl))
        while len(self._cache) > MAX_ENTRIES:
            self._cache.popitem(last=False)
        return material

    def _renewer(
        self, server: str, binding: BindingRef, subject: Subject
    ) -> Callable[[UpstreamCredential], Awaitable[UpstreamCredential | None]]:
        async def renew(refused: UpstreamCredential) -> UpstreamCredential | None:
            return await self.renew(server, binding, subject, refused)

        return renew

    async def renew(
        self, server: str, binding: BindingRef, subject: Subject, refused: UpstreamCredential
    ) -> UpstreamCredential | None:
        """Other material for ``subject``'s use of ``binding`` after an upstream refused
        ``refused`` (HTTP 401): what the cache holds if it differs (renewed meanwhile), else
        a forced refresh (:meth:`resolve` with ``refresh``), at most one per key per
        ``refresh_interval`` seconds. None when none is allowed yet, or it failed (then the
        refused material is dropped, so the next call resolves afresh).
        """
        cred = binding.credential
        if cred.kind not in RENEWABLE_KINDS:
            return None
        key = _cache_key(cred, subject)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now and not hit[0].same_material(refused):
            return hit[0]
        flight = self._pending.get(key)
        if flight is None or not flight.refresh:  # else join the refresh under way
            last = self._forced.get(key)
            if last is not None and now - last < self._refresh_interval:
                log.warning(
                    "credential %s refused upstream by %s again within %.0f s: not refreshed",
                    cred.id,
                    server,
                    self._refresh_interval,
                )
                return None
            self._forced[key] = now
            self._forced.move_to_end(key)
            while len(self._forced) > MAX_ENTRIES:
                self._forced.popitem(last=False)
            self.forced_refreshes += 1
            log.info("credential %s refused upstream by %s: asking for fresh material", cred.id, server)
        try:
            return await self.resolve(server, binding, subject, refresh=True)
        except CredentialUnavailable as exc:
            log.warning("credential %s: no fresh material (%s)", cred.id, exc.category)
            hit = self._cache.get(key)
            if hit is not None and hit[0].same_material(refused):
                del self._cache[key]
            return None

    async def _ask(
        self, server: str, binding: BindingRef, subject: Subject, token: str, *, refresh: bool = False
    ) -> tuple[UpstreamCredential, float]:
        cred = binding.credential
        body: dict[str, Any] = {
            "credential_id": cred.id,
            "version": cred.version,
            "binding_id": binding.id,
            "server": server,
            "dataplane_id": self._dataplane,
            "subject": {"sub": subject.sub, "issuer": subject.issuer, "client_id": subject.client_id},
        }
        if token:
            body["subject_token"] = token
        elif cred.kind == "oauth_authorization_code" and subject.token:
            # Not for the material (the control plane holds the user's own tokens) but as proof
            # of who is calling: the broker verifies it and never takes ``subject`` on our word.
            body["subject_token"] = subject.token
        if refresh:  # an upstream refused the material we had: not the control plane's cached token
            body["refresh"] = True
        self.resolutions += 1
        try:
            resp = await self._http.post(
                self._url, json=body, headers={"authorization": f"Bearer {self._token.reveal()}"}, timeout=15.0
            )
        except httpx.HTTPError as exc:
            raise CredentialUnavailable(
                f"credential {cred.id}: control plane unreachable ({type(exc).__name__})"
            ) from None
        if resp.status_code == 409 and _category(resp) == CredentialNotConnected.category:
            url = _connect_url(resp)
            if url is not None:
                raise CredentialNotConnected(f"credential {cred.id}: the caller has not connected", connect_url=url)
        if resp.status_code != 200:
            category = _category(resp)
            raise CredentialUnavailable(f"credential {cred.id}: control plane answered {resp.status_code} {category}")
        try:
            data = resp.json()
            # A session is per identity: per user for per-user kinds, and per caller token for
            # token exchange (two clients of one user hold different tokens, so different
            # exchanged tokens: one session each, never one swapping the other's in).
            who = f"/{subject.issuer}|{subject.sub}" if cred.per_user else ""
            if token:
                who += "|" + hashlib.sha256(token.encode()).hexdigest()[:16]
            material = UpstreamCredential(
                cred.id + "@" + cred.version + who,
                _strings(data.get("headers")),
                _strings(data.get("query")),
                _strings(data.get("env")),
            )
            ttl = float(data.get("expires_in", self._max_ttl))
        except (ValueError, TypeError, AttributeError):
            raise CredentialUnavailable(f"credential {cred.id}: malformed broker answer") from None
        return material, max(0.0, ttl)


def _strings(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("not a string map")
    return dict(value)


def _category(resp: httpx.Response) -> str:
    try:
        category = resp.json().get("error")  # the control plane's {"error": <category>, "message", ...}
    except (ValueError, AttributeError):
        return "unknown"
    return category if isinstance(category, str) and category.isidentifier() else "unknown"


def _connect_url(resp: httpx.Response) -> str | None:
    """The broker's ``connect_url`` (an absolute http(s) URL of printable ASCII), else None."""
    try:
        url = resp.json().get("connect_url")
    except (ValueError, AttributeError):
        return None
    ok = isinstance(url, str) and len(url) <= 2048 and url.startswith(("https://", "http://")) and url.isascii()
    return url if ok and url.isprintable() and " " not in url else None
