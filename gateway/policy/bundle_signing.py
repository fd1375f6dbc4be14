"""Signed OPA bundles: the ``.signatures.json`` the control plane adds, the keys OPA verifies with.

A signed bundle carries ``.signatures.json`` = ``{"signatures": ["<JWS>"]}``: one compact JWS
(header ``{"alg", "kid", "typ": "JWT"}``) whose payload ``{"files": [{"name", "hash",
"algorithm": "SHA-256"}, ...]}`` lists every other file of the bundle with its digest. OPA
(configured with ``keys`` and a bundle ``signing`` section) activates a bundle only when the JWS
verifies with the key named by ``kid``, the file list is exactly the bundle's files and every
digest matches; otherwise it keeps its last good bundle and reports the error through the
status API. Source: OPA docs, "Bundles" → "Signing" and "Signature Verification"; the digest
rules were checked against ``opa sign`` (tests/controlplane/test_bundle_signing.py).

Digests (SHA-256, lowercase hex): files whose base name is ``data.json`` or ``.manifest``
are *structured*: the digest is over the canonical JSON (object keys sorted by their UTF-8
bytes, no whitespace, strings escaped as Go's ``encoding/json`` does without HTML escaping,
numbers exactly as written in the file); every other file (``*.rego``) is hashed as bytes.

Keys: RSA (>= 2048 bits, ``RS256``) or EC P-256/P-384/P-521 (``ES256``/``ES384``/``ES512``),
as PEM (PKCS#8, or the traditional RSA/EC forms). Ed25519 is refused: OPA's ``keys``
configuration does not accept ``EdDSA`` (OPA 1.22: "unsupported algorithm", although
``opa build`` verifies it). A key id defaults to the RFC 7638 JWK thumbprint of the public key
(base64url SHA-256).

The JWS itself is made and checked by PyJWT (:mod:`jwt`) over :mod:`cryptography` keys; this
module only lays out the payload and the key configuration.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.config import Config
from gateway.errors import ConfigError

__all__ = [
    "DEV_KEY_DIR",
    "HASH_ALGORITHM",
    "SIGNATURES_FILE",
    "PrivateKey",
    "PublicKey",
    "BundleSignatureError",
    "BundleSigner",
    "SigningKeyError",
    "VerificationKey",
    "canonical_json",
    "dev_key_paths",
    "ensure_dev_key",
    "file_digest",
    "load_signer",
    "opa_keys_config",
    "signature_key_id",
    "verification_keys",
    "verify_bundle_files",
]

log = logging.getLogger(__name__)

SIGNATURES_FILE = ".signatures.json"
"""Name of the signature file at the bundle root (OPA's name; excluded from its own list)."""
HASH_ALGORITHM = "SHA-256"
"""OPA's name of the digest every file entry uses."""
STRUCTURED_NAMES = frozenset({"data.json", ".manifest"})
"""Base names OPA digests as canonical JSON (it also would ``data.yaml``, which bundles here never hold)."""
DEV_KEY_DIR = "bundle-signing"
"""Directory under ``run_dir`` holding the generated development key (when none is configured)."""
_DEV_PRIVATE = "dev-signing-key.pem"
_DEV_PUBLIC = "dev-signing-key.pub.pem"


class SigningKeyError(ConfigError):
    """A signing or verification key is missing, unreadable or of an unsupported type.

    A :class:`~gateway.errors.ConfigError` (``config_error``): an approval whose compile cannot
    sign answers 500 ``config_error`` and changes nothing; a control plane cannot start.
    """


class BundleSignatureError(ValueError):
    """A bundle's ``.signatures.json`` is missing, malformed or does not verify."""


# --- canonical JSON (OPA's structured-file digest) -------------------------------------------


class _Number(str):
    """A JSON number kept as the text the file wrote (OPA decodes numbers as ``json.Number``)."""


def _reject_constant(name: str) -> Any:
    raise BundleSignatureError(f"{name} is not JSON")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _string(value: str) -> str:
    # Go's encoder writes what Python's does with ensure_ascii=False (\", \\, \b, \f, \n, \r, \t,
    # other controls as \u00xx) and also escapes U+2028/U+2029; a lone surrogate decodes to U+FFFD.
    text = json.dumps(_LONE_SURROGATE.sub("\ufffd", value), ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _canonical(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value, key=lambda k: k.encode("utf-8", "surrogatepass"))):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _canonical(value[key], out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _canonical(item, out)
        out.append("]")
    elif isinstance(value, _Number):
        out.append(str(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    else:  # pragma: no cover - json.loads yields nothing else here
        raise BundleSignatureError(f"unexpected JSON value {type(value).__name__}")


def canonical_json(content: bytes) -> bytes:
    """The bytes OPA digests for a structured file: ``content`` parsed, keys sorted, compact.

    Numbers keep the text ``content`` wrote (``1.0`` stays ``1.0``); see the module docstring.

    Raises:
        BundleSignatureError: ``content`` is not JSON (or holds ``NaN``/``Infinity``).
    """
    try:
        value = json.loads(content, parse_float=_Number, parse_int=_Number, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleSignatureError(f"not canonicalizable JSON: {exc}") from exc
    out: list[str] = []
    _canonical(value, out)
    return "".join(out).encode("utf-8", "surrogatepass")


def file_digest(name: str, content: bytes) -> str:
    """SHA-256 (lowercase hex) of one bundle file the way OPA checks it.

    Args:
        name: Path inside the bundle (``data.json``, ``policy/gateway.rego``, ...).
        content: The file's bytes.

    Raises:
        BundleSignatureError: A structured file (``data.json``, ``.manifest``) is not JSON.
    """
    base = name.rsplit("/", 1)[-1]
    if base in ("data.yaml", "data.yml"):
        raise BundleSignatureError(f"{name}: YAML data files are not supported in signed bundles")
    if base not in STRUCTURED_NAMES:
        return hashlib.sha256(content).hexdigest()
    return hashlib.sha256(_orjson_canonical(content) or canonical_json(content)).hexdigest()


_LS, _PS = "\u2028".encode(), "\u2029".encode()


def _orjson_canonical(content: bytes) -> bytes | None:
    """The canonical form of ``content`` when it is what ``orjson`` writes with sorted keys
    (the files built here), else None.

    Fast path (C speed) for :func:`canonical_json`: an ``orjson`` fixpoint has no duplicate
    keys, keys sorted by code point (= by UTF-8 bytes), numbers whose text survives a round
    trip, and string escapes identical to Go's except that it leaves U+2028/U+2029 raw; those
    bytes occur only inside strings, so escaping them gives exactly Go's canonical form.
    """
    try:
        again = orjson.dumps(orjson.loads(content), option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return None
    if again != content:
        return None
    return content.replace(_LS, b"\\u2028").replace(_PS, b"\\u2029")


# --- keys -------------------------------------------------------------------------------------

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def _algorithm(key: object) -> str:
    """The JWS ``alg`` for ``key``'s type: RS256 or ES256/ES384/ES512."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise SigningKeyError(f"an RSA bundle-signing key needs at least 2048 bits, not {key.key_size}")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHMS.get(key.curve.name)
        if alg is None:
            raise SigningKeyError(f"EC curve {key.curve.name} is not supported (P-256, P-384 or P-521)")
        return alg
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        raise SigningKeyError("Ed25519 keys are not supported: OPA's keys configuration refuses EdDSA (use RSA or EC)")
    raise SigningKeyError(f"unsupported key type {type(key).__name__} (RSA or EC)")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _int_bytes(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big")


def _thumbprint(key: PublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of a public key."""
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        members = {"e": _b64url(_int_bytes(nums.e)), "kty": "RSA", "n": _b64url(_int_bytes(nums.n))}
    else:
        nums_ec = key.public_numbers()
        size = (key.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
        members = {
            "crv": crv,
            "kty": "EC",
            "x": _b64url(_int_bytes(nums_ec.x, size)),
            "y": _b64url(_int_bytes(nums_ec.y, size)),
        }
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return _b64url(hashlib.sha256(canonical).digest())


def _public_pem(key: PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _load_private(pem: bytes, source: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{source}: not an unencrypted PEM private key ({exc})") from exc
    try:
        _algorithm(key)
    except SigningKeyError as exc:
        raise SigningKeyError(f"{source}: {exc}") from None
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)  # _algorithm checked it
    return key


def _load_public(pem: bytes, source: str) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{source}: not a PEM public key ({exc})") from exc
    try:
        _algorithm(key)
    except SigningKeyError as exc:
        raise SigningKeyError(f"{source}: {exc}") from None
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)  # _algorithm checked it
    return key


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class VerificationKey:
    """A public key OPA verifies bundles with: OPA config ``keys.<key_id>``.

    Attributes:
        key_id: Matched against the JWS ``kid`` header.
        algorithm: JWS ``alg`` (``RS256``, ``ES256``, ``ES384`` or ``ES512``).
        public_pem: SubjectPublicKeyInfo PEM.
    """

    key_id: str
    algorithm: str
    public_pem: str

    @classmethod
    def from_pem(cls, pem: bytes, key_id: str = "", source: str = "verification key") -> VerificationKey:
        """Parse a PEM public key; ``key_id`` defaults to its RFC 7638 thumbprint.

        Raises:
            SigningKeyError: Not a PEM public key of a supported type.
        """
        key = _load_public(pem, source)
        return cls(key_id or _thumbprint(key), _algorithm(key), _public_pem(key))


class BundleSigner:
    """Signs bundles with one private key (deterministically for RSA keys; ECDSA is randomized).

    Example::

        signer = load_signer(config)
        files[".signatures.json"] = signer.signatures(files)
    """

    def __init__(self, key: PrivateKey, key_id: str = "") -> None:
        self._key = key
        self.algorithm = _algorithm(key)
        """JWS ``alg`` derived from the key type."""
        public = key.public_key()
        self.key_id = key_id or _thumbprint(public)
        """The JWS ``kid`` (configured, else the RFC 7638 thumbprint of the public key)."""
        self.verification_key = VerificationKey(self.key_id, self.algorithm, _public_pem(public))
        """The matching public key, as OPA is configured with it."""

    @classmethod
    def from_pem(cls, pem: bytes, key_id: str = "", source: str = "signing key") -> BundleSigner:
        """Build from an unencrypted PEM private key.

        Raises:
            SigningKeyError: Not a PEM private key of a supported type (RSA >= 2048 bits, EC P-256/384/521).
        """
        return cls(_load_private(pem, source), key_id)

    def signatures(self, files: Mapping[str, bytes]) -> bytes:
        """The ``.signatures.json`` content for a bundle holding ``files`` (name -> bytes).

        Every file but ``.signatures.json`` itself is listed, sorted by name.

        Raises:
            BundleSignatureError: A structured file is not JSON.
        """
        entries = [
            {"name": name, "hash": file_digest(name, content), "algorithm": HASH_ALGORITHM}
            for name, content in sorted(files.items())
            if name != SIGNATURES_FILE
        ]
        payload = json.dumps({"files": entries}, separators=(",", ":")).encode()
        token = jwt.api_jws.PyJWS().encode(payload, self._key, algorithm=self.algorithm, headers={"kid": self.key_id})
        return json.dumps({"signatures": [token]}, separators=(",", ":")).encode()


# --- reading a signed bundle back ------------------------------------------------------------


def _token(files: Mapping[str, bytes]) -> str:
    raw = files.get(SIGNATURES_FILE)
    if raw is None:
        raise BundleSignatureError("the bundle is not signed (no .signatures.json)")
    try:
        doc = json.loads(raw)
        tokens = doc["signatures"]
    except (ValueError, TypeError, KeyError) as exc:
        raise BundleSignatureError(".signatures.json is malformed") from exc
    if not isinstance(tokens, list) or len(tokens) != 1 or not isinstance(tokens[0], str):
        raise BundleSignatureError(".signatures.json must hold exactly one JWS")
    return tokens[0]


def signature_key_id(files: Mapping[str, bytes]) -> str | None:
    """The ``kid`` a bundle's signature names (unverified), or None when unsigned or malformed."""
    try:
        kid = jwt.get_unverified_header(_token(files)).get("kid")
    except (BundleSignatureError, jwt.PyJWTError):
        return None
    return kid if isinstance(kid, str) else None


def verify_bundle_files(files: Mapping[str, bytes], keys: Iterable[VerificationKey]) -> str:
    """Check a bundle's signature as OPA does; return the key id it verified with.

    Args:
        files: The bundle's entries (:func:`gateway.controlplane.bundle.read_bundle`).
        keys: Trusted public keys; the JWS ``kid`` picks one.

    Raises:
        BundleSignatureError: Unsigned, unknown ``kid``, bad signature, a file missing from or
            not listed in the signature, or a digest mismatch.
    """
    token = _token(files)
    trusted = {k.key_id: k for k in keys}
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError as exc:
        raise BundleSignatureError(f"malformed JWS: {exc}") from exc
    key = trusted.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise BundleSignatureError(f"no trusted verification key has id {kid!r}")
    try:
        decoded = jwt.api_jws.PyJWS().decode_complete(token, key.public_pem, algorithms=[key.algorithm])
        listed = json.loads(decoded["payload"])["files"]
        expected = {f["name"]: f for f in listed}
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise BundleSignatureError(f"the signature does not verify with key {kid!r}: {exc}") from exc
    present = {name for name in files if name != SIGNATURES_FILE}
    if present != set(expected):
        raise BundleSignatureError(f"signed files differ from the bundle's: {sorted(present ^ set(expected))}")
    for name in sorted(present):
        entry = expected[name]
        if entry.get("algorithm") != HASH_ALGORITHM or entry.get("hash") != file_digest(name, files[name]):
            raise BundleSignatureError(f"{name}: digest mismatch")
    return key.key_id


# --- configuration ----------------------------------------------------------------------------


def dev_key_paths(config: Config) -> tuple[Path, Path]:
    """``(private, public)`` PEM paths of the development key under ``<run_dir>/bundle-signing``."""
    directory = Path(config.run_dir) / DEV_KEY_DIR
    return directory / _DEV_PRIVATE, directory / _DEV_PUBLIC


def ensure_dev_key(config: Config) -> Path:
    """Create the development signing key once (RSA 2048, PKCS#8 PEM, mode 0600); return its path.

    RSA, so signatures (and thus bundle bytes) stay deterministic.

    Safe against concurrent callers (processes sharing ``run_dir``): the first link wins and
    everyone derives the public key file (``dev-signing-key.pub.pem``) from the winner.

    Raises:
        SigningKeyError: The directory or the files cannot be written or read.
    """
    private, public = dev_key_paths(config)
    try:
        _write_dev_key(private, public)
    except OSError as exc:
        raise SigningKeyError(f"cannot create the development signing key in {private.parent}: {exc}") from exc
    return private


def _write_dev_key(private: Path, public: Path) -> None:
    private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not private.exists():
        pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd, tmp = tempfile.mkstemp(dir=private.parent, prefix=".dev-key-")
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, pem)
            os.close(fd)
            try:
                os.link(tmp, private)
                log.warning(
                    "generated a development bundle-signing key at %s; configure GATEWAY_BUNDLE_SIGNING_KEY_FILE "
                    "(and the data planes' GATEWAY_BUNDLE_VERIFICATION_KEYS) in production",
                    private,
                )
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    signer = BundleSigner.from_pem(_read(private, "development signing key"), source=str(private))
    wanted = signer.verification_key.public_pem.encode()
    if not public.exists() or public.read_bytes() != wanted:
        fd, tmp = tempfile.mkstemp(dir=public.parent, prefix=".dev-pub-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(wanted)
        os.chmod(tmp, 0o644)
        os.replace(tmp, public)


def load_signer(config: Config) -> BundleSigner:
    """The control plane's bundle signer.

    Source, first match: ``bundle_signing.key_file`` (``GATEWAY_BUNDLE_SIGNING_KEY_FILE``),
    ``bundle_signing.key`` (``GATEWAY_BUNDLE_SIGNING_KEY``, the PEM itself), else the
    development key under ``<run_dir>/bundle-signing`` (generated on first use). The key id is
    ``bundle_signing.key_id`` (``GATEWAY_BUNDLE_SIGNING_KEY_ID``) or the key's RFC 7638
    thumbprint.

    Raises:
        SigningKeyError: The key cannot be read or is not a supported private key.
    """
    cfg = config.bundle_signing
    if cfg.key_file:
        return BundleSigner.from_pem(_read(cfg.key_file, "bundle-signing key"), cfg.key_id, cfg.key_file)
    if cfg.key:
        return BundleSigner.from_pem(cfg.key.reveal().encode(), cfg.key_id, "GATEWAY_BUNDLE_SIGNING_KEY")
    path = ensure_dev_key(config)
    return BundleSigner.from_pem(_read(path, "development signing key"), cfg.key_id, str(path))


def verification_keys(config: Config) -> list[VerificationKey]:
    """The public keys a data plane's OPA trusts (may be empty: then OPA refuses every bundle).

    Source, first match:

    * ``bundle_signing.verification_keys`` (``GATEWAY_BUNDLE_VERIFICATION_KEYS``): entries
      ``<key id>=<PEM file>`` or ``<PEM file>`` (id: the RFC 7638 thumbprint);
    * the public half of a configured signing key (``GATEWAY_BUNDLE_SIGNING_KEY_FILE`` /
      ``GATEWAY_BUNDLE_SIGNING_KEY``: the all-in-one mode);
    * the development key: generated when this process also runs the control plane
      (``plane`` ``both``/``control``), else its public file if the control plane sharing
      ``run_dir`` has made one.

    Raises:
        SigningKeyError: A configured key cannot be read or parsed, or two keys share an id.
    """
    cfg = config.bundle_signing
    out: list[VerificationKey] = []
    if cfg.verification_keys:
        for entry in cfg.verification_keys:
            key_id, sep, path = entry.partition("=")
            if not sep:
                key_id, path = "", entry
            out.append(VerificationKey.from_pem(_read(path, "verification key"), key_id.strip(), path))
    elif cfg.key_file or cfg.key or config.plane != "data":
        out.append(load_signer(config).verification_key)
    else:
        public = dev_key_paths(config)[1]
        if public.exists():
            out.append(VerificationKey.from_pem(_read(public, "development verification key"), "", str(public)))
    ids = [k.key_id for k in out]
    if len(set(ids)) != len(ids):
        raise SigningKeyError(f"bundle verification keys share an id: {ids}")
    return out


def opa_keys_config(keys: Iterable[VerificationKey]) -> dict[str, dict[str, str]]:
    """OPA's ``keys`` configuration section: ``{key_id: {"key": PEM, "algorithm": alg}}``."""
    return {k.key_id: {"key": k.public_pem, "algorithm": k.algorithm} for k in keys}
