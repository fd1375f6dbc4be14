"""One typed configuration, loaded and validated once at start-up.

Sources, lowest to highest precedence: defaults, a TOML file
(``GATEWAY_CONFIG`` or ``--config``), environment variables. Nothing else in
the gateway reads ``os.environ``.

Example TOML (every key optional; the environment variable overriding each
key is given in :data:`ENV_KEYS`)::

    database_url = "postgresql://gateway:gateway@127.0.0.1:5432/gateway"
    tenant = "tenant_local"
    environment = "prod"

    [control_plane]
    port = 8080
    admin_token = "change-me"

    [data_plane]
    port = 8081

    [jwt]
    issuer = "https://idp.example.com"
    audience = "https://gateway.example.com/mcp"
    jwks_url = "https://idp.example.com/.well-known/jwks.json"
    roles_claim = "roles"

    [opa]
    bin = "/usr/local/bin/opa"
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import math
import os
import re
import shutil
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import ConfigError

__all__ = [
    "ENV_KEYS",
    "MIB",
    "SECONDS",
    "AuditConfig",
    "BundleSigningConfig",
    "Config",
    "ControlPlaneConfig",
    "CredentialsConfig",
    "DataPlaneConfig",
    "JwtConfig",
    "OpaConfig",
    "PolicyGateConfig",
    "Secret",
    "derived_token",
    "session_key_bytes",
]

SECONDS = 1.0
"""Unit for durations (floats, in seconds)."""
MIB = 1024 * 1024
"""Unit for sizes (ints, in bytes)."""

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The source checkout (for the default ``.run`` directory and ``.tools/bin/opa``)."""

EMBEDDED_OPA_LIB = PROJECT_ROOT / ".tools" / "lib" / "libopa-embedded.so"
"""Where ``make tools`` builds the embedded OPA engine (``deploy/opa/embedded``)."""


class Secret:
    """A string whose ``repr``/``str`` never shows the value.

    Use ``.reveal()`` at the single place the value is needed.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ControlPlaneConfig:
    """Control plane (system of record) listener and credentials."""

    host: str = "127.0.0.1"
    port: int = 8080
    admin_token: Secret = field(default_factory=lambda: Secret(""))
    internal_token: Secret = field(default_factory=lambda: Secret(""))
    """Bearer token data planes present to the control plane (``/v1/dataplane/*``, the
    credential broker among them, and ``/v1/audit/events``); derived from the admin token
    (HMAC-SHA256) when not set."""
    opa_token: Secret = field(default_factory=lambda: Secret(""))
    """Bearer token OPA sidecars present to the control plane; it opens ``/v1/opa/*``
    (bundles, status, decision logs) only, so a sidecar never holds the token of the
    credential broker. Derived from the internal token (HMAC-SHA256, another label) when not
    set; must differ from the internal and admin tokens."""
    url: str = ""
    """Base URL data planes and OPA use to reach the control plane."""
    public_url: str = ""
    """Base URL users' browsers reach the control plane at: per-user OAuth connect links
    (``<public_url>/v1/oauth/connect/...``) and the OAuth redirect URI
    (``<public_url>/v1/oauth/callback/<key>``). Default: ``url``."""
    long_poll_timeout: float = 30 * SECONDS
    discovery_timeout: float = 10 * SECONDS
    """Bound on listing an upstream's tools at approval time."""


@dataclass(frozen=True)
class DataPlaneConfig:
    """Data plane (hot path) listener."""

    host: str = "127.0.0.1"
    port: int = 8081
    public_url: str = ""
    """Canonical URL clients use; the RFC 9728 ``resource`` is ``<public_url>/mcp``."""
    id: str = ""
    """Id reported to the control plane; also names the audit spool and the OPA
    work directory, so it must be stable across restarts. Defaults to
    ``dp-<hostname>-<data port>``."""
    max_body: int = 4 * MIB
    upstream_timeout: float = 30 * SECONDS
    """Seconds an upstream exchange may stay idle: no answer and no message about it
    (progress, a log message, a request of the client) for that long is ``upstream_timeout``."""
    upstream_max_duration: float = 600 * SECONDS
    """Seconds an upstream exchange may take at most, however much progress it reports."""
    upstream_sessions: int = 1000
    """Most per-caller upstream sessions a data plane keeps open (least recently used closed first)."""
    drift_interval: float = 60 * SECONDS
    """Seconds between re-lists of each approved server's tools to detect drift from the
    pinned definitions (:mod:`gateway.dataplane.drift`); ``0`` turns the check off."""
    session_idle_timeout: float = 30 * 60 * SECONDS
    """Seconds a quiet handshake-era session's local state (listener, subscriptions) is kept;
    a sealed session's next request resumes it (:mod:`gateway.dataplane.sessions`)."""
    max_sessions: int = 10_000
    session_key: Secret = field(default_factory=lambda: Secret(""))
    """Base64 of 32 random bytes sealing session ids (AES-256-GCM,
    :mod:`gateway.dataplane.session_seal`); every data plane of a deployment needs the same one
    to resume the others' sessions. Default: derived from the internal token (HMAC-SHA256,
    label ``gateway-session-seal``). Changing it ends every session (clients get 404 and
    initialize again)."""
    session_max_age: float = 24 * 3600 * SECONDS
    """Seconds after ``initialize`` a sealed session's id stops opening: the session is over."""
    session_events_interval: float = 1 * SECONDS
    """Seconds between polls of the session events feed (how soon a ``DELETE`` taken by another
    data plane holds here: :mod:`gateway.dataplane.session_events`)."""
    sse_poll_interval: float = 0.0
    """Seconds a handshake-era request's SSE stream stays open before the gateway closes it
    and lets the client poll (reconnect with ``GET`` + ``Last-Event-ID``, MCP 2025-11-25
    SEP-1699); a request still running after it is answered as such a stream. ``0`` never
    closes (streams last until the response). Set it below the idle timeout of any proxy or
    load balancer in front of the data plane."""
    sse_retry: float = 1.0
    """Seconds a client waits before reconnecting to a stream (the SSE ``retry`` field of a
    stream's priming event)."""
    sse_resume_window: float = 60 * SECONDS
    """Seconds a handshake-era request's SSE stream waits for its client to reconnect after a
    disconnect; then the request is cancelled (the upstream is told) and its events dropped."""
    http_client: str = "aiohttp"
    """Hot-path HTTP client backend to OPA and upstreams: ``aiohttp`` or ``httpx``."""
    api_key_failure_burst: int = 10
    """Failed API-key attempts a client address (and, separately, a key id) may make in a
    row before further attempts are refused unchecked with 429 (:mod:`gateway.dataplane.api_keys`)."""
    api_key_failure_interval: float = 6 * SECONDS
    """Seconds after which one more failed attempt is allowed again (the bucket's refill)."""
    allowed_hosts: tuple[str, ...] = ()
    """``Host`` header values (``host[:port]``, case-insensitive) the data plane answers;
    any other gets 421 (DNS-rebinding protection, MCP 2025-11-25 ``basic/transports``
    "Security Warning"). Default: the ``public_url`` authority (with and without its
    scheme's default port), ``<host>:<port>`` of the listener, and — when the listener is
    loopback or all interfaces — ``127.0.0.1``, ``localhost`` and ``[::1]`` with the data
    port only (``GATEWAY_ALLOWED_HOSTS``, comma-separated)."""
    allowed_origins: tuple[str, ...] = ()
    """``Origin`` header values (``scheme://host[:port]``) accepted; a request with any
    other ``Origin`` gets 403, one without ``Origin`` passes. Default: the ``public_url``
    origin and, when the listener is loopback or all interfaces, ``http://127.0.0.1``,
    ``http://localhost`` and ``http://[::1]`` with the data port only
    (``GATEWAY_ALLOWED_ORIGINS``, comma-separated)."""


@dataclass(frozen=True)
class JwtConfig:
    """Bearer JWT verification (RFC 7519, RFC 7517, RFC 9068): of every caller by the data
    plane, and of the caller's token a data plane forwards to the control plane's credential
    broker for a per-user OAuth credential (the same rules, :mod:`gateway.jwtauth`)."""

    issuer: str = ""
    audience: str = ""
    jwks_url: str = ""
    """``http(s)://`` or ``file://`` JWKS."""
    roles_claim: str = "roles"
    """Claim holding the caller's roles: a list of strings, or a space-separated string."""
    scopes_claim: str = "scope"
    """Claim holding the caller's scopes: a space-separated string (RFC 8693 §4.2) or a list."""
    groups_claim: str = "groups"
    """Claim holding the caller's groups: a list of strings, or one string (one group)."""
    algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256", "EdDSA")
    leeway: float = 30 * SECONDS
    cache_size: int = 4096
    """Verified tokens kept (by SHA-256 of the token) until they expire."""
    jwks_refresh_interval: float = 30 * SECONDS
    """Least time between two JWKS fetches triggered by an unknown ``kid`` (key rotation)."""
    jwks_unknown_kid_ttl: float = 300 * SECONDS
    """How long a ``kid`` still unknown after a fetch is refused without fetching again."""

    @property
    def configured(self) -> bool:
        """True when issuer, audience and JWKS URL are all set (always so for a data plane)."""
        return bool(self.issuer and self.audience and self.jwks_url)


@dataclass(frozen=True)
class OpaConfig:
    """The OPA engine the data plane asks for decisions: a sidecar process or in-process."""

    engine: str = "sidecar"
    """``sidecar`` (``opa run --server``, asked over HTTP) or ``embedded`` (the same OPA, built
    as a shared library and loaded into the gateway process: :mod:`gateway.policy.embedded`)."""
    embedded_lib: str = ""
    """The embedded engine's shared library (default ``.tools/lib/libopa-embedded.so``)."""
    bin: str = ""
    manage: bool = True
    """Start and supervise ``opa run`` as a child process of the gateway."""
    instance_id: str = ""
    """With ``manage = false``: the id of the OPA this data plane asks (its ``gateway_instance``
    label, e.g. the Kubernetes pod name). Reported to the control plane at start, which
    registers it as an instance that has activated nothing yet, so ``GET /v1/projection`` never
    shows a version active before that OPA has loaded it (``GATEWAY_OPA_INSTANCE_ID``)."""
    addr: str = "127.0.0.1:8181"
    url: str = ""
    timeout: float = 2 * SECONDS
    work_dir: str = ""
    bundle_name: str = "gateway"
    long_poll_timeout: int = 30
    decision_log_min_delay: int = 1
    decision_log_max_delay: int = 2


@dataclass(frozen=True)
class AuditConfig:
    """Runtime audit shipping from the data plane to the control plane."""

    batch_size: int = 256
    flush_interval: float = 0.5 * SECONDS
    queue_max: int = 100_000
    spool_dir: str = ""
    """Where events go when the queue is full or the control plane is down."""
    partition_interval: str = "day"
    """Time partitions of the audit tables (control plane): ``day``, ``week`` or ``month``."""
    retention_days: int = 0
    """Drop audit partitions wholly older than this many days (0: keep everything)."""
    checkpoint_interval: float = 60 * SECONDS
    """How often the control plane signs a checkpoint of the audit chains' heads (when they moved)."""
    maintenance_interval: float = 300 * SECONDS
    """How often the control plane creates upcoming partitions and applies retention."""
    signing_key_file: str = ""
    """Ed25519 private key (PKCS#8 PEM) that signs checkpoints; default: a development key
    generated under ``<run_dir>/audit-signing``."""
    verification_keys: tuple[str, ...] = ()
    """Public keys (PEM files) of earlier checkpoint signing keys, still trusted by verification."""


@dataclass(frozen=True)
class AdminConfig:
    """Who may use the admin API, and the control plane's own policy engine
    (docs/admin-identity.md).

    Admins present either the bootstrap admin token (``control_plane.admin_token``; every role;
    switched off with ``token_enabled = false``) or a JWT of an admin issuer: ``jwt_issuer``
    (with ``jwt_audience`` and ``jwks_url``) and optionally a second one (``second_*``). Roles
    come from the ``roles_claim`` claim and from role grants stored by the control plane.
    """

    token_enabled: bool = True
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwks_url: str = ""
    roles_claim: str = "roles"
    second_issuer: str = ""
    second_audience: str = ""
    second_jwks_url: str = ""

    def issuers(self) -> list[JwtConfig]:
        """The configured admin JWT issuers (0, 1 or 2), as :class:`JwtConfig`."""
        out = []
        for issuer, audience, jwks in (
            (self.jwt_issuer, self.jwt_audience, self.jwks_url),
            (self.second_issuer, self.second_audience, self.second_jwks_url),
        ):
            if issuer or audience or jwks:
                out.append(JwtConfig(issuer=issuer, audience=audience, jwks_url=jwks, roles_claim=self.roles_claim))
        return out


@dataclass(frozen=True)
class PolicyGateConfig:
    """The gate a policy version must pass to be approved (activated or rolled back to);
    README "Tested policy versions". Evaluated at approval time against the check results
    stored with the version at upload, so changing the gate applies to older versions too."""

    min_coverage: float = 0.0
    """Least coverage of the version's non-test modules by its own tests, in percent (0-100);
    ``0`` turns the coverage gate off. Above 0, a version without tests fails the gate."""
    tests_pass: bool = True
    """A version whose tests failed, errored or did not complete fails the gate; a version
    without tests passes it."""


@dataclass(frozen=True)
class CredentialsConfig:
    """Where the key-encryption keys (KEKs) of stored upstream credentials come from.

    Each key is the standard (or URL-safe) base64 of exactly 32 random bytes, e.g.
    ``openssl rand -base64 32``. The current KEK comes from ``kek_file``
    (``GATEWAY_CREDENTIALS_KEK_FILE``) or ``kek`` (``GATEWAY_CREDENTIALS_KEK``), never both;
    ``kek_previous_files`` (``GATEWAY_CREDENTIALS_KEK_PREVIOUS_FILES``, comma-separated) are
    older KEKs still accepted for unwrapping until ``POST /v1/credentials/rewrap`` has moved
    every data key to the current one. No KEK: the credentials API answers 503. The files are
    read (and refused when the group or others may access them) by
    :func:`gateway.credentials.load_keyring`; see docs/credentials.md.
    """

    kek_file: str = ""
    kek: Secret = field(default_factory=lambda: Secret(""))
    kek_previous_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class BundleSigningConfig:
    """Signed OPA bundles (:mod:`gateway.policy.bundle_signing`, README "Signed bundles").

    The control plane signs every bundle with the private key from ``key_file``
    (``GATEWAY_BUNDLE_SIGNING_KEY_FILE``) or ``key`` (``GATEWAY_BUNDLE_SIGNING_KEY``, the PEM
    itself), never both; with neither it generates a development key under
    ``<run_dir>/bundle-signing``. RSA >= 2048 bits (RS256), EC P-256/384/521 (ES256/384/512)
    or Ed25519 (EdDSA). ``key_id`` (``GATEWAY_BUNDLE_SIGNING_KEY_ID``) is the JWS ``kid``;
    default: the key's RFC 7638 thumbprint. A data plane's OPA trusts ``verification_keys``
    (``GATEWAY_BUNDLE_VERIFICATION_KEYS``, comma-separated ``<key id>=<PEM file>`` or
    ``<PEM file>``, id then the thumbprint), else the signing key's public half.
    """

    key_file: str = ""
    key: Secret = field(default_factory=lambda: Secret(""))
    key_id: str = ""
    verification_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """The whole gateway configuration (frozen; build with ``from_env``)."""

    database_url: Secret = field(default_factory=lambda: Secret(""))
    tenant: str = "tenant_local"
    environment: str = "prod"
    plane: str = "both"
    """``both``, ``control`` or ``data``."""
    server: str = "uvicorn"
    """ASGI server: ``uvicorn`` (httptools + uvloop) or ``hypercorn`` (asyncio, h11); ``make bench``
    measures both — uvicorn added about 30% less latency and served more req/s here."""
    run_dir: str = ""
    log_level: str = "INFO"
    """``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``; ``DEBUG`` also lets the HTTP client and
    server libraries log (every line still passes :mod:`gateway.logredact`)."""
    log_format: str = "text"
    """``text`` (one human-readable line per record) or ``json`` (one JSON object per record
    with ``ts``, ``level``, ``logger``, ``msg``, plus one access line per request carrying its
    decision id and trace id: :mod:`gateway.observability.logjson`)."""
    metrics_token: Secret = field(default_factory=lambda: Secret(""))
    """Bearer token ``GET /metrics`` requires on both planes (then the data plane's ``Host``
    check is skipped for it); empty: ``/metrics`` is open, behind the data plane's ``Host``
    check (docs/operations.md "Metrics and traces")."""
    otlp_endpoint: str = ""
    """OTLP/HTTP collector base URL (``http://collector:4318``; ``/v1/traces`` is appended unless
    present) the data plane exports traces to; empty: tracing off, at no cost
    (``GATEWAY_OTLP_ENDPOINT``, else the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``)."""
    max_header_bytes: int = 32 * 1024
    """Bytes (request line plus header fields) a request head may take on either server;
    a larger head gets 431 and the connection is closed."""
    header_timeout: float = 10 * SECONDS
    """Seconds from a connection's start (or a request's first byte) until its head is
    complete; a slower client gets 408 (uvicorn) or is disconnected (hypercorn, whose
    single idle timer also closes idle keep-alive connections after this long)."""
    body_timeout: float = 30 * SECONDS
    """Seconds from the application's first read of a request body until all of it has
    arrived; a slower client gets 408 and the connection is closed."""
    control_plane: ControlPlaneConfig = field(default_factory=ControlPlaneConfig)
    data_plane: DataPlaneConfig = field(default_factory=DataPlaneConfig)
    jwt: JwtConfig = field(default_factory=JwtConfig)
    opa: OpaConfig = field(default_factory=OpaConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    credentials: CredentialsConfig = field(default_factory=CredentialsConfig)
    policy_gate: PolicyGateConfig = field(default_factory=PolicyGateConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    bundle_signing: BundleSigningConfig = field(default_factory=BundleSigningConfig)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        toml_path: str | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> Config:
        """Build from defaults, an optional TOML file, the environment and overrides.

        Args:
            environ: Variables to read (defaults to ``os.environ``).
            toml_path: TOML file; ``GATEWAY_CONFIG`` is used when omitted.
            overrides: Dotted keys (e.g. ``{"plane": "data"}``) applied last, before
                validation — command-line flags.

        Raises:
            ConfigError: A value is missing, malformed or inconsistent.
        """
        env = dict(os.environ if environ is None else environ)
        path = toml_path or env.get("GATEWAY_CONFIG")
        data: dict[str, Any] = {}
        if path:
            try:
                data = tomllib.loads(Path(path).read_text())
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        for env_key, dotted in ENV_KEYS.items():
            if env_key in env and env[env_key] != "":
                _set_dotted(data, dotted, env[env_key])
        for dotted, value in (overrides or {}).items():
            _set_dotted(data, dotted, value)
        return cls.from_mapping(data)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Config:
        """Build from a nested mapping shaped like the TOML file.

        Raises:
            ConfigError: Unknown keys, wrong types or inconsistent values.
        """
        try:
            sections = {
                "control_plane": _build(ControlPlaneConfig, data.get("control_plane", {})),
                "data_plane": _build(DataPlaneConfig, data.get("data_plane", {})),
                "jwt": _build(JwtConfig, data.get("jwt", {})),
                "opa": _build(OpaConfig, data.get("opa", {})),
                "audit": _build(AuditConfig, data.get("audit", {})),
                "credentials": _build(CredentialsConfig, data.get("credentials", {})),
                "policy_gate": _build(PolicyGateConfig, data.get("policy_gate", {})),
                "admin": _build(AdminConfig, data.get("admin", {})),
                "bundle_signing": _build(BundleSigningConfig, data.get("bundle_signing", {})),
            }
            top = {k: v for k, v in data.items() if k not in sections}
            cfg: Config = _build(cls, top, extra=sections)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid configuration: {exc}") from exc
        return cfg._resolved()

    def _resolved(self) -> Config:
        if self.plane not in ("both", "control", "data"):
            raise ConfigError(f"plane must be both, control or data, not {self.plane!r}")
        if self.data_plane.http_client not in ("aiohttp", "httpx"):
            raise ConfigError(f"GATEWAY_HTTP_CLIENT must be aiohttp or httpx, not {self.data_plane.http_client!r}")
        if self.server not in ("hypercorn", "uvicorn"):
            raise ConfigError(f"GATEWAY_SERVER must be hypercorn or uvicorn, not {self.server!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"GATEWAY_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not {self.log_level!r}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"GATEWAY_LOG_FORMAT must be text or json, not {self.log_format!r}")
        otlp = urlsplit(self.otlp_endpoint) if self.otlp_endpoint else None
        if otlp is not None and (otlp.scheme not in ("http", "https") or not otlp.hostname):
            raise ConfigError("GATEWAY_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_ENDPOINT) must be an http(s) URL")
        if not 1024 <= self.max_header_bytes <= 16 * MIB:
            raise ConfigError("GATEWAY_MAX_HEADER_BYTES must be between 1024 and 16 MiB")
        if not (0 < self.header_timeout < math.inf and 0 < self.body_timeout < math.inf):
            raise ConfigError("GATEWAY_HEADER_TIMEOUT and GATEWAY_BODY_TIMEOUT must be positive seconds")
        if not 0 <= self.policy_gate.min_coverage <= 100:
            raise ConfigError("GATEWAY_POLICY_GATE_MIN_COVERAGE must be a percentage between 0 and 100")
        dp = self.data_plane
        if not (
            0 <= dp.sse_poll_interval < math.inf and 0 <= dp.sse_retry <= 3600 and 0 < dp.sse_resume_window < math.inf
        ):
            raise ConfigError(
                "GATEWAY_SSE_POLL_INTERVAL (0 = off) and GATEWAY_SSE_RETRY must be seconds >= 0 (retry at most 3600),"
                " GATEWAY_SSE_RESUME_WINDOW positive seconds"
            )
        if not (1 <= dp.api_key_failure_burst <= 10_000 and 0 < dp.api_key_failure_interval <= 86_400):
            raise ConfigError(
                "GATEWAY_API_KEY_FAILURE_BURST must be 1..10000 attempts, GATEWAY_API_KEY_FAILURE_INTERVAL 0..86400 s"
            )
        run_dir = self.run_dir or str(PROJECT_ROOT / ".run")
        cp = self.control_plane
        if self.plane in ("both", "control"):
            for issuer in self.admin.issuers():
                if not issuer.configured:
                    raise ConfigError(
                        "an admin JWT issuer needs its issuer, audience and JWKS URL (GATEWAY_ADMIN_JWT_ISSUER, "
                        "GATEWAY_ADMIN_JWT_AUDIENCE, GATEWAY_ADMIN_JWKS_URL; GATEWAY_ADMIN_SECOND_*)"
                    )
            if not self.admin.token_enabled and not self.admin.issuers():
                raise ConfigError(
                    "GATEWAY_ADMIN_TOKEN_ENABLED=false needs an admin JWT issuer (GATEWAY_ADMIN_JWT_ISSUER), "
                    "else nobody can use the admin API"
                )
            if not self.database_url:
                raise ConfigError("DATABASE_URL is required for the control plane")
            if not cp.admin_token:
                raise ConfigError("GATEWAY_ADMIN_TOKEN is required for the control plane")
        internal = cp.internal_token
        if not internal and cp.admin_token:
            internal = derived_token(cp.admin_token, "gateway-internal-token")
        if not internal:
            raise ConfigError("GATEWAY_INTERNAL_TOKEN (or GATEWAY_ADMIN_TOKEN) is required")
        opa_token = cp.opa_token or derived_token(internal, OPA_TOKEN_LABEL)
        if opa_token in (internal, cp.admin_token):
            raise ConfigError("GATEWAY_OPA_TOKEN must differ from GATEWAY_INTERNAL_TOKEN and GATEWAY_ADMIN_TOKEN")
        cp = dataclasses.replace(
            cp,
            internal_token=internal,
            opa_token=opa_token,
            url=(cp.url or f"http://{cp.host}:{cp.port}").rstrip("/"),
        )
        cp = dataclasses.replace(cp, public_url=(cp.public_url or cp.url).rstrip("/"))
        dp = self.data_plane
        dp = dataclasses.replace(
            dp,
            public_url=(dp.public_url or f"http://{_bracketed(dp.host)}:{dp.port}").rstrip("/"),
            id=dp.id or _default_dataplane_id(dp.port),
            session_key=dp.session_key or _derived_key(internal, "gateway-session-seal"),
        )
        session_key_bytes(dp.session_key)
        if not (math.isfinite(dp.session_max_age) and 0 < dp.session_max_age <= 366 * 24 * 3600):
            raise ConfigError("GATEWAY_SESSION_MAX_AGE must be positive seconds, at most a year")
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", dp.id):
            # What the control plane takes (projection feed, session events, audit).
            raise ConfigError(f"GATEWAY_DATAPLANE_ID must match ^[A-Za-z0-9_.:-]{{1,128}}$, not {dp.id!r}")
        if not (math.isfinite(dp.session_events_interval) and 0 < dp.session_events_interval <= 3600):
            raise ConfigError("GATEWAY_SESSION_EVENTS_INTERVAL must be seconds in (0, 3600]")
        dp = _with_default_hosts(dp)
        data_mcp = f"{dp.public_url}/mcp"
        for issuer in self.admin.issuers():
            aud = issuer.audience
            if aud in (self.jwt.audience, data_mcp) or aud.startswith(data_mcp + "/"):
                raise ConfigError(
                    "the admin JWT audience must differ from every audience the data plane accepts "
                    "(GATEWAY_JWT_AUDIENCE, <public_url>/mcp[/<server>]): else an agent's token could open the admin API"
                )
        jwt = self.jwt
        missing = [n for n in ("issuer", "audience", "jwks_url") if not getattr(jwt, n)]
        # The control plane alone may run without JWT configuration (then it refuses to resolve
        # per-user OAuth credentials); half of one is a mistake either way.
        if missing and (self.plane in ("both", "data") or len(missing) < 3):
            names = ", ".join(f"GATEWAY_JWT_{m.upper()}" if m != "jwks_url" else "GATEWAY_JWKS_URL" for m in missing)
            plane = "the data plane" if self.plane in ("both", "data") else "the JWT configuration"
            raise ConfigError(f"{plane} needs {names}")
        if jwt.jwks_url and not jwt.jwks_url.startswith(("http://", "https://", "file://")):
            raise ConfigError("GATEWAY_JWKS_URL must be an http(s):// or file:// URL")
        opa = self.opa
        opa_bin = os.path.abspath(opa.bin) if opa.bin else _find_opa()
        opa = dataclasses.replace(
            opa,
            bin=opa_bin,
            url=(opa.url or f"http://{opa.addr}").rstrip("/"),
            work_dir=opa.work_dir or str(Path(run_dir) / f"opa-{dp.id}"),
        )
        # The data plane runs the sidecar; the control plane validates uploaded policies with it.
        if opa.engine not in ("sidecar", "embedded"):
            raise ConfigError(f"GATEWAY_DECISION_ENGINE must be sidecar or embedded, not {opa.engine!r}")
        embedded = opa.engine == "embedded" and self.plane in ("both", "data")
        if embedded:
            lib = os.path.abspath(opa.embedded_lib) if opa.embedded_lib else str(EMBEDDED_OPA_LIB)
            if not Path(lib).is_file():
                raise ConfigError(
                    f"GATEWAY_DECISION_ENGINE=embedded needs the embedded OPA library at {lib!r}: "
                    "run `make tools` or set GATEWAY_OPA_EMBEDDED_LIB"
                )
            # One engine per data plane: the in-process OPA replaces the supervised sidecar.
            opa = dataclasses.replace(opa, embedded_lib=lib, manage=False)
        if opa.instance_id and (opa.manage or opa.engine != "sidecar"):
            raise ConfigError("GATEWAY_OPA_INSTANCE_ID names an OPA you run: it needs GATEWAY_OPA_MANAGE=false")
        if opa.instance_id and not re.fullmatch(r"[A-Za-z0-9_.:/-]{1,256}", opa.instance_id):
            raise ConfigError("GATEWAY_OPA_INSTANCE_ID must match ^[A-Za-z0-9_.:/-]{1,256}$")
        needs_opa = self.plane in ("both", "control") or opa.manage
        if needs_opa and not (opa_bin and Path(opa_bin).is_file()):
            raise ConfigError(f"no opa binary at {opa_bin!r}: set OPA_BIN, put opa on PATH, or run `make tools`")
        creds = self.credentials
        if creds.kek_file and creds.kek:
            raise ConfigError("set GATEWAY_CREDENTIALS_KEK_FILE or GATEWAY_CREDENTIALS_KEK, not both")
        if creds.kek_previous_files and not (creds.kek_file or creds.kek):
            raise ConfigError(
                "GATEWAY_CREDENTIALS_KEK_PREVIOUS_FILES needs a current key: set GATEWAY_CREDENTIALS_KEK_FILE "
                "or GATEWAY_CREDENTIALS_KEK"
            )
        if self.bundle_signing.key_file and self.bundle_signing.key:
            raise ConfigError("set GATEWAY_BUNDLE_SIGNING_KEY_FILE or GATEWAY_BUNDLE_SIGNING_KEY, not both")
        if self.audit.partition_interval not in ("day", "week", "month"):
            raise ConfigError(
                f"GATEWAY_AUDIT_PARTITION_INTERVAL must be day, week or month, not {self.audit.partition_interval!r}"
            )
        if self.audit.retention_days < 0:
            raise ConfigError("GATEWAY_AUDIT_RETENTION_DAYS must be 0 (keep everything) or a number of days")
        if self.audit.checkpoint_interval <= 0 or self.audit.maintenance_interval <= 0:
            raise ConfigError("GATEWAY_AUDIT_CHECKPOINT_INTERVAL and _MAINTENANCE_INTERVAL must be positive seconds")
        audit = dataclasses.replace(self.audit, spool_dir=self.audit.spool_dir or str(Path(run_dir) / "audit-spool"))
        return dataclasses.replace(
            self,
            run_dir=run_dir,
            control_plane=cp,
            data_plane=dp,
            jwt=jwt,
            opa=opa,
            audit=audit,
        )


ENV_KEYS: dict[str, str] = {
    "DATABASE_URL": "database_url",
    "GATEWAY_TENANT": "tenant",
    "GATEWAY_ENVIRONMENT": "environment",
    "GATEWAY_PLANE": "plane",
    "GATEWAY_SERVER": "server",
    "GATEWAY_RUN_DIR": "run_dir",
    "GATEWAY_LOG_LEVEL": "log_level",
    "GATEWAY_LOG_FORMAT": "log_format",
    "GATEWAY_METRICS_TOKEN": "metrics_token",
    # Both name one key: the gateway's own variable (later) wins over the standard one.
    "OTEL_EXPORTER_OTLP_ENDPOINT": "otlp_endpoint",
    "GATEWAY_OTLP_ENDPOINT": "otlp_endpoint",
    "GATEWAY_MAX_HEADER_BYTES": "max_header_bytes",
    "GATEWAY_HEADER_TIMEOUT": "header_timeout",
    "GATEWAY_BODY_TIMEOUT": "body_timeout",
    "GATEWAY_CONTROL_HOST": "control_plane.host",
    "GATEWAY_CONTROL_PORT": "control_plane.port",
    "GATEWAY_CONTROL_URL": "control_plane.url",
    "GATEWAY_CONTROL_PUBLIC_URL": "control_plane.public_url",
    "GATEWAY_ADMIN_TOKEN": "control_plane.admin_token",
    "GATEWAY_INTERNAL_TOKEN": "control_plane.internal_token",
    "GATEWAY_OPA_TOKEN": "control_plane.opa_token",
    "GATEWAY_DATA_HOST": "data_plane.host",
    "GATEWAY_DATA_PORT": "data_plane.port",
    "GATEWAY_PUBLIC_URL": "data_plane.public_url",
    "GATEWAY_DATAPLANE_ID": "data_plane.id",
    "GATEWAY_SESSION_KEY": "data_plane.session_key",
    "GATEWAY_SESSION_IDLE_TIMEOUT": "data_plane.session_idle_timeout",
    "GATEWAY_MAX_SESSIONS": "data_plane.max_sessions",
    "GATEWAY_SESSION_MAX_AGE": "data_plane.session_max_age",
    "GATEWAY_SESSION_EVENTS_INTERVAL": "data_plane.session_events_interval",
    "GATEWAY_UPSTREAM_TIMEOUT": "data_plane.upstream_timeout",
    "GATEWAY_UPSTREAM_MAX_DURATION": "data_plane.upstream_max_duration",
    "GATEWAY_UPSTREAM_SESSIONS": "data_plane.upstream_sessions",
    "GATEWAY_DRIFT_INTERVAL": "data_plane.drift_interval",
    "GATEWAY_SSE_POLL_INTERVAL": "data_plane.sse_poll_interval",
    "GATEWAY_SSE_RETRY": "data_plane.sse_retry",
    "GATEWAY_SSE_RESUME_WINDOW": "data_plane.sse_resume_window",
    "GATEWAY_HTTP_CLIENT": "data_plane.http_client",
    "GATEWAY_ALLOWED_HOSTS": "data_plane.allowed_hosts",
    "GATEWAY_ALLOWED_ORIGINS": "data_plane.allowed_origins",
    "GATEWAY_JWT_ISSUER": "jwt.issuer",
    "GATEWAY_JWT_AUDIENCE": "jwt.audience",
    "GATEWAY_JWKS_URL": "jwt.jwks_url",
    "GATEWAY_JWT_ROLES_CLAIM": "jwt.roles_claim",
    "GATEWAY_JWT_SCOPES_CLAIM": "jwt.scopes_claim",
    "GATEWAY_JWT_GROUPS_CLAIM": "jwt.groups_claim",
    "GATEWAY_API_KEY_FAILURE_BURST": "data_plane.api_key_failure_burst",
    "GATEWAY_API_KEY_FAILURE_INTERVAL": "data_plane.api_key_failure_interval",
    "OPA_BIN": "opa.bin",
    "GATEWAY_DECISION_ENGINE": "opa.engine",
    "GATEWAY_OPA_EMBEDDED_LIB": "opa.embedded_lib",
    "GATEWAY_OPA_ADDR": "opa.addr",
    "GATEWAY_OPA_URL": "opa.url",
    "GATEWAY_OPA_MANAGE": "opa.manage",
    "GATEWAY_OPA_INSTANCE_ID": "opa.instance_id",
    "GATEWAY_AUDIT_SPOOL_DIR": "audit.spool_dir",
    "GATEWAY_AUDIT_PARTITION_INTERVAL": "audit.partition_interval",
    "GATEWAY_AUDIT_RETENTION_DAYS": "audit.retention_days",
    "GATEWAY_AUDIT_CHECKPOINT_INTERVAL": "audit.checkpoint_interval",
    "GATEWAY_AUDIT_MAINTENANCE_INTERVAL": "audit.maintenance_interval",
    "GATEWAY_AUDIT_SIGNING_KEY_FILE": "audit.signing_key_file",
    "GATEWAY_AUDIT_VERIFICATION_KEYS": "audit.verification_keys",
    "GATEWAY_CREDENTIALS_KEK_FILE": "credentials.kek_file",
    "GATEWAY_CREDENTIALS_KEK": "credentials.kek",
    "GATEWAY_CREDENTIALS_KEK_PREVIOUS_FILES": "credentials.kek_previous_files",
    "GATEWAY_POLICY_GATE_MIN_COVERAGE": "policy_gate.min_coverage",
    "GATEWAY_POLICY_GATE_TESTS_PASS": "policy_gate.tests_pass",
    "GATEWAY_ADMIN_TOKEN_ENABLED": "admin.token_enabled",
    "GATEWAY_ADMIN_JWT_ISSUER": "admin.jwt_issuer",
    "GATEWAY_ADMIN_JWT_AUDIENCE": "admin.jwt_audience",
    "GATEWAY_ADMIN_JWKS_URL": "admin.jwks_url",
    "GATEWAY_ADMIN_ROLES_CLAIM": "admin.roles_claim",
    "GATEWAY_ADMIN_SECOND_ISSUER": "admin.second_issuer",
    "GATEWAY_ADMIN_SECOND_AUDIENCE": "admin.second_audience",
    "GATEWAY_ADMIN_SECOND_JWKS_URL": "admin.second_jwks_url",
    "GATEWAY_BUNDLE_SIGNING_KEY_FILE": "bundle_signing.key_file",
    "GATEWAY_BUNDLE_SIGNING_KEY": "bundle_signing.key",
    "GATEWAY_BUNDLE_SIGNING_KEY_ID": "bundle_signing.key_id",
    "GATEWAY_BUNDLE_VERIFICATION_KEYS": "bundle_signing.verification_keys",
}
"""Environment variable -> dotted config key."""


OPA_TOKEN_LABEL = "gateway-opa-token"
"""The :func:`derived_token` label of the OPA token (derived from the internal token)."""


def derived_token(parent: Secret, label: str) -> Secret:
    """The token derived from ``parent`` for ``label``: hex HMAC-SHA256(key=parent, msg=label).

    One way: a holder of the derived token cannot compute ``parent``. The internal token is
    derived from the admin token (label ``gateway-internal-token``), the OPA token from the
    internal token (``gateway-opa-token``), each only when not configured.
    """
    return Secret(hmac.new(parent.reveal().encode(), label.encode(), hashlib.sha256).hexdigest())


def _derived_key(parent: Secret, label: str) -> Secret:
    """Base64 of HMAC-SHA256(key=parent, msg=label): 32 bytes of key for ``label``."""
    return Secret(
        base64.b64encode(hmac.new(parent.reveal().encode(), label.encode(), hashlib.sha256).digest()).decode()
    )


def session_key_bytes(key: Secret) -> bytes:
    """The 32 bytes of a session key given as standard or URL-safe base64.

    Raises:
        ConfigError: Not base64 of exactly 32 bytes.
    """
    text = key.reveal().strip()
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError("GATEWAY_SESSION_KEY must be the base64 of 32 random bytes (openssl rand -base64 32)")
    return raw


def _find_opa() -> str:
    # The version pinned in the Makefile (.tools/bin) wins over whatever is on PATH.
    local = PROJECT_ROOT / ".tools" / "bin" / "opa"
    if local.is_file():
        return str(local)
    return shutil.which("opa") or ""


def _default_dataplane_id(port: int) -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64] or "localhost"
    return f"dp-{host}-{port}"


_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_ALL_INTERFACES = ("0.0.0.0", "::", "")  # noqa: S104 - names, not a bind


def _with_default_hosts(dp: DataPlaneConfig) -> DataPlaneConfig:
    """Fill ``allowed_hosts``/``allowed_origins`` left empty (see their docstrings)."""
    public = urlsplit(dp.public_url)
    scheme = public.scheme.lower()
    try:
        port = public.port
    except ValueError as exc:
        raise ConfigError("GATEWAY_PUBLIC_URL has an invalid port") from exc
    if scheme not in ("http", "https") or not public.hostname:
        raise ConfigError("GATEWAY_PUBLIC_URL must be an absolute http(s) URL")
    netloc = _bracketed(public.hostname.lower())
    default_port = 80 if scheme == "http" else 443
    if port is None or port == default_port:
        hosts, origins = {netloc, f"{netloc}:{default_port}"}, {f"{scheme}://{netloc}"}
    else:
        hosts, origins = {f"{netloc}:{port}"}, {f"{scheme}://{netloc}:{port}"}
    bind = dp.host.strip("[]").lower()
    if bind in ("127.0.0.1", "localhost", "::1") or bind in _ALL_INTERFACES:
        hosts.update(f"{name}:{dp.port}" for name in _LOOPBACK_NAMES)
        origins.update(f"http://{name}:{dp.port}" for name in _LOOPBACK_NAMES)
    else:
        hosts.add(f"{_bracketed(bind)}:{dp.port}")
    return dataclasses.replace(
        dp,
        allowed_hosts=dp.allowed_hosts or tuple(sorted(hosts)),
        allowed_origins=dp.allowed_origins or tuple(sorted(origins)),
    )


def _bracketed(host: str) -> str:
    """``host`` as it appears in a URL authority or ``Host`` header (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _set_dotted(data: dict[str, Any], dotted: str, value: str) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{p} must be a table, so {dotted} cannot be set")
    node[leaf] = value


def _coerce(tp: Any, value: Any, name: str) -> Any:
    if tp in (Secret, "Secret"):
        return value if isinstance(value, Secret) else Secret(str(value))
    if tp in (bool, "bool"):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected a boolean, got {value!r}")
    if tp in (int, "int"):
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected an integer")
        return int(value)
    if tp in (float, "float"):
        return float(value)
    if tp in (str, "str"):
        if not isinstance(value, str):
            raise ValueError(f"{name}: expected a string")
        return value
    if str(tp).startswith("tuple"):
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return tuple(value)
    return value


def _build(cls: Any, values: Mapping[str, Any], *, extra: Mapping[str, Any] | None = None) -> Any:
    if not isinstance(values, Mapping):
        raise ValueError(f"{cls.__name__}: expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = dict(extra or {})
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"unknown key {key!r} in {cls.__name__}")
        kwargs[key] = _coerce(fields[key].type, value, key)
    return cls(**kwargs)
