"""Tests for the development identity provider (gateway.devtools.idp)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jwt
import pytest

from gateway.devtools.idp import ALGORITHM, DEFAULT_ISSUER, DevIdentityProvider

ISSUER = "https://idp.test.invalid"
AUDIENCE = "https://gateway.test.invalid/mcp"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> DevIdentityProvider:
    return DevIdentityProvider.create(tmp_path_factory.mktemp("idp"), ISSUER)


def _verify(token: str, idp: DevIdentityProvider, audience: str = AUDIENCE, **kwargs: object) -> dict:
    """Verify like a relying party would: pick the JWKS key by kid, check sig, iss, aud, exp, nbf."""
    jwk_set = jwt.PyJWKSet.from_dict(json.loads(idp.jwks_path.read_text()))
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwk_set.keys if k.key_id == kid)
    return jwt.decode(
        token,
        key=key.key,
        algorithms=[ALGORITHM],
        audience=audience,
        issuer=idp.issuer,
        options={"require": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti"]},
        **kwargs,
    )


def test_create_writes_files_with_expected_shapes(idp: DevIdentityProvider) -> None:
    key_file = idp.directory / "private_key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (idp.directory / "issuer.txt").read_text().strip() == ISSUER

    jwks = json.loads(idp.jwks_path.read_text())
    assert jwks == idp.jwks
    [jwk] = jwks["keys"]
    assert jwk["kty"] == "RSA" and jwk["alg"] == "RS256" and jwk["use"] == "sig"
    assert jwk["kid"] == idp.kid and jwk["e"] == "AQAB"
    assert "d" not in jwk and "p" not in jwk  # public only
    assert jwt.PyJWK.from_dict(jwk).key.key_size == 2048

    assert idp.jwks_path.is_absolute()
    assert idp.jwks_url == idp.jwks_path.as_uri() and idp.jwks_url.startswith("file:///")


def test_mint_verifies_against_jwks(idp: DevIdentityProvider) -> None:
    before = int(time.time())
    token = idp.mint(
        "alice", ["viewer", "operator"], AUDIENCE, scope="mcp:tools mcp:admin", client_id="agent-7", ttl_seconds=600
    )
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "kid": idp.kid, "typ": "JWT"}

    claims = _verify(token, idp)
    assert claims["iss"] == ISSUER
    assert claims["sub"] == "alice"
    assert claims["aud"] == AUDIENCE
    assert claims["roles"] == ["viewer", "operator"]
    assert claims["scope"] == "mcp:tools mcp:admin"
    assert claims["client_id"] == "agent-7"
    assert before <= claims["iat"] <= int(time.time())
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] == claims["iat"] + 600
    assert isinstance(claims["jti"], str) and len(claims["jti"]) == 32


def test_defaults_and_uniqueness(idp: DevIdentityProvider) -> None:
    a = _verify(idp.mint("bob", [], AUDIENCE), idp)
    b = _verify(idp.mint("bob", [], AUDIENCE), idp)
    assert a["scope"] == "mcp:tools" and a["client_id"] == "demo-agent" and a["roles"] == []
    assert a["exp"] - a["iat"] == 3600
    assert a["jti"] != b["jti"]


def test_jwks_file_url_resolves_to_the_jwks(idp: DevIdentityProvider) -> None:
    # Note: PyJWT >= 2.15's PyJWKClient refuses non-http(s) URLs, so a file:// JWKS must be read directly.
    with urllib.request.urlopen(idp.jwks_url) as resp:  # noqa: S310 - our own local file:// URL
        jwks = json.load(resp)
    token = idp.mint("alice", ["viewer"], AUDIENCE)
    [key] = jwt.PyJWKSet.from_dict(jwks).keys
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["sub"] == "alice"


def test_foreign_key_signature_fails(idp: DevIdentityProvider) -> None:
    token = idp.mint_with_foreign_key("mallory", ["admin"], AUDIENCE)
    assert jwt.get_unverified_header(token)["kid"] == idp.kid  # claims to be ours...
    with pytest.raises(jwt.InvalidSignatureError):
        _verify(token, idp)  # ...but is not


def test_wrong_audience_fails(idp: DevIdentityProvider) -> None:
    token = idp.mint("alice", ["viewer"], "https://other.invalid")
    with pytest.raises(jwt.InvalidAudienceError):
        _verify(token, idp)


def test_multiple_audiences(idp: DevIdentityProvider) -> None:
    token = idp.mint("alice", ["viewer"], [AUDIENCE, "https://other.invalid"])
    assert _verify(token, idp)["aud"] == [AUDIENCE, "https://other.invalid"]
    assert _verify(idp.mint("alice", [], [AUDIENCE]), idp)["aud"] == AUDIENCE


def test_wrong_issuer_fails(idp: DevIdentityProvider) -> None:
    token = idp.mint("alice", ["viewer"], AUDIENCE, extra_claims={"iss": "https://evil.invalid"})
    with pytest.raises(jwt.InvalidIssuerError):
        _verify(token, idp)


def test_expired_fails(idp: DevIdentityProvider) -> None:
    token = idp.mint("alice", ["viewer"], AUDIENCE, expires_at=int(time.time()) - 120)
    with pytest.raises(jwt.ExpiredSignatureError):
        _verify(token, idp)
    token = idp.mint("alice", ["viewer"], AUDIENCE, ttl_seconds=-60)
    with pytest.raises(jwt.ExpiredSignatureError):
        _verify(token, idp)


def test_not_yet_valid_fails(idp: DevIdentityProvider) -> None:
    token = idp.mint("alice", ["viewer"], AUDIENCE, not_before=int(time.time()) + 600, ttl_seconds=7200)
    with pytest.raises(jwt.ImmatureSignatureError):
        _verify(token, idp)


def test_omit_claims(idp: DevIdentityProvider) -> None:
    token = idp.mint("alice", ["viewer"], AUDIENCE, omit_claims=["exp"])
    assert "exp" not in jwt.decode(token, options={"verify_signature": False})
    with pytest.raises(jwt.MissingRequiredClaimError):
        _verify(token, idp)


def test_unknown_kid_header(idp: DevIdentityProvider) -> None:
    token = idp.mint("alice", ["viewer"], AUDIENCE, kid="no-such-key")
    assert jwt.get_unverified_header(token)["kid"] == "no-such-key"
    jwk_set = jwt.PyJWKSet.from_dict(idp.jwks)
    with pytest.raises(KeyError):
        jwk_set["no-such-key"]


def test_roles_must_not_be_a_string(idp: DevIdentityProvider) -> None:
    with pytest.raises(TypeError):
        idp.mint("alice", "viewer", AUDIENCE)  # type: ignore[arg-type]


def test_load_round_trip(idp: DevIdentityProvider) -> None:
    loaded = DevIdentityProvider.load(idp.directory)
    assert loaded.issuer == ISSUER and loaded.kid == idp.kid and loaded.jwks == idp.jwks
    claims = _verify(loaded.mint("carol", ["operator"], AUDIENCE), idp)
    assert claims["sub"] == "carol"


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    first = DevIdentityProvider.create(tmp_path)
    assert first.issuer == DEFAULT_ISSUER
    with pytest.raises(FileExistsError):
        DevIdentityProvider.create(tmp_path)
    second = DevIdentityProvider.create(tmp_path, "https://new.invalid", force=True)
    assert second.kid != first.kid
    assert stat.S_IMODE((tmp_path / "private_key.pem").stat().st_mode) == 0o600
    assert DevIdentityProvider.load(tmp_path).kid == second.kid


def test_cli_init_and_mint(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.devtools.idp", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    init = run("init", "--dir", str(key_dir), "--issuer", ISSUER)
    assert init.returncode == 0, init.stderr
    assert stat.S_IMODE((key_dir / "private_key.pem").stat().st_mode) == 0o600
    assert run("init", "--dir", str(key_dir)).returncode == 1  # no silent overwrite

    minted = run(
        "mint",
        "--dir",
        str(key_dir),
        "--sub",
        "alice",
        "--roles",
        "viewer,operator",
        "--audience",
        AUDIENCE,
        "--scope",
        "mcp:tools",
        "--client-id",
        "cli-agent",
        "--ttl",
        "120",
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token

    idp = DevIdentityProvider.load(key_dir)
    claims = _verify(token, idp)
    assert claims["roles"] == ["viewer", "operator"]
    assert claims["client_id"] == "cli-agent"
    assert claims["scope"] == "mcp:tools"
    assert claims["exp"] - claims["iat"] == 120

    other_kid = run("mint", "--dir", str(key_dir), "--sub", "x", "--audience", AUDIENCE, "--kid", "k2")
    assert jwt.get_unverified_header(other_kid.stdout.strip())["kid"] == "k2"
    assert jwt.decode(other_kid.stdout.strip(), options={"verify_signature": False})["roles"] == []
