"""Gateway exception hierarchy: one tree, a safe category on every class.

The tree (class, safe ``category``, HTTP ``status_code``)::

    GatewayError                      internal_error            500
    + ConfigError                     config_error              500
    + RequestRejected                 bad_request               400
    |  + InvalidArguments             invalid_arguments         400
    |  + UnknownTool                  unknown_tool              404
    |  + UnknownServer                unknown_server            404
    |  + PolicyRejected               policy_rejected           400
    |  + UnsupportedTransport         unsupported_transport     400
    |  + ArgumentsTooDeep             arguments_too_deep        400
    |  + ArgumentsTooLarge            arguments_too_large       400
    |  + UnexpectedParam              unexpected_param          400
    |  + InvalidApiDocument           invalid_api_document      400
    + AuthenticationFailed            unauthenticated           401
    |  + DelegationTooDeep            delegation_too_deep       401
    |  + TooManyFailedAttempts        too_many_failed_attempts  429
    + AdminAuthFailed                 admin_unauthenticated     401
    + AdminForbidden                  admin_forbidden           403
    + NotFound                        not_found                 404
    + ConflictError                   conflict                  409
    |  + PolicyGateFailed             policy_gate_failed        409
    |  + AuditChainBroken             audit_chain_broken        409
    + PolicyDenied                    policy_denied             403
    + PolicyUnavailable               policy_unavailable        503
    |  + PolicyRevisionStale          policy_revision_stale     503
    + PolicyDecisionInvalid           policy_decision_invalid   503
    + UpstreamError                   upstream_error            502
    |  + UpstreamUnavailable          upstream_unavailable      502
    |  + UpstreamTimeout              upstream_timeout          504
    |  + UpstreamProtocolError        upstream_protocol_error   502
    |  + UpstreamAddressRefused       upstream_address_refused  502
    |  + UpstreamCredentialRejected   upstream_credential_rejected 502
    |  + CredentialUnavailable        credential_unavailable    502
    |     + CredentialNotConnected    credential_not_connected  409
    + SubjectUnverified               subject_unverified        403
    |  + SubjectVerificationUnconfigured subject_verification_unconfigured 403
    + ProjectionUnavailable           projection_unavailable    503
    + DatabaseUnavailable             database_unavailable      503
    + CredentialsDisabled             credentials_unavailable   503
    + CredentialDecryptError          credential_decrypt_error  500

``category`` is stable snake_case and safe to return to clients and to store in
audit records. ``str(exc)`` may contain details (hosts, SQL detail) and goes to
operator logs only, never to a client.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AdminForbidden",
    "UpstreamCredentialRejected",
    "SubjectUnverified",
    "SubjectVerificationUnconfigured",
    "AdminAuthFailed",
    "AuthenticationFailed",
    "DelegationTooDeep",
    "TooManyFailedAttempts",
    "ConfigError",
    "ArgumentsTooDeep",
    "ArgumentsTooLarge",
    "AuditChainBroken",
    "ConflictError",
    "CredentialDecryptError",
    "CredentialNotConnected",
    "CredentialUnavailable",
    "CredentialsDisabled",
    "DatabaseUnavailable",
    "GatewayError",
    "InvalidArguments",
    "NotFound",
    "PolicyDecisionInvalid",
    "PolicyDenied",
    "PolicyGateFailed",
    "PolicyRejected",
    "PolicyRevisionStale",
    "PolicyUnavailable",
    "ProjectionUnavailable",
    "RequestRejected",
    "UnknownServer",
    "UnexpectedParam",
    "InvalidApiDocument",
    "UpstreamAddressRefused",
    "UnknownTool",
    "UnsupportedTransport",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class GatewayError(Exception):
    """Base class. ``category`` is safe to return to clients; the message is not."""

    category: ClassVar[str] = "internal_error"
    status_code: ClassVar[int] = 500


class ConfigError(GatewayError):
    """Configuration is missing or invalid; raised once at start-up."""

    category = "config_error"


class RequestRejected(GatewayError):
    """The request is malformed (JSON-RPC, headers, body size)."""

    category = "bad_request"
    status_code = 400


class InvalidArguments(RequestRejected):
    """``tools/call`` arguments fail the tool's ``inputSchema``.

    ``field`` names the failing JSON path (e.g. ``$.priority``); it is derived
    from the schema, not from the argument values, so it is safe to show.
    """

    category = "invalid_arguments"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class UnknownTool(RequestRejected):
    """The tool is not in the active projection (or not visible to the caller)."""

    category = "unknown_tool"
    status_code = 404


class UnknownServer(RequestRejected):
    """The upstream server is not in the active projection."""

    category = "unknown_server"
    status_code = 404


class PolicyRejected(RequestRejected):
    """An uploaded policy version does not compile (``opa check`` failed)."""

    category = "policy_rejected"

    def __init__(self, message: str, *, errors: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.errors = errors


class UnsupportedTransport(RequestRejected):
    """A known upstream transport (``legacy_sse``, ``stdio``) that cannot be registered yet."""

    category = "unsupported_transport"


class ArgumentsTooDeep(RequestRejected):
    """JSON-RPC ``params`` (``tools/call`` arguments included) nest deeper than
    :data:`gateway.mcp.messages.MAX_PARAMS_DEPTH` objects/arrays (JSON-RPC ``-32602``)."""

    category = "arguments_too_deep"


class ArgumentsTooLarge(RequestRejected):
    """JSON-RPC ``params`` hold more than :data:`gateway.mcp.messages.MAX_PARAMS_VALUES`
    JSON values (JSON-RPC ``-32602``)."""

    category = "arguments_too_large"


class UnexpectedParam(RequestRejected):
    """A ``tools/call`` ``params`` key other than ``name``, ``arguments`` and ``_meta``
    (JSON-RPC ``-32602``): policy would not see it, so it is never forwarded."""

    category = "unexpected_param"


class InvalidApiDocument(RequestRejected):
    """An OpenAPI document (or an API source's selection or overrides) the adapter cannot use.

    ``location`` names where, as a dotted path into the document (``paths./pet/{petId}.get.
    parameters[0]``), or the request field (``selection.include.tags``); it is derived from
    the document's structure, so it is safe to show to the admin who sent it.
    """

    category = "invalid_api_document"

    def __init__(self, message: str, *, location: str) -> None:
        super().__init__(f"{location}: {message}" if location else message)
        self.location = location


class AuthenticationFailed(GatewayError):
    """No bearer token, or a token that fails JWT verification (RFC 6750 §3.1)."""

    category = "unauthenticated"
    status_code = 401


class DelegationTooDeep(AuthenticationFailed):
    """A JWT whose RFC 8693 ``act`` chain nests more actors than the gateway accepts
    (:data:`gateway.jwtauth.MAX_DELEGATION_DEPTH`)."""

    category = "delegation_too_deep"


class TooManyFailedAttempts(AuthenticationFailed):
    """API-key attempts refused without checking: the caller's address, or the key id,
    failed too often lately (429 with ``Retry-After``, :mod:`gateway.dataplane.api_keys`).

    Attributes:
        retry_after: Seconds until one more attempt is allowed (at least 1).
    """

    category = "too_many_failed_attempts"
    status_code = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AdminAuthFailed(GatewayError):
    """The admin or internal bearer token is missing or wrong."""

    category = "admin_unauthenticated"
    status_code = 401


class AdminForbidden(GatewayError):
    """The control plane's policy refused an admin request (a role that does not grant the
    action, or four-eyes: an approver approving what they wrote); the message carries the
    policy's reasons (403 ``admin_forbidden``)."""

    category = "admin_forbidden"
    status_code = 403


class NotFound(GatewayError):
    """A control-plane record does not exist."""

    category = "not_found"
    status_code = 404


class ConflictError(GatewayError):
    """A control-plane record already exists or is in the wrong state."""

    category = "conflict"
    status_code = 409


class AuditChainBroken(ConflictError):
    """The audit hash chains no longer match the newest signed checkpoint (a signed record
    was rewritten or deleted, or a partition vanished outside retention): the control plane
    signs nothing more and drops nothing, so verification keeps showing the break."""

    category = "audit_chain_broken"


class PolicyGateFailed(ConflictError):
    """A policy version fails the approval gate (``policy_gate``: failing tests, or coverage
    below the minimum); the message names what failed, e.g. ``coverage 42.0 % < 80 %``."""

    category = "policy_gate_failed"


class PolicyDenied(GatewayError):
    """OPA decided ``allow: false``; ``reasons`` come from the decision."""

    category = "policy_denied"
    status_code = 403

    def __init__(self, message: str, *, reasons: list[str]) -> None:
        super().__init__(message)
        self.reasons = reasons


class PolicyUnavailable(GatewayError):
    """OPA is unreachable, timed out or answered an HTTP error: deny."""

    category = "policy_unavailable"
    status_code = 503


class PolicyRevisionStale(PolicyUnavailable):
    """OPA decided with an older policy version than the data plane's projection, and did
    not catch up within the wait: deny rather than apply a superseded policy."""

    category = "policy_revision_stale"


class PolicyDecisionInvalid(GatewayError):
    """OPA answered, but the decision is undefined or has the wrong shape: deny."""

    category = "policy_decision_invalid"
    status_code = 503


class UpstreamError(GatewayError):
    """The upstream MCP server failed."""

    category = "upstream_error"
    status_code = 502


class UpstreamUnavailable(UpstreamError):
    """The upstream refused the connection or answered 5xx."""

    category = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the configured timeout."""

    category = "upstream_timeout"
    status_code = 504


class UpstreamProtocolError(UpstreamError):
    """The upstream answered something that is not valid MCP / JSON-RPC."""

    category = "upstream_protocol_error"


class UpstreamAddressRefused(UpstreamError):
    """An API source's host resolved to an address it may not reach: loopback, link-local,
    private or otherwise not globally routable for a source not approved as internal; an
    unspecified, multicast or cloud-metadata address for any source (docs/api-adapter.md
    "SSRF rules"). Nothing was sent; the message names the host and address class, never a
    URL's path or query."""

    category = "upstream_address_refused"


class ProjectionUnavailable(GatewayError):
    """The data plane has not activated any projection yet."""

    category = "projection_unavailable"
    status_code = 503


class DatabaseUnavailable(GatewayError):
    """PostgreSQL is unreachable or shutting down (connection refused, reset or terminated).

    The control plane answers 503 with ``Retry-After``; the request changed nothing
    that was not rolled back with its transaction.
    """

    category = "database_unavailable"
    status_code = 503


class CredentialsDisabled(GatewayError):
    """No key-encryption key is configured, so credentials can be neither stored nor read (503).

    Messages of this and :class:`CredentialDecryptError` never carry key or secret material:
    they name a credential id, a KEK id, a configuration variable or a field.
    """

    category = "credentials_unavailable"
    status_code = 503


class CredentialDecryptError(GatewayError):
    """A sealed credential cannot be opened: its KEK is not in the keyring, or the wrapped
    data key, nonce, ciphertext or associated data were altered (AES-GCM tag mismatch)."""

    category = "credential_decrypt_error"
    status_code = 500


class UpstreamCredentialRejected(UpstreamError):
    """The upstream answered HTTP 401 to a request sent with brokered material, and no other
    material was to be had (or it was refused too). Nothing was processed upstream, so the
    caller may retry; category ``upstream_credential_rejected`` (502)."""

    category = "upstream_credential_rejected"
    status_code = 502


class CredentialUnavailable(UpstreamError):
    """An upstream's credential could not be obtained (502), so nothing was sent to it: the
    token endpoint refused it (``oauth_error`` holds the OAuth error code, RFC 6749 section
    5.2), answered something that is not a token, was unreachable, too slow or too large; or
    the data plane's broker could not resolve it (control plane unreachable, credential
    revoked), or no credential is bound for the caller of a fan-out request (lists).

    The message names only the credential id, the token endpoint's host and the OAuth error
    code: never a secret, a token or the endpoint's error description.
    """

    category = "credential_unavailable"
    status_code = 502

    def __init__(self, message: str, *, oauth_error: str | None = None) -> None:
        super().__init__(message)
        self.oauth_error = oauth_error


class CredentialNotConnected(CredentialUnavailable):
    """The caller has not connected their upstream account yet (credential kind
    ``oauth_authorization_code``: no tokens for them, or the authorization server refused
    their refresh token). ``connect_url`` is the control plane's single-use link that
    connects them (``GET /v1/oauth/connect/{handle}``); it is only ever given to that
    caller. The broker answers 409; the PEP a tool error carrying the link.
    """

    category = "credential_not_connected"
    status_code = 409

    def __init__(self, message: str, *, connect_url: str) -> None:
        super().__init__(message)
        self.connect_url = connect_url


class SubjectUnverified(GatewayError):
    """A per-user credential was asked of the broker without the caller's valid token, or for
    a subject other than the token's (403 ``subject_unverified``)."""

    category = "subject_unverified"
    status_code = 403


class SubjectVerificationUnconfigured(SubjectUnverified):
    """This control plane has no JWT configuration, so it cannot verify a caller: per-user
    credentials are refused (403 ``subject_verification_unconfigured``)."""

    category = "subject_verification_unconfigured"
