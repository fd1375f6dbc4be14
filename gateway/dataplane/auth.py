"""Caller authentication for the data plane: a bearer JWT (OAuth 2.1 resource server) or a
gateway API key.

The JWT verifier lives in :mod:`gateway.jwtauth`, shared with the control plane's credential
broker (which verifies a caller's token by the same rules); these names stay importable here.
API keys (``Authorization: Bearer gwk_<id>_<secret>``) are verified against the active
projection by :mod:`gateway.dataplane.api_keys`. The resulting :class:`Subject` says which
one it was (``credential_kind``: ``jwt`` or ``api_key``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from starlette.requests import Request

from gateway.config import Config
from gateway.dataplane.api_keys import ApiKeyEntry, ApiKeyVerifier, FailureLimiter, is_api_key
from gateway.jwtauth import JwtVerifier, bearer_token
from gateway.policy.input import Subject

__all__ = ["CallerAuthenticator", "JwtVerifier", "bearer_token"]


class CallerAuthenticator:
    """Authenticate a data-plane request by its ``Authorization: Bearer`` credential.

    A credential starting ``gwk_`` is an API key, anything else a JWT.

    Args:
        config: Gateway configuration (``data_plane.api_key_failure_*``).
        jwt: The JWT verifier.
        api_keys: Returns the active projection's key table (None before the first one).
    """

    def __init__(
        self, config: Config, jwt: JwtVerifier, api_keys: Callable[[], Mapping[str, ApiKeyEntry] | None]
    ) -> None:
        dp = config.data_plane
        self.jwt = jwt
        self.api_keys = ApiKeyVerifier(api_keys, FailureLimiter(dp.api_key_failure_burst, dp.api_key_failure_interval))

    async def authenticate(self, request: Request, *, audiences: Sequence[str] = ()) -> Subject:
        """The verified caller of ``request``.

        Args:
            request: Its ``Authorization`` header is read, and for an API key the client
                address (the TCP peer: behind a proxy, the proxy's) for rate limiting.
            audiences: JWT ``aud`` values accepted besides the configured audience.

        Raises:
            AuthenticationFailed: No bearer credential, or one that fails verification (401);
                :class:`~gateway.errors.DelegationTooDeep` for a too deep ``act`` chain.
            TooManyFailedAttempts: API-key attempts from this address, or for this key id,
                failed too often lately (429 with ``Retry-After``).
        """
        credential = bearer_token(request.headers.get("authorization"))
        if is_api_key(credential):
            client = request.client.host if request.client is not None else "unknown"
            return await self.api_keys.verify(credential, client)
        return await self.jwt.verify(credential, audiences=audiences)
