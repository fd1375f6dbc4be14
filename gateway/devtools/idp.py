"""Tiny development identity provider: an RSA key on disk, a JWKS file and a JWT minter.

**NOT FOR PRODUCTION.** The private key is stored unencrypted on local disk, there is no
login, no consent, no key rotation, no revocation and no OAuth endpoint of any kind. It only
exists so local demos and tests can produce access tokens that the gateway validates exactly
as it would validate tokens from a real authorization server.

Files written by :meth:`DevIdentityProvider.create` (``init``) into a directory ``D``:

* ``D/private_key.pem`` - RSA-2048 private key, PKCS#8 PEM, unencrypted, mode ``0600``.
* ``D/jwks.json`` - the public key as a JSON Web Key Set (RFC 7517 section 5)::

      {"keys": [{"kty": "RSA", "n": "<base64url>", "e": "AQAB",
                 "kid": "<RFC 7638 SHA-256 thumbprint>", "alg": "RS256", "use": "sig"}]}

* ``D/issuer.txt`` - the issuer URL (one line), used as the ``iss`` claim.

Tokens (:meth:`DevIdentityProvider.mint`) are JWS compact-serialized JWTs (RFC 7519) signed
with RS256 (RFC 7518 section 3.3), header ``{"alg": "RS256", "typ": "JWT", "kid": ...}``,
with these claims:

=============  ===============================================================================
claim          value
=============  ===============================================================================
``iss``        issuer URL (``issuer.txt``)
``sub``        subject, e.g. ``"alice"``
``aud``        audience: a string, or a list of strings when several are given
``iat``        issued-at, integer seconds since the Unix epoch (UTC)
``nbf``        not-before, integer epoch seconds (default: ``iat``)
``exp``        expiry, integer epoch seconds (default: ``iat + ttl_seconds``)
``jti``        random unique id (32 hex chars)
``roles``      list of role strings, e.g. ``["viewer", "operator"]``
``scope``      space-separated scope string (RFC 8693 section 4.2 / RFC 9068 style), e.g. ``"mcp:tools"``
``client_id``  OAuth client id of the (pretend) agent, e.g. ``"demo-agent"``
=============  ===============================================================================

CLI::

    python -m gateway.devtools.idp init --dir D [--issuer URL] [--force]
    python -m gateway.devtools.idp mint --dir D --sub alice --roles viewer,operator \\
        --audience AUD [--scope "mcp:tools"] [--client-id demo-agent] [--ttl 3600] [--kid KID]

``mint`` prints the token (one line) on stdout.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

__all__ = [
    "ALGORITHM",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_ISSUER",
    "DEFAULT_SCOPE",
    "DEFAULT_TTL_SECONDS",
    "DevIdentityProvider",
    "main",
]

ALGORITHM = "RS256"
DEFAULT_ISSUER = "https://dev-idp.invalid"
"""Default ``iss``; the ``.invalid`` TLD (RFC 2606) makes clear it is not a real issuer."""
DEFAULT_SCOPE = "mcp:tools"
DEFAULT_CLIENT_ID = "demo-agent"
DEFAULT_TTL_SECONDS = 3600
RSA_KEY_BITS = 2048

PRIVATE_KEY_FILE = "private_key.pem"
JWKS_FILE = "jwks.json"
ISSUER_FILE = "issuer.txt"

TimeValue = int | float | datetime
"""A point in time: epoch seconds (int/float, UTC) or a timezone-aware ``datetime``."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _public_jwk(private_key: rsa.RSAPrivateKey, kid: str | None = None) -> dict[str, str]:
    """Public JWK (RFC 7517) for ``private_key``; ``kid`` defaults to the RFC 7638 thumbprint."""
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    # RFC 7638 section 3.2: required members only, lexicographic order, no whitespace.
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True)
    thumbprint = _b64url(hashlib.sha256(canonical.encode("ascii")).digest())
    return {
        "kty": "RSA",
        "n": jwk["n"],
        "e": jwk["e"],
        "kid": kid or thumbprint,
        "alg": ALGORITHM,
        "use": "sig",
    }


def _generate_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)


def _epoch(value: TimeValue) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("datetime values must be timezone-aware")
        return int(value.timestamp())
    return int(value)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the start (no world-readable window)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)  # O_CREAT mode is ignored when the file already existed


class DevIdentityProvider:
    """A development JWT issuer backed by one RSA-2048 key in a directory (NOT for production).

    Create with :meth:`create` (new key) or :meth:`load` (existing directory).

    Attributes:
        directory: the key directory.
        issuer: issuer URL, used as ``iss``.
        kid: key id of the signing key (RFC 7638 SHA-256 JWK thumbprint).
        jwks: the public JWK Set as a dict (RFC 7517 section 5).
    """

    def __init__(self, directory: Path, issuer: str, private_key: rsa.RSAPrivateKey, kid: str) -> None:
        self.directory = Path(directory)
        self.issuer = issuer
        self.kid = kid
        self._private_key = private_key
        self._foreign_key: rsa.RSAPrivateKey | None = None
        self.jwks: dict[str, Any] = {"keys": [_public_jwk(private_key, kid)]}

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(
        cls, directory: str | os.PathLike[str], issuer: str = DEFAULT_ISSUER, *, force: bool = False
    ) -> DevIdentityProvider:
        """Generate a new RSA-2048 key and write ``private_key.pem`` (0600), ``jwks.json`` and ``issuer.txt``.

        Args:
            directory: target directory; created (mode 0700) if missing.
            issuer: issuer URL written to ``issuer.txt`` and used as ``iss``.
            force: overwrite an existing key; otherwise ``FileExistsError`` is raised.
        """
        if not issuer:
            raise ValueError("issuer must be a non-empty URL")
        path = Path(directory)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path = path / PRIVATE_KEY_FILE
        if key_path.exists() and not force:
            raise FileExistsError(f"{key_path} already exists (use force=True / --force to replace it)")
        private_key = _generate_key()
        jwk = _public_jwk(private_key)
        pem = private_key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        )
        _write_private(key_path, pem)
        (path / JWKS_FILE).write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n", encoding="utf-8")
        (path / ISSUER_FILE).write_text(issuer + "\n", encoding="utf-8")
        return cls(path, issuer, private_key, jwk["kid"])

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DevIdentityProvider:
        """Load a directory written by :meth:`create`. The ``kid`` is taken from ``jwks.json``."""
        path = Path(directory)
        private_key = serialization.load_pem_private_key((path / PRIVATE_KEY_FILE).read_bytes(), password=None)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ValueError(f"{path / PRIVATE_KEY_FILE} is not an RSA private key")
        issuer = (path / ISSUER_FILE).read_text(encoding="utf-8").strip()
        public_n = _public_jwk(private_key)["n"]
        jwks = json.loads((path / JWKS_FILE).read_text(encoding="utf-8"))
        for key in jwks.get("keys", []):
            if key.get("kty") == "RSA" and key.get("n") == public_n and key.get("kid"):
                return cls(path, issuer, private_key, key["kid"])
        raise ValueError(f"{path / JWKS_FILE} has no key matching {path / PRIVATE_KEY_FILE}")

    # -- locations ----------------------------------------------------------------------------

    @property
    def jwks_path(self) -> Path:
        """Absolute path of ``jwks.json``."""
        return (self.directory / JWKS_FILE).resolve()

    @property
    def jwks_url(self) -> str:
        """``file://`` URL of ``jwks.json`` (absolute), e.g. ``file:///tmp/idp/jwks.json``."""
        return self.jwks_path.as_uri()

    @property
    def private_key_path(self) -> Path:
        """Absolute path of ``private_key.pem``."""
        return (self.directory / PRIVATE_KEY_FILE).resolve()

    # -- minting ------------------------------------------------------------------------------

    def claims(
        self,
        sub: str,
        roles: Sequence[str],
        audience: str | Sequence[str],
        *,
        scope: str | Sequence[str] = DEFAULT_SCOPE,
        client_id: str | None = DEFAULT_CLIENT_ID,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        extra_claims: Mapping[str, Any] | None = None,
        omit_claims: Iterable[str] = (),
        issued_at: TimeValue | None = None,
        not_before: TimeValue | None = None,
        expires_at: TimeValue | None = None,
    ) -> dict[str, Any]:
        """Build the claim set :meth:`mint` signs (see :meth:`mint` for the arguments)."""
        if isinstance(roles, str):
            raise TypeError("roles must be a sequence of strings, not a string")
        iat = _epoch(issued_at) if issued_at is not None else int(time.time())
        if isinstance(audience, str):
            aud: str | list[str] = audience
        else:
            aud = list(audience)
            if len(aud) == 1:
                aud = aud[0]
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": aud,
            "iat": iat,
            "nbf": _epoch(not_before) if not_before is not None else iat,
            "exp": _epoch(expires_at) if expires_at is not None else iat + int(ttl_seconds),
            "jti": secrets.token_hex(16),
            "roles": list(roles),
            "scope": scope if isinstance(scope, str) else " ".join(scope),
        }
        if client_id is not None:
            claims["client_id"] = client_id
        if extra_claims:
            claims.update(extra_claims)
        for name in omit_claims:
            claims.pop(name, None)
        return claims

    def mint(
        self,
        sub: str,
        roles: Sequence[str],
        audience: str | Sequence[str],
        *,
        scope: str | Sequence[str] = DEFAULT_SCOPE,
        client_id: str | None = DEFAULT_CLIENT_ID,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        extra_claims: Mapping[str, Any] | None = None,
        omit_claims: Iterable[str] = (),
        issued_at: TimeValue | None = None,
        not_before: TimeValue | None = None,
        expires_at: TimeValue | None = None,
        kid: str | None = None,
    ) -> str:
        """Return an RS256-signed JWT (RFC 7519, compact JWS) signed with this provider's key.

        Args:
            sub: subject (``sub``).
            roles: role names (``roles``, a JSON array).
            audience: ``aud``; one string, or several (a one-element sequence becomes a string).
            scope: ``scope``; a space-separated string, or a sequence joined with spaces.
            client_id: ``client_id``; ``None`` leaves the claim out.
            ttl_seconds: lifetime in seconds; ``exp = iat + ttl_seconds`` unless ``expires_at`` is given.
                May be negative to produce an already-expired token.
            extra_claims: added last; may override any standard claim (e.g. a wrong ``iss``).
            omit_claims: claim names removed after everything else (e.g. ``["exp"]``).
            issued_at: ``iat`` (epoch seconds or aware datetime); default now.
            not_before: ``nbf``; default ``iat``.
            expires_at: ``exp``; overrides ``ttl_seconds``.
            kid: JOSE header ``kid``; default this provider's key id (override to test unknown kids).
        """
        claims = self.claims(
            sub,
            roles,
            audience,
            scope=scope,
            client_id=client_id,
            ttl_seconds=ttl_seconds,
            extra_claims=extra_claims,
            omit_claims=omit_claims,
            issued_at=issued_at,
            not_before=not_before,
            expires_at=expires_at,
        )
        return self._sign(claims, self._private_key, kid or self.kid)

    def mint_with_foreign_key(
        self,
        sub: str,
        roles: Sequence[str],
        audience: str | Sequence[str],
        *,
        kid: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Like :meth:`mint`, but signed with a different RSA key that is NOT in ``jwks.json``.

        The header ``kid`` defaults to this provider's real key id, so a verifier selects the
        published key and must fail with a bad signature. The foreign key is generated once
        per instance and never written to disk. Keyword arguments are those of :meth:`mint`.
        """
        if self._foreign_key is None:
            self._foreign_key = _generate_key()
        claims = self.claims(sub, roles, audience, **kwargs)
        return self._sign(claims, self._foreign_key, kid or self.kid)

    @staticmethod
    def _sign(claims: Mapping[str, Any], key: rsa.RSAPrivateKey, kid: str) -> str:
        return jwt.encode(dict(claims), key, algorithm=ALGORITHM, headers={"kid": kid, "typ": "JWT"})


# -- CLI --------------------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.devtools.idp",
        description="Development identity provider (NOT for production): make a key + JWKS, mint RS256 JWTs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="generate private_key.pem (0600), jwks.json and issuer.txt in --dir")
    init.add_argument("--dir", required=True, type=Path, help="key directory (created if missing)")
    init.add_argument("--issuer", default=DEFAULT_ISSUER, help=f"issuer URL (default {DEFAULT_ISSUER})")
    init.add_argument("--force", action="store_true", help="replace an existing key")

    mint = sub.add_parser("mint", help="print a signed RS256 JWT")
    mint.add_argument("--dir", required=True, type=Path, help="key directory written by init")
    mint.add_argument("--sub", required=True, help="subject (sub claim)")
    mint.add_argument("--roles", default="", help="comma-separated roles, e.g. viewer,operator (default none)")
    mint.add_argument("--audience", required=True, action="append", help="aud claim; repeat for several audiences")
    mint.add_argument("--scope", default=DEFAULT_SCOPE, help=f"space-separated scopes (default {DEFAULT_SCOPE!r})")
    mint.add_argument("--client-id", default=DEFAULT_CLIENT_ID, help=f"client_id claim (default {DEFAULT_CLIENT_ID})")
    mint.add_argument("--ttl", type=int, default=DEFAULT_TTL_SECONDS, help="lifetime in seconds (default 3600)")
    mint.add_argument("--kid", default=None, help="override the JOSE header kid (default: the key's kid)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    args = _build_parser().parse_args(argv)
    if args.command == "init":
        try:
            idp = DevIdentityProvider.create(args.dir, args.issuer, force=args.force)
        except FileExistsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {idp.private_key_path} (0600), {idp.jwks_path}, {idp.directory.resolve() / ISSUER_FILE}")
        print(f"issuer: {idp.issuer}")
        print(f"kid:    {idp.kid}")
        print(f"jwks:   {idp.jwks_url}")
        return 0
    idp = DevIdentityProvider.load(args.dir)
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    token = idp.mint(
        args.sub,
        roles,
        args.audience,
        scope=args.scope,
        client_id=args.client_id,
        ttl_seconds=args.ttl,
        kid=args.kid,
    )
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
