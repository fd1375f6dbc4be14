"""Credential kinds: which fields each takes, which of them are secret, and their validation.

A credential is created from ``kind``, ``config`` (non-secret, stored in clear and shown
by the API) and ``secret`` (encrypted, never shown). For the map kinds the names are not
secret and the API shows them in ``config``, derived from ``secret``:

================================  =============================================================  ===========================
kind                              config (clear)                                                 secret (encrypted)
================================  =============================================================  ===========================
``bearer``                        ``{}``                                                         ``{"token"}``
``headers``                       ``{"header_names": [...]}`` (derived, lower case)              ``{"headers": {name: value}}``
``query``                         ``{"param_names": [...]}`` (derived)                           ``{"params": {name: value}}``
``stdio_env``                     ``{"env_names": [...]}`` (derived)                             ``{"env": {NAME: value}}``
``oauth_client_credentials``      ``token_url, client_id, scope?, audience?, auth_method``       ``{"client_secret"}``
``oauth_token_exchange``          ``token_url, client_id, audience?, scope?, auth_method,``      ``{"client_secret"}``
                                  ``requested_token_type?``
``oauth_authorization_code``      ``client_id?, scope?, resource?, authorization_endpoint?,``    ``{"client_secret"?}``
                                  ``token_endpoint?, auth_method?, issuer?``
================================  =============================================================  ===========================

``auth_method`` is ``client_secret_basic`` (default) or ``client_secret_post`` (RFC 6749
section 2.3.1). Every error message names the field (``secret.headers``) and never echoes
a value, nor a name the client chose: only names from the fixed lists below.

Sources: RFC 6750 (bearer), RFC 9110 section 5.1 (field names are tokens) and 7.6.1
(hop-by-hop fields), RFC 6749 (client credentials, ``scope`` syntax in section 3.3),
RFC 8693 (token exchange), RFC 6749 section 4.1 with RFC 7636 PKCE and RFC 8707
``resource`` (``oauth_authorization_code``: per-user tokens, see
:mod:`gateway.controlplane.oauth_users`). Without ``client_id`` that kind registers itself
(RFC 7591); without both endpoints it discovers them (RFC 9728, RFC 8414).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.errors import RequestRejected

__all__ = [
    "AUTH_METHODS",
    "KINDS",
    "REFUSED_ENV_NAMES",
    "REFUSED_HEADERS",
    "SecretFields",
    "ValidatedCredential",
    "validate_credential",
    "validate_rotation",
]

KINDS = (
    "bearer",
    "headers",
    "query",
    "stdio_env",
    "oauth_client_credentials",
    "oauth_token_exchange",
    "oauth_authorization_code",
)
"""Every credential kind (the migration's CHECK constraint lists the same)."""
AUTH_METHODS = ("client_secret_basic", "client_secret_post")
CODE_AUTH_METHODS = ("none", *AUTH_METHODS)
"""``auth_method`` of ``oauth_authorization_code``: ``none`` is a public client (PKCE only)."""
REFUSED_HEADERS = frozenset(
    {
        # hop-by-hop (RFC 9110 section 7.6.1, RFC 9112) and framing: the gateway owns them
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        # MCP streamable HTTP: the gateway sets them per session
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
    }
)
"""Header names a ``headers`` credential may not set (compared in lower case)."""
REFUSED_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "IFS",
        "ENV",
        "BASH_ENV",
        "SHELLOPTS",
        "PS4",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONUSERBASE",
        "PYTHONINSPECT",
        "NODE_OPTIONS",
        "NODE_PATH",
        "PERL5OPT",
        "PERL5LIB",
        "PERLLIB",
        "RUBYOPT",
        "RUBYLIB",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "GCONV_PATH",
        "LOCPATH",
        # where packages, certificates and traffic come from (npx/uvx/pip servers, TLS, proxies)
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_TRUSTED_HOST",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "NODE_TLS_REJECT_UNAUTHORIZED",
        # known code-execution gadgets
        "PYTHONWARNINGS",
        "PYTHONBREAKPOINT",
        "BROWSER",
        "EDITOR",
        "VISUAL",
        "PAGER",
        "GIT_SSH_COMMAND",
        "GIT_EXEC_PATH",
    }
)
"""Variables a ``stdio_env`` credential may not set (they change what runs, not what it reads);
``LD_*`` and ``DYLD_*`` (dynamic loader) and the package managers' ``NPM_CONFIG_*``, ``UV_*``,
``PIP_*``, ``BUN_CONFIG_*`` and ``YARN_*`` are refused too. Compared in upper case."""
REFUSED_ENV_PREFIXES = ("LD_", "DYLD_", "NPM_CONFIG_", "UV_", "PIP_", "BUN_CONFIG_", "YARN_")

MAX_ENTRIES = 32
"""Most headers, query parameters or (100) environment variables of one credential."""
MAX_ENV_ENTRIES = 100
MAX_VALUE = 8192
"""Longest secret value (token, header or parameter value), in characters."""
MAX_ENV_VALUE = 32768
MAX_URL = 2048
MAX_FIELD = 2048
"""Longest non-secret text field (``client_id``, ``scope``, ``audience``, ...)."""

_TOKEN_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
"""RFC 9110 ``token`` (header field names)."""
_PARAM_NAME = re.compile(r"[A-Za-z0-9._~\[\]-]{1,256}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
_VISIBLE = re.compile(r"[\x21-\x7e]+")
"""A bearer token: visible ASCII, no spaces (RFC 6750's ``b64token`` is a subset)."""
_HEADER_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?")
"""RFC 9110 field value, ASCII only, no leading or trailing whitespace."""
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*")
"""RFC 6749 section 3.3: space-separated scope tokens."""
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class SecretFields:
    """The secret fields of a credential; ``repr``/``str`` never show the values.

    Use :meth:`reveal` at the one place the values are needed (sealing, or later the data
    plane's injection); :meth:`to_bytes` is the canonical plaintext that is encrypted.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = dict(fields)

    def reveal(self) -> dict[str, Any]:
        """Return the secret fields (a fresh dict)."""
        return dict(self._fields)

    def to_bytes(self) -> bytes:
        """The canonical plaintext: JSON with sorted keys."""
        return orjson.dumps(self._fields, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_bytes(cls, plaintext: bytes) -> SecretFields:
        """Inverse of :meth:`to_bytes`."""
        fields = orjson.loads(plaintext)
        if not isinstance(fields, dict):
            raise ValueError("a credential's plaintext is a JSON object")
        return cls(fields)

    def __repr__(self) -> str:
        return f"SecretFields(<{len(self._fields)} redacted>)"

    __str__ = __repr__


@dataclass(frozen=True)
class ValidatedCredential:
    """A credential's validated parts: ``config`` is stored in clear, ``secret`` is sealed."""

    kind: str
    config: dict[str, Any]
    secret: SecretFields


def _reject(message: str) -> RequestRejected:
    return RequestRejected(message)


def _object(value: Any, field: str, allowed: frozenset[str], required: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _reject(f"{field} must be an object")
    if set(value) - allowed:
        raise _reject(f"{field} takes only {', '.join(sorted(allowed)) or 'no fields'}")
    if missing := sorted(required - set(value)):
        raise _reject(f"{field}.{missing[0]} is required")
    return value


def _string(value: Any, field: str, *, max_length: int, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
    ok = isinstance(value, str) and 0 < len(value) <= max_length and "\x00" not in value
    if ok and pattern is not None:
        ok = pattern.fullmatch(value) is not None
    elif ok:
        ok = value.isprintable()
    if not ok:
        described = what or "printable characters"
        raise _reject(f"{field} must be a non-empty string of at most {max_length} {described}")
    return str(value)


def _secret_string(value: Any, field: str) -> str:
    return _string(value, field, max_length=MAX_VALUE)


def _map(value: Any, field: str, max_entries: int) -> dict[str, Any]:
    if not isinstance(value, dict) or not 0 < len(value) <= max_entries:
        raise _reject(f"{field} must be an object of 1 to {max_entries} entries")
    return value


def _bearer(config: dict[str, Any], secret: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    _object(config, "config", frozenset(), frozenset())
    body = _object(secret, "secret", frozenset({"token"}), frozenset({"token"}))
    token = _string(
        body["token"], "secret.token", max_length=MAX_VALUE, pattern=_VISIBLE, what="visible ASCII characters"
    )
    return {}, {"token": token}


def _headers(config: dict[str, Any], secret: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    _object(config, "config", frozenset({"header_names"}), frozenset())
    body = _object(secret, "secret", frozenset({"headers"}), frozenset({"headers"}))
    headers = _map(body["headers"], "secret.headers", MAX_ENTRIES)
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not _TOKEN_NAME.fullmatch(name):
            raise _reject("secret.headers: header names must be RFC 9110 tokens of 1 to 256 characters")
        lower = name.lower()
        if lower in REFUSED_HEADERS:
            raise _reject(f"secret.headers: the gateway owns the {lower!r} header; it cannot be a credential")
        if lower in out:
            raise _reject("secret.headers: two header names differ only in case")
        out[lower] = _string(
            value,
            "secret.headers values",
            max_length=MAX_VALUE,
            pattern=_HEADER_VALUE,
            what="printable ASCII characters (no leading or trailing whitespace)",
        )
    return {"header_names": sorted(out)}, {"headers": out}


def _query(config: dict[str, Any], secret: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    _object(config, "config", frozenset({"param_names"}), frozenset())
    body = _object(secret, "secret", frozenset({"params"}), frozenset({"params"}))
    params = _map(body["params"], "secret.params", MAX_ENTRIES)
    out: dict[str, str] = {}
    for name, value in params.items():
        if not _PARAM_NAME.fullmatch(name):
            raise _reject("secret.params: parameter names must be 1 to 256 of [A-Za-z0-9._~[]-]")
        out[name] = _string(value, "secret.params values", max_length=MAX_VALUE)
    return {"param_names": sorted(out)}, {"params": out}


def _stdio_env(config: dict[str, Any], secret: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    _object(config, "config", frozenset({"env_names"}), frozenset())
    body = _object(secret, "secret", frozenset({"env"}), frozenset({"env"}))
    env = _map(body["env"], "secret.env", MAX_ENV_ENTRIES)
    out: dict[str, str] = {}
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            raise _reject("secret.env: variable names must match [A-Za-z_][A-Za-z0-9_]* (at most 256 characters)")
        upper = name.upper()
        if upper in REFUSED_ENV_NAMES:
            raise _reject(f"secret.env: {upper} changes what the process runs; it cannot be a credential")
        if upper.startswith(REFUSED_ENV_PREFIXES):
            raise _reject(
                "secret.env: LD_*, DYLD_* and package-manager settings (NPM_CONFIG_*, UV_*, PIP_*, BUN_CONFIG_*,"
                " YARN_*) change what the process loads; they cannot be credentials"
            )
        if not isinstance(value, str) or len(value) > MAX_ENV_VALUE or "\x00" in value:
            raise _reject(f"secret.env values must be strings of at most {MAX_ENV_VALUE} characters, without NUL")
        out[name] = value
    return {"env_names": sorted(out)}, {"env": out}


def _token_url(value: Any, field: str = "config.token_url") -> str:
    url = _string(value, field, max_length=MAX_URL)
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port
    except ValueError:
        host = None
    if not url.isascii() or not host or parts.scheme not in ("https", "http"):
        raise _reject(f"{field} must be an absolute https URL")
    if parts.scheme == "http" and host not in _LOOPBACK:
        raise _reject(f"{field} must be https (http only to a loopback host)")
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise _reject(f"{field} must have no userinfo, query or fragment (secrets go in secret)")
    return url


_OAUTH_COMMON = frozenset({"token_url", "client_id", "scope", "audience", "auth_method"})


def _oauth(config: dict[str, Any], secret: Any, *, exchange: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    allowed = _OAUTH_COMMON | ({"requested_token_type"} if exchange else set())
    _object(config, "config", frozenset(allowed), frozenset({"token_url", "client_id"}))
    out: dict[str, Any] = {
        "token_url": _token_url(config["token_url"]),
        "client_id": _string(config["client_id"], "config.client_id", max_length=MAX_FIELD),
        "auth_method": config.get("auth_method", AUTH_METHODS[0]),
    }
    if out["auth_method"] not in AUTH_METHODS:
        raise _reject(f"config.auth_method must be one of {', '.join(AUTH_METHODS)}")
    if config.get("scope") is not None:
        out["scope"] = _string(
            config["scope"], "config.scope", max_length=MAX_FIELD, pattern=_SCOPE, what="of RFC 6749 scope tokens"
        )
    if config.get("audience") is not None:
        out["audience"] = _string(config["audience"], "config.audience", max_length=MAX_FIELD)
    if exchange and config.get("requested_token_type") is not None:
        out["requested_token_type"] = _string(
            config["requested_token_type"],
            "config.requested_token_type",
            max_length=256,
            pattern=_VISIBLE,
            what="visible ASCII characters (a URI such as urn:ietf:params:oauth:token-type:access_token)",
        )
    body = _object(secret, "secret", frozenset({"client_secret"}), frozenset({"client_secret"}))
    return out, {"client_secret": _secret_string(body["client_secret"], "secret.client_secret")}


_CODE_FIELDS = frozenset(
    {"client_id", "scope", "resource", "authorization_endpoint", "token_endpoint", "auth_method", "issuer"}
)


def _authorization_code(config: dict[str, Any], secret: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``oauth_authorization_code``: per-user tokens (authorization code + PKCE, RFC 7636).

    Both endpoints or neither (then they are discovered from the bound server's URL at
    connect time). ``auth_method`` defaults to ``client_secret_basic`` with a
    ``client_secret``, else ``none`` (a public client). Without ``client_id`` the gateway
    registers itself (RFC 7591), so ``client_secret`` must then be absent. A
    ``client_secret`` needs configured endpoints: it is never sent to discovered ones.
    """
    _object(config, "config", _CODE_FIELDS, frozenset())
    body = _object(secret, "secret", frozenset({"client_secret"}), frozenset())
    out: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    if body.get("client_secret") is not None:
        fields["client_secret"] = _secret_string(body["client_secret"], "secret.client_secret")
    if config.get("client_id") is not None:
        out["client_id"] = _string(config["client_id"], "config.client_id", max_length=MAX_FIELD)
    elif fields:
        raise _reject("secret.client_secret needs config.client_id (a registered client is given its own)")
    default_method = AUTH_METHODS[0] if fields else "none"
    out["auth_method"] = config.get("auth_method", default_method)
    if out["auth_method"] not in CODE_AUTH_METHODS:
        raise _reject(f"config.auth_method must be one of {', '.join(CODE_AUTH_METHODS)}")
    if (out["auth_method"] == "none") == bool(fields) and "client_id" in out:
        raise _reject("config.auth_method none takes no secret.client_secret; the others need one")
    if "client_id" not in out:
        out["auth_method"] = "none"
    if config.get("scope") is not None:
        out["scope"] = _string(
            config["scope"], "config.scope", max_length=MAX_FIELD, pattern=_SCOPE, what="of RFC 6749 scope tokens"
        )
    if config.get("resource") is not None:
        out["resource"] = _resource(config["resource"])
    endpoints = [name for name in ("authorization_endpoint", "token_endpoint") if config.get(name) is not None]
    if len(endpoints) == 1:
        raise _reject("config.authorization_endpoint and config.token_endpoint go together (or neither: discovered)")
    for name in endpoints:
        out[name] = _token_url(config[name], f"config.{name}")
    if config.get("issuer") is not None:
        if not endpoints:
            raise _reject("config.issuer pins the issuer of configured endpoints (discovered ones carry their own)")
        out["issuer"] = _token_url(config["issuer"], "config.issuer")
    if fields and not endpoints:
        # Discovery follows what the upstream's metadata says; a secret must never go there.
        raise _reject(
            "secret.client_secret is sent only to configured endpoints: set config.authorization_endpoint"
            " and config.token_endpoint (or use a public client: no secret, discovered endpoints)"
        )
    return out, fields


def _resource(value: Any) -> str:
    """RFC 8707 section 2: an absolute URI without a fragment."""
    url = _string(value, "config.resource", max_length=MAX_URL)
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or not url.isascii() or not parts.scheme or not parts.netloc or parts.fragment:
        raise _reject("config.resource must be an absolute URI without a fragment (RFC 8707)")
    return url


_VALIDATORS: dict[str, Callable[[dict[str, Any], Any], tuple[dict[str, Any], dict[str, Any]]]] = {
    "bearer": _bearer,
    "headers": _headers,
    "query": _query,
    "stdio_env": _stdio_env,
    "oauth_client_credentials": lambda c, s: _oauth(c, s, exchange=False),
    "oauth_token_exchange": lambda c, s: _oauth(c, s, exchange=True),
    "oauth_authorization_code": _authorization_code,
}


def validate_credential(kind: Any, config: Any, secret: Any) -> ValidatedCredential:
    """Validate a new credential's ``kind``, ``config`` (None = ``{}``) and ``secret``.

    A map kind's ``config`` may be given but is replaced by the names derived from ``secret``.

    Raises:
        RequestRejected: Unknown kind, a missing, unknown or malformed field; the message
            names the field and never contains a value.
    """
    if not isinstance(kind, str) or kind not in _VALIDATORS:
        raise _reject(f"kind must be one of {', '.join(KINDS)}")
    stored, fields = _VALIDATORS[kind]({} if config is None else config, secret)
    return ValidatedCredential(kind, stored, SecretFields(fields))


def validate_rotation(kind: str, config: Mapping[str, Any], secret: Any) -> ValidatedCredential:
    """Validate the new ``secret`` of an existing credential of ``kind`` with stored ``config``.

    The non-secret configuration stays (a map kind's names follow the new secret).

    Raises:
        RequestRejected: As :func:`validate_credential`.
    """
    return validate_credential(kind, dict(config), secret)
