"""Bearer JWT authentication for the data plane (OAuth 2.1 resource server).

The verifier lives in :mod:`gateway.jwtauth`, shared with the control plane's credential
broker (which verifies a caller's token by the same rules); these names stay importable here.
"""

from __future__ import annotations

from gateway.jwtauth import JwtVerifier, bearer_token

__all__ = ["JwtVerifier", "bearer_token"]
