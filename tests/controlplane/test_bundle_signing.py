"""Bundle signing: our ``.signatures.json`` is what ``opa sign`` writes and what the real ``opa``
verifies; tampering, unsigned bundles and unknown keys are refused; keys come from configuration."""

from __future__ import annotations

import base64
import gzip
import io
import json
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.config import Config
from gateway.controlplane.bundle import build_bundle, read_bundle, signature_problem
from gateway.errors import ConfigError
from gateway.policy.bundle_signing import (
    SIGNATURES_FILE,
    BundleSignatureError,
    BundleSigner,
    PrivateKey,
    SigningKeyError,
    VerificationKey,
    canonical_json,
    dev_key_paths,
    ensure_dev_key,
    file_digest,
    load_signer,
    verification_keys,
    verify_bundle_files,
)
from gateway.policy.sidecar import opa_config

# Data that exercises every canonicalization rule OPA applies to structured files: key order by
# bytes (upper before lower, non-ASCII last), U+2028/U+2029 and control characters, HTML
# characters left alone, numbers kept as written (1.0, 1e+300, -0.0, 2**63-1).
TRICKY_DATA: dict[str, Any] = {
    "gateway_runtime": {"b": 1.0, "B": [1, 2.5e10, -0.0, 1e300, 2**63 - 1], "é": True, "a": None},
    "gateway": {"text": 'line\u2028sep\u2029<&>\x01\x7f\t"\\ é 𝄞', "nested": {"z": {}, "y": [], "x": False}},
}
POLICY = {"gateway.rego": 'package gateway\n\ndecision := {"allow": true, "reasons": [], "obligations": {}}\n'}


def _pem(key: PrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _bundle(signer: BundleSigner | None, data: dict[str, Any] = TRICKY_DATA) -> bytes:
    return build_bundle(
        revision="p7-pv3",
        version=7,
        policy_version=3,
        policy_modules=POLICY,
        reserved_modules={"system/log/log.rego": "package system.log\n\nmask contains x if x := 1\n"},
        data=data,
        signer=signer,
    )


def _repack(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue())


def _payload(signatures: bytes) -> dict[str, Any]:
    token = json.loads(signatures)["signatures"][0]
    body = token.split(".")[1]
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return payload


def _opa_verify(opa_bin: Path, tmp_path: Path, blob: bytes, key: VerificationKey) -> subprocess.CompletedProcess[str]:
    """``opa build`` of a bundle tarball verifies its signature first (OPA's own verifier)."""
    (tmp_path / "in.tar.gz").write_bytes(blob)
    (tmp_path / "pub.pem").write_text(key.public_pem)
    argv = [str(opa_bin), "build", "--bundle", str(tmp_path / "in.tar.gz"), "-o", str(tmp_path / "out.tar.gz")]
    argv += ["--verification-key", str(tmp_path / "pub.pem"), "--verification-key-id", key.key_id]
    argv += ["--signing-alg", key.algorithm]
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)


KEYS: dict[str, Callable[[], PrivateKey]] = {
    "rsa-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ec-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
}


def test_our_file_digests_are_the_ones_opa_sign_computes(opa_bin: Path, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = BundleSigner(key, "k1")
    files = read_bundle(_bundle(signer))
    tree = tmp_path / "bundle"
    for name, content in files.items():
        if name != SIGNATURES_FILE:
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_bytes(content)
    (tmp_path / "key.pem").write_bytes(_pem(key))
    subprocess.run(
        [str(opa_bin), "sign", "--bundle", ".", "--signing-key", str(tmp_path / "key.pem"), "-o", str(tmp_path)],
        cwd=tree,
        check=True,
        capture_output=True,
        timeout=60,
    )
    reference = _payload((tmp_path / SIGNATURES_FILE).read_bytes())["files"]
    ours = _payload(files[SIGNATURES_FILE])["files"]
    assert sorted(reference, key=lambda f: f["name"]) == ours
    assert {f["name"] for f in ours} == {
        ".manifest",
        "data.json",
        "policy/gateway.rego",
        "reserved/system/log/log.rego",
    }
    # The structured files are digested canonically, not as the bytes we wrote.
    assert canonical_json(files["data.json"]) != files["data.json"]


@pytest.mark.parametrize("kind", list(KEYS))
def test_opa_accepts_our_signature_and_refuses_a_tampered_or_unsigned_bundle(
    kind: str, opa_bin: Path, tmp_path: Path
) -> None:
    signer = BundleSigner(KEYS[kind](), f"key-{kind}")
    blob = _bundle(signer)
    key = signer.verification_key
    assert key.algorithm == {"rsa-2048": "RS256", "ec-p256": "ES256", "ec-p384": "ES384"}[kind]
    accepted = _opa_verify(opa_bin, tmp_path, blob, key)
    assert accepted.returncode == 0, accepted.stdout

    files = read_bundle(blob)
    tampered = dict(files, **{"policy/gateway.rego": files["policy/gateway.rego"].replace(b"true", b"false")})
    refused = _opa_verify(opa_bin, tmp_path, _repack(tampered), key)
    assert refused.returncode != 0 and "digest mismatch" in refused.stdout
    unsigned = {k: v for k, v in files.items() if k != SIGNATURES_FILE}
    refused = _opa_verify(opa_bin, tmp_path, _repack(unsigned), key)
    assert refused.returncode != 0 and ".signatures.json" in refused.stdout
    other = BundleSigner(KEYS[kind](), key.key_id)  # same id, another key
    refused = _opa_verify(opa_bin, tmp_path, _bundle(other), key)
    assert refused.returncode != 0


def test_the_fast_digest_of_orjson_output_equals_the_general_canonical_one() -> None:
    import hashlib

    import orjson

    written = orjson.dumps(TRICKY_DATA, option=orjson.OPT_SORT_KEYS)
    assert "\u2028".encode() in written  # orjson leaves U+2028 raw; the canonical form escapes it
    assert file_digest("data.json", written) == hashlib.sha256(canonical_json(written)).hexdigest()
    relaid = json.dumps(TRICKY_DATA, indent=1, ensure_ascii=False).encode()  # no fixpoint: general path
    assert file_digest("data.json", relaid) == hashlib.sha256(canonical_json(relaid)).hexdigest()
    assert file_digest("policy/x.rego", written) == hashlib.sha256(written).hexdigest()


def test_python_verification_agrees_with_opa() -> None:
    signer = BundleSigner(KEYS["ec-p256"](), "k1")
    files = read_bundle(_bundle(signer))
    assert verify_bundle_files(files, [signer.verification_key]) == "k1"
    # Whitespace in a structured file does not matter (canonical digest); a changed value does.
    relaid = dict(files, **{"data.json": json.dumps(json.loads(files["data.json"]), indent=2).encode()})
    assert verify_bundle_files(relaid, [signer.verification_key]) == "k1"
    cases: dict[str, dict[str, bytes]] = {
        "digest mismatch": dict(files, **{"data.json": files["data.json"].replace(b"true", b"false", 1)}),
        "differ": dict(files, **{"policy/extra.rego": b"package gateway\n"}),
        "not signed": {k: v for k, v in files.items() if k != SIGNATURES_FILE},
    }
    for expected, bad in cases.items():
        with pytest.raises(BundleSignatureError, match=expected):
            verify_bundle_files(bad, [signer.verification_key])
    with pytest.raises(BundleSignatureError, match="no trusted verification key"):
        verify_bundle_files(files, [VerificationKey("k2", "ES256", signer.verification_key.public_pem)])
    impostor = BundleSigner(KEYS["ec-p256"](), "k1")
    with pytest.raises(BundleSignatureError, match="does not verify"):
        verify_bundle_files(files, [impostor.verification_key])
    assert signature_problem(_bundle(signer), signer) is None
    assert "not signed" in (signature_problem(_bundle(None), signer) or "")
    assert "does not verify" in (signature_problem(_bundle(impostor), signer) or "")


def test_rsa_signatures_are_deterministic_and_the_key_id_is_the_rfc7638_thumbprint() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    a, b = BundleSigner(key), BundleSigner.from_pem(_pem(key))
    assert _bundle(a) == _bundle(b)
    assert a.key_id == b.key_id == VerificationKey.from_pem(a.verification_key.public_pem.encode()).key_id
    assert len(a.key_id) == 43 and BundleSigner(KEYS["rsa-2048"]()).key_id != a.key_id
    header = json.loads(
        base64.urlsafe_b64decode(
            json.loads(read_bundle(_bundle(a))[SIGNATURES_FILE])["signatures"][0].split(".")[0] + "=="
        )
    )
    assert header == {"alg": "RS256", "kid": a.key_id, "typ": "JWT"}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ed25519.Ed25519PrivateKey.generate(), "Ed25519"),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "2048"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
    ],
)
def test_keys_opa_cannot_verify_are_refused(make: Any, message: str) -> None:
    with pytest.raises(SigningKeyError, match=message):
        BundleSigner.from_pem(_pem(make()))
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key"):
        BundleSigner.from_pem(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")


def _config(tmp_path: Path, plane: str = "control", **signing: Any) -> Config:
    data: dict[str, Any] = {
        "plane": plane,
        "run_dir": str(tmp_path / "run"),
        "database_url": "postgresql://x/y",
        "control_plane": {"admin_token": "t", "url": "http://cp.test"},
        "opa": {"bin": "/bin/true"},
        "bundle_signing": signing,
    }
    if plane != "control":
        data["jwt"] = {"issuer": "https://idp.test", "audience": "https://gw.test/mcp", "jwks_url": "file:///jwks"}
    return Config.from_mapping(data)


def test_without_configuration_a_development_key_is_made_once_and_its_public_half_is_trusted(tmp_path: Path) -> None:
    data_plane = _config(tmp_path, plane="data")
    assert verification_keys(data_plane) == []  # no control plane has made the key yet: OPA refuses all
    control = _config(tmp_path)
    signer = load_signer(control)
    private, public = dev_key_paths(control)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and signer.algorithm == "RS256"
    assert ensure_dev_key(control) == private and load_signer(control).key_id == signer.key_id  # reused
    assert verification_keys(data_plane) == [signer.verification_key]  # the public file, read only
    assert verification_keys(_config(tmp_path, plane="both")) == [signer.verification_key]
    assert public.read_text() == signer.verification_key.public_pem


def test_configured_keys_from_file_environment_and_the_verification_list(tmp_path: Path) -> None:
    k1, k2 = KEYS["rsa-2048"](), KEYS["ec-p256"]()
    (tmp_path / "k1.pem").write_bytes(_pem(k1))
    pub1, pub2 = BundleSigner(k1).verification_key, BundleSigner(k2).verification_key
    (tmp_path / "k1.pub").write_text(pub1.public_pem)
    (tmp_path / "k2.pub").write_text(pub2.public_pem)
    from_file = load_signer(_config(tmp_path, key_file=str(tmp_path / "k1.pem"), key_id="k1"))
    assert (from_file.key_id, from_file.algorithm) == ("k1", "RS256")
    from_env = Config.from_env(
        {
            "GATEWAY_PLANE": "control",
            "DATABASE_URL": "postgresql://x/y",
            "GATEWAY_ADMIN_TOKEN": "t",
            "OPA_BIN": "/bin/true",
            "GATEWAY_RUN_DIR": str(tmp_path / "run"),
            "GATEWAY_BUNDLE_SIGNING_KEY": _pem(k2).decode(),
            "GATEWAY_BUNDLE_VERIFICATION_KEYS": f"k1={tmp_path / 'k1.pub'}, {tmp_path / 'k2.pub'}",
        }
    )
    assert load_signer(from_env).key_id == pub2.key_id  # no id configured: the thumbprint
    assert verification_keys(from_env) == [
        VerificationKey("k1", "RS256", pub1.public_pem),
        VerificationKey(pub2.key_id, "ES256", pub2.public_pem),
    ]
    # All in one without a verification list: the signing key's public half.
    assert verification_keys(_config(tmp_path, plane="both", key_file=str(tmp_path / "k1.pem"), key_id="k1")) == [
        VerificationKey("k1", "RS256", pub1.public_pem)
    ]
    assert not dev_key_paths(from_env)[0].exists()  # configured keys never create a development key
    with pytest.raises(ConfigError, match="not both"):
        _config(tmp_path, key_file=str(tmp_path / "k1.pem"), key="pem")
    with pytest.raises(SigningKeyError, match="cannot read"):
        load_signer(_config(tmp_path, key_file=str(tmp_path / "missing.pem")))
    with pytest.raises(SigningKeyError, match="share an id"):
        verification_keys(_config(tmp_path, verification_keys=[f"a={tmp_path / 'k1.pub'}", f"a={tmp_path / 'k2.pub'}"]))


def test_the_sidecar_configuration_requires_signatures_and_trusts_every_key_by_kid(tmp_path: Path) -> None:
    keys = [
        BundleSigner(KEYS["rsa-2048"](), "k1").verification_key,
        BundleSigner(KEYS["ec-p256"](), "k2").verification_key,
    ]
    document = opa_config(_config(tmp_path, plane="data"), "/token", "i1", keys)
    assert document["keys"] == {
        "k1": {"key": keys[0].public_pem, "algorithm": "RS256"},
        "k2": {"key": keys[1].public_pem, "algorithm": "ES256"},
    }
    # A signing section without keyid: signatures are required and the JWS kid picks the key.
    assert document["bundles"]["gateway"]["signing"] == {}


def test_an_unwritable_run_directory_is_a_signing_key_error(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("a file where the run directory should be")
    with pytest.raises(SigningKeyError, match="cannot create the development signing key"):
        load_signer(_config(tmp_path))
