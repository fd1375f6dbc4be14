"""The credential broker: a data plane resolves a bound credential into the material it sends.

``POST /v1/dataplane/credentials/resolve`` (internal token) with ``{"binding_id",
"credential_id", "version", "server", "dataplane_id", "subject": {"sub", "issuer",
"client_id"}, "subject_token"?, "refresh"?}`` answers ``{"headers", "query", "env", "expires_in"}``
(``Cache-Control: no-store``): the only answer of the control plane that carries secret
material, and only to a holder of the internal token. The binding must be live, of that
server and credential, at that version (the credential's fingerprint; 409 ``conflict`` when
the data plane's projection is older than a rotation). Every resolution, refused and failed
ones too, is a row of ``credential_uses`` (``GET /v1/credentials/{id}/uses``).

Material by kind: ``bearer`` -> ``Authorization: Bearer``; ``headers`` -> those headers;
``query`` -> those parameters; ``stdio_env`` -> those variables;
``oauth_client_credentials`` -> a bearer token from the token endpoint (RFC 6749 section 4.4),
cached here until shortly before it expires; ``oauth_token_exchange`` -> a bearer token for
the caller, traded for ``subject_token`` at the token endpoint (RFC 8693);
``oauth_authorization_code`` -> the caller's own access token, refreshed with their stored
refresh token (:mod:`gateway.controlplane.oauth_users`); a caller who has not connected yet
gets **409** ``{"error": "credential_not_connected", "message", "request_id",
"connect_url"}``. Static kinds are cached by the data plane for at most ``MAX_TTL`` seconds;
tokens until their expiry.

For ``oauth_authorization_code`` the broker does not take the data plane's word for who is
calling: ``subject_token`` (the caller's bearer JWT, which the data plane verified) is
required and verified here again by the same rules (:class:`gateway.jwtauth.JwtVerifier`
with ``config.jwt``: signature against the JWKS, ``iss``, ``exp``/``nbf`` with the leeway,
and ``aud`` one of what the data plane accepts for ``server``: :func:`accepted_audiences`),
and its ``(iss, sub)`` must be ``subject``'s. Otherwise **403** ``subject_unverified`` (no,
an invalid or an expired token, or another subject's), or ``subject_verification_unconfigured``
when this control plane has no JWT configuration: per-user material is never resolved on
the data plane's say-so. Both refusals are rows of ``credential_uses`` (outcome ``refused``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from gateway.config import Config
from gateway.controlplane import oauth_users
from gateway.controlplane._deps import deps
from gateway.controlplane._http import JSONResponse, error_body, read_json, request_id
from gateway.controlplane.credentials import keyring, uuid_text
from gateway.controlplane.oauth_tokens import subject_exp
from gateway.db import credentials as db_credentials
from gateway.errors import (
    AuthenticationFailed,
    ConflictError,
    CredentialNotConnected,
    CredentialUnavailable,
    GatewayError,
    NotFound,
    RequestRejected,
    SubjectUnverified,
    SubjectVerificationUnconfigured,
)
from gateway.jwtauth import JwtVerifier
from gateway.mcp.credential import UpstreamCredential

__all__ = [
    "MAX_TTL",
    "SubjectUnverified",
    "SubjectVerificationUnconfigured",
    "TokenIssuer",
    "accepted_audiences",
    "discovery_material",
    "material_for",
    "resolve_credential",
]

log = logging.getLogger(__name__)

MAX_TTL = 300.0
"""Seconds a data plane may cache static material (the data plane caps it the same way)."""

MAX_SUBJECT_TOKEN = 16 * 1024
_FIELDS = frozenset(
    {"binding_id", "credential_id", "version", "server", "dataplane_id", "subject", "subject_token", "refresh"}
)


class Token(Protocol):
    @property
    def access_token(self) -> str: ...

    @property
    def expires_at(self) -> float:
        """Unix seconds."""
        ...


class TokenIssuer(Protocol):
    """Fetches OAuth tokens with a credential's client secret (:class:`gateway.controlplane.oauth_tokens.TokenSource`)."""

    async def client_credentials(
        self,
        credential_id: str,
        config: Mapping[str, Any],
        client_secret: str,
        *,
        version: str = "",
        refresh: bool = False,
    ) -> Token: ...

    async def token_exchange(
        self,
        credential_id: str,
        config: Mapping[str, Any],
        client_secret: str,
        subject_token: str,
        *,
        version: str = "",
        refresh: bool = False,
    ) -> Token: ...


def _expired(jwt_text: str | None) -> bool:
    """True when a JWT's ``exp`` (read without verification: the data plane verified it) has passed."""
    exp = subject_exp(jwt_text) if jwt_text else None
    return exp is not None and exp <= time.time()


def accepted_audiences(config: Config, server: str) -> tuple[str, str]:
    """The ``aud`` values a data plane accepts, besides ``config.jwt.audience``, from a caller
    whose request can reach ``server``: its aggregate endpoint ``<public_url>/mcp`` and the
    server's own ``<public_url>/mcp/<server>`` (``gateway.dataplane.endpoint.authenticate``).
    ``public_url`` is ``config.data_plane.public_url``: in a split deployment set
    ``GATEWAY_PUBLIC_URL`` on the control plane to the data planes' value.
    """
    public = config.data_plane.public_url
    return f"{public}/mcp", f"{public}/mcp/{server}"


async def _verified_subject(
    request: Request, token: str | None, claimed: tuple[str, str], server: str
) -> tuple[str, str]:
    """``claimed`` once ``token`` proves it (see the module docstring).

    Raises:
        SubjectVerificationUnconfigured: No JWT configuration here.
        SubjectUnverified: No token, an invalid or expired one, or another subject's.
    """
    verifier: JwtVerifier | None = getattr(request.app.state, "subject_verifier", None)
    if verifier is None:
        raise SubjectVerificationUnconfigured(
            "the control plane has no JWT configuration (GATEWAY_JWT_ISSUER, GATEWAY_JWT_AUDIENCE, "
            "GATEWAY_JWKS_URL), so it cannot verify callers of per-user OAuth credentials"
        )
    if token is None:
        raise SubjectUnverified("a per-user OAuth credential needs the caller's token (subject_token)")
    try:
        verified = await verifier.verify(token, audiences=accepted_audiences(deps(request).config, server))
    except AuthenticationFailed as exc:
        raise SubjectUnverified(f"the caller's token was refused: {exc}") from None
    if (verified.issuer, verified.sub) != claimed:
        raise SubjectUnverified("the caller's token names another subject than the one claimed")
    return claimed


def _text(body: dict[str, Any], name: str, limit: int = 256) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise RequestRejected(f"{name} must be a non-empty string of at most {limit} characters")
    return value


async def resolve_credential(request: Request) -> Response:
    """``POST /v1/dataplane/credentials/resolve`` (see the module docstring).

    Errors: 400 malformed body; 403 ``subject_unverified`` / ``subject_verification_unconfigured``
    (``oauth_authorization_code`` without the caller's valid token for that subject); 404
    ``not_found`` (no such live binding of that server and credential); 409 ``conflict``
    (another version) or ``credential_not_connected``; 502 ``credential_unavailable`` (a token
    endpoint failed); 503 ``credentials_unavailable`` (no KEK).
    """
    ring = keyring(request)
    d = deps(request)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - _FIELDS or not isinstance(body.get("subject"), dict):
        raise RequestRejected(
            "body must be {binding_id, credential_id, version, server, dataplane_id, subject, subject_token?, refresh?}"
        )
    binding_id = uuid_text(body.get("binding_id"), "binding_id")
    credential_id = uuid_text(body.get("credential_id"), "credential_id")
    version = _text(body, "version", 128)
    server = _text(body, "server", 128)
    dataplane_id = _text(body, "dataplane_id", 256)
    who = body["subject"]
    claimed = (str(who.get("issuer") or ""), str(who.get("sub") or ""))
    subject = (claimed[0][:1024], claimed[1][:1024])
    token = body.get("subject_token")
    if token is not None and (not isinstance(token, str) or not token or len(token) > MAX_SUBJECT_TOKEN):
        raise RequestRejected(f"subject_token must be a non-empty string of at most {MAX_SUBJECT_TOKEN} characters")
    # refresh: an upstream refused (401) the material the data plane had; fetch a new token
    # rather than answer the cached one (TokenSource bounds how often per token key).
    refresh = body.get("refresh", False)
    if not isinstance(refresh, bool):
        raise RequestRejected("refresh must be a boolean")
    tenant, env = d.config.tenant, d.config.environment
    issuer: TokenIssuer | None = (request.scope.get("state") or {}).get("cp_tokens")
    if issuer is None:
        raise GatewayError("control plane resources are not initialised (root lifespan wiring)")
    outcome, category = "failed", "internal_error"
    try:
        async with d.pool.acquire() as conn:
            row = await db_credentials.resolvable(conn, tenant, env, binding_id)
            if row is None or row["server"] != server or row["credential_id"] != credential_id:
                outcome, category = "refused", "not_found"
                raise NotFound("no such live binding of this server and credential")
            if row["fingerprint"] != version:
                outcome, category = "refused", "conflict"
                raise ConflictError("the credential was rotated: another version")
            secret = (await db_credentials.open_credential(conn, tenant, env, credential_id, ring)).reveal()
        if row["kind"] == "oauth_authorization_code":
            try:
                await _verified_subject(request, token, claimed, server)
            except SubjectUnverified as exc:
                outcome, category = "refused", exc.category
                raise
            access, expires_at = await oauth_users.user_material(
                request, row, secret, subject, server, ring, force=refresh
            )
            material = _token_material(access, expires_at)
        else:
            material = await material_for(issuer, row, version, secret, token, refresh=refresh)
        outcome, category = "resolved", ""
        return JSONResponse(material, headers={"cache-control": "no-store"})
    except CredentialNotConnected as exc:
        outcome, category = "refused", exc.category
        body = {**error_body(exc, request_id(request.scope)), "connect_url": exc.connect_url}
        return JSONResponse(body, status_code=exc.status_code, headers={"cache-control": "no-store"})
    except GatewayError as exc:
        if outcome == "failed":
            category = exc.category
        raise
    finally:
        try:
            async with d.pool.acquire() as conn:
                await db_credentials.record_use(
                    conn,
                    tenant,
                    env,
                    credential_id=credential_id,
                    binding_id=binding_id,
                    server=server,
                    dataplane_id=dataplane_id,
                    subject=subject,
                    outcome=outcome,
                    error_category=category or None,
                )
        except Exception as exc:  # the answer stands; the missing row is logged
            log.error("credential use of %s not recorded: %s", credential_id, type(exc).__name__)


async def discovery_material(
    request: Request, server: str, credential_id: str | None = None
) -> UpstreamCredential | None:
    """What approval's discovery presents to ``server``: the credential ``credential_id``, or
    else the server's ``everyone`` binding's credential; never ``oauth_token_exchange`` (it
    needs a caller). Audited in ``credential_uses`` as data plane ``control-plane``. None
    without a KEK, or with neither.

    Raises:
        NotFound: ``credential_id`` is no live credential.
        RequestRejected: ``credential_id`` is an ``oauth_token_exchange`` credential.
        CredentialUnavailable: Its token could not be obtained.
    """
    ring = getattr(request.app.state, "credentials_keyring", None)
    issuer: TokenIssuer | None = (request.scope.get("state") or {}).get("cp_tokens")
    if ring is None or issuer is None:
        if credential_id is not None:
            keyring(request)  # 503: no KEK, so no credential can be used
        return None
    d = deps(request)
    tenant, env = d.config.tenant, d.config.environment
    binding_id: str | None = None
    async with d.pool.acquire() as conn:
        if credential_id is not None:
            meta = await db_credentials.get_credential(conn, tenant, env, credential_id)
            if meta["status"] != "active":
                raise NotFound(f"credential {credential_id} is revoked")
            row: dict[str, Any] | None = {**meta, "credential_id": meta["id"]}
        else:
            bound = await db_credentials.list_bindings(conn, tenant, env, server=server)
            everyone = next((b for b in bound if b["subject"]["kind"] == "everyone"), None)
            binding_id = everyone["id"] if everyone else None
            row = await db_credentials.resolvable(conn, tenant, env, binding_id) if binding_id else None
        if row is None:
            return None
        if row["kind"] in ("oauth_token_exchange", "oauth_authorization_code"):
            if credential_id is not None:
                raise RequestRejected(f"discovery_credential: an {row['kind']} credential needs a caller")
            return None
        secret = (await db_credentials.open_credential(conn, tenant, env, row["credential_id"], ring)).reveal()
    outcome, category = "failed", "credential_unavailable"
    try:
        material = await material_for(issuer, row, row["fingerprint"], secret, None)
        outcome, category = "resolved", ""
    finally:
        async with d.pool.acquire() as conn:
            await db_credentials.record_use(
                conn,
                tenant,
                env,
                credential_id=row["credential_id"],
                binding_id=binding_id,
                server=server,
                dataplane_id="control-plane",
                subject=("urn:gateway:controlplane", "approval"),
                outcome=outcome,
                error_category=category or None,
            )
    return UpstreamCredential(
        f"{row['credential_id']}@{row['fingerprint']}", material["headers"], material["query"], material["env"]
    )


async def material_for(
    issuer: TokenIssuer,
    row: dict[str, Any],
    version: str,
    secret: dict[str, Any],
    subject_token: str | None,
    *,
    refresh: bool = False,
) -> dict[str, Any]:
    """The material of one credential: ``{"headers", "query", "env", "expires_in"}`` (module docstring).

    ``refresh``: the OAuth kinds fetch a new token instead of answering a cached one (an
    upstream refused it), as often as :class:`~gateway.controlplane.oauth_tokens.TokenSource` allows.

    Raises:
        CredentialUnavailable: A token endpoint failed, or the kind is unknown.
        RequestRejected: ``oauth_token_exchange`` without ``subject_token``.
    """
    kind, config, credential_id = row["kind"], dict(row["config"] or {}), row["credential_id"]
    out: dict[str, Any] = {"headers": {}, "query": {}, "env": {}, "expires_in": MAX_TTL}
    if kind == "bearer":
        out["headers"] = {"authorization": f"Bearer {secret['token']}"}
    elif kind == "headers":
        out["headers"] = {str(k).lower(): str(v) for k, v in dict(secret["headers"]).items()}
    elif kind == "query":
        out["query"] = {str(k): str(v) for k, v in dict(secret["params"]).items()}
    elif kind == "stdio_env":
        out["env"] = {str(k): str(v) for k, v in dict(secret["env"]).items()}
    elif kind in ("oauth_client_credentials", "oauth_token_exchange"):
        client_secret = str(secret["client_secret"])
        if kind == "oauth_token_exchange" and subject_token is None:
            raise RequestRejected("subject_token is required for an oauth_token_exchange credential")

        forced = {"refresh": True} if refresh else {}  # only then: issuers need not know the flag

        async def fetch() -> Token:
            if kind == "oauth_client_credentials":
                return await issuer.client_credentials(credential_id, config, client_secret, version=version, **forced)
            assert subject_token is not None
            return await issuer.token_exchange(
                credential_id, config, client_secret, subject_token, version=version, **forced
            )

        if kind == "oauth_token_exchange" and _expired(subject_token):
            # Within the data plane's leeway, but not worth a token (and no reason to hammer
            # the token endpoint for one that would expire at once).
            raise CredentialUnavailable(f"credential {credential_id}: the caller's token has expired")
        token = await fetch()
        out = _token_material(token.access_token, token.expires_at)
    else:
        raise CredentialUnavailable(f"credential {credential_id}: kind {kind!r} cannot be resolved")
    return out


def _token_material(access_token: str, expires_at: float) -> dict[str, Any]:
    """Bearer material of a token expiring at ``expires_at`` (Unix seconds). The data plane
    stops using it a margin before it expires (in flight, clocks): 20% of what is left, 1 s
    at least, 30 s at most."""
    left = expires_at - time.time()
    return {
        "headers": {"authorization": f"Bearer {access_token}"},
        "query": {},
        "env": {},
        "expires_in": max(0.0, min(MAX_TTL, left - min(30.0, max(1.0, 0.2 * left)))),
    }
