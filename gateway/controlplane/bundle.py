"""Build the OPA bundle (a deterministic gzipped tarball) for one projection (pure, no I/O)."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.policy.bundle_signing import SIGNATURES_FILE, BundleSignatureError, BundleSigner, verify_bundle_files

__all__ = ["BUNDLE_ROOTS", "build_bundle", "bundle_data", "read_bundle", "signature_problem"]

BUNDLE_ROOTS = ("gateway", "gateway_runtime", "system/log")
"""The data paths the bundle owns; user policy lives under ``gateway``."""


def _http_of(server: Mapping[str, Any], tool: str) -> dict[str, Any]:
    """``{"http": {"method", "path"}}`` for an API source's tool, else ``{}``."""
    api = server.get("api")
    for op in api.get("operations", []) if isinstance(api, Mapping) else []:
        if isinstance(op, Mapping) and op.get("tool") == tool:
            return {"http": {"method": op.get("method"), "path": op.get("path")}}
    return {}


def bundle_data(
    *,
    version: int,
    policy_version: int | None,
    revision: str,
    servers: list[dict[str, Any]],
    policy_data: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Return the bundle's root ``data.json`` document.

    ``gateway_runtime`` holds the projection identity and the registry: per server its
    transport, the names of the capabilities it declared, its tools with their
    annotations and its prompts with their argument names (schemas and descriptions
    stay in the routing table). The policy version's own
    ``data`` (if any) is placed at ``data.gateway`` verbatim; policy validation has
    already rejected keys that clash with the version's rules.

    An API source's tools also carry ``http``: ``{"method", "path"}`` of the operation each is
    bound to (``data.gateway_runtime.registry.servers[s].tools[t].http.method == "DELETE"``).

    Args:
        servers: Approved servers as in the routing table (``name``, ``transport``, ``tools``,
            and optionally ``prompts``, ``capabilities`` and, for an API source, ``api``).
    """
    registry = {
        s["name"]: {
            "transport": s["transport"],
            "capabilities": sorted(s.get("capabilities") or {}),
            "tools": {
                t["name"]: {"annotations": t.get("annotations", {}), **_http_of(s, t["name"])} for t in s["tools"]
            },
            "prompts": {
                p["name"]: {"arguments": [a["name"] for a in p.get("arguments") or []]} for p in s.get("prompts") or []
            },
        }
        for s in servers
    }
    doc: dict[str, Any] = {
        "gateway_runtime": {
            "projection": {"version": version, "policy_version": policy_version, "revision": revision},
            "registry": {"servers": registry},
        }
    }
    if policy_data:
        doc["gateway"] = dict(policy_data)
    return doc


def build_bundle(
    *,
    revision: str,
    version: int,
    policy_version: int | None,
    policy_modules: Mapping[str, str],
    reserved_modules: Mapping[str, str],
    data: Mapping[str, Any],
    signer: BundleSigner | None = None,
) -> bytes:
    """Return the gzipped bundle tarball; the same inputs always give the same bytes.

    Layout: ``.manifest``, ``data.json``, ``policy/<file>`` (the approved version's
    modules), ``reserved/<relative path>`` (the gateway's own modules), and with ``signer``
    ``.signatures.json`` (OPA bundle signing over every other file,
    :meth:`BundleSigner.signatures`). Entries are sorted, every mtime/uid/gid is 0, and the
    gzip header carries no timestamp; the signature is deterministic too for RSA keys (ECDSA
    signatures are randomized).

    Raises:
        gateway.policy.bundle_signing.BundleSignatureError: A structured file is not JSON
            (cannot happen for the files built here).
    """
    manifest = {
        "revision": revision,
        "roots": list(BUNDLE_ROOTS),
        "metadata": {"projection_version": version, "policy_version": policy_version},
    }
    files: dict[str, bytes] = {
        ".manifest": orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS),
        "data.json": orjson.dumps(data, option=orjson.OPT_SORT_KEYS),
    }
    files.update({f"policy/{name}": src.encode() for name, src in policy_modules.items()})
    files.update({f"reserved/{name}": src.encode() for name, src in reserved_modules.items()})
    if signer is not None:
        files[SIGNATURES_FILE] = signer.signatures(files)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def read_bundle(blob: bytes) -> dict[str, bytes]:
    """Return ``{entry name: content}`` of a bundle (for tests and diagnostics)."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for member in tar.getmembers():
            fh = tar.extractfile(member)
            if fh is not None:
                out[member.name] = fh.read()
    return out


def signature_problem(blob: bytes | None, signer: BundleSigner) -> str | None:
    """Why ``blob`` is not a bundle signed by ``signer`` (its key and key id), or None when it is.

    Checked as OPA checks it (:func:`gateway.policy.bundle_signing.verify_bundle_files`).
    """
    if blob is None:
        return "no bundle"
    try:
        verify_bundle_files(read_bundle(blob), [signer.verification_key])
    except (BundleSignatureError, tarfile.TarError, OSError, EOFError) as exc:
        return str(exc)
    return None
