"""The gateway's own OPA assets, shipped as package data: the reserved Rego and the restricted capabilities.

* ``rego/gateway_runtime/main/main.rego`` (``package gateway_runtime.main``): the only
  documents the data plane queries;
* ``rego/system/log/log.rego`` (``package system.log``): the decision-log ``mask`` that keeps
  raw arguments and token claims out of OPA's decision logs;
* ``capabilities.json``: the pinned OPA capabilities (``deploy/opa/capabilities.json``,
  from ``opa capabilities --current`` of the pinned OPA) minus :data:`EXCLUDED_BUILTINS`. Every
  uploaded policy version is compiled against it (OPA "Capabilities": a builtin missing from
  the file is an ``undefined function`` compile error), so an approved version cannot reach the
  network, the process environment or the logs.

They live inside the package, not in the source tree, so a wheel install carries them; the
control plane refuses to start without them (:func:`require_assets`). Regenerate the
capabilities after changing the pinned OPA::

    .venv/bin/python -m gateway.policy.reserved deploy/opa/capabilities.json > gateway/policy/capabilities.json
"""

from __future__ import annotations

import hashlib
import sys
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from gateway.errors import ConfigError

__all__ = [
    "CAPABILITIES_FILE",
    "EXCLUDED_BUILTINS",
    "REGO_DIR",
    "REQUIRED_MODULES",
    "capabilities_summary",
    "excluded_reason",
    "load_capabilities",
    "load_reserved_modules",
    "require_assets",
    "restrict_capabilities",
]

_HERE = Path(__file__).resolve().parent
REGO_DIR = _HERE / "rego"
"""Root of the reserved Rego tree; paths below it are the bundle paths under ``reserved/``."""
CAPABILITIES_FILE = _HERE / "capabilities.json"
"""The restricted capabilities every policy version is compiled against."""
REQUIRED_MODULES = ("gateway_runtime/main/main.rego", "system/log/log.rego")
"""Reserved modules without which no bundle may be built (no entrypoint, or no decision-log mask)."""

EXCLUDED_BUILTINS: dict[str, str] = {
    "http.send": "sends HTTP requests (data exfiltration, SSRF)",
    "opa.runtime": "exposes the OPA process environment and configuration",
    "net.*": "DNS lookups (net.lookup_ip_addr) reach the network; the CIDR helpers go with them",
    "json.match_schema": "fetches remote $ref URLs of the schema it is given",
    "json.verify_schema": "fetches remote $ref URLs of the schema it is given",
    "rego.parse_module": "not needed by decision policy; parses arbitrary code at evaluation time",
    "trace": "writes evaluation notes meant for development, not production",
    "internal.print": "`print` writes to OPA's log, outside the decision-log mask",
}
"""Builtins a policy version may not call, with the reason; ``prefix.*`` excludes a namespace."""


def excluded_reason(name: str) -> str | None:
    """Return why builtin ``name`` is excluded (``None`` when it is allowed)."""
    if name in EXCLUDED_BUILTINS:
        return EXCLUDED_BUILTINS[name]
    for pattern, reason in EXCLUDED_BUILTINS.items():
        if pattern.endswith(".*") and name.startswith(pattern[:-1]):
            return reason
    return None


def restrict_capabilities(full: dict[str, Any]) -> dict[str, Any]:
    """Return ``full`` (an ``opa capabilities`` document) without the excluded builtins."""
    builtins = [b for b in full.get("builtins", []) if excluded_reason(str(b.get("name"))) is None]
    return {**full, "builtins": builtins}


@cache
def load_capabilities() -> bytes:
    """Return the restricted capabilities file's bytes.

    Raises:
        ConfigError: The file is missing or not a capabilities document.
    """
    try:
        raw = CAPABILITIES_FILE.read_bytes()
        doc = orjson.loads(raw)
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"the restricted OPA capabilities are missing or unreadable ({CAPABILITIES_FILE})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("builtins"), list):
        raise ConfigError(f"{CAPABILITIES_FILE} is not an OPA capabilities document")
    return raw


def capabilities_summary() -> dict[str, Any]:
    """The capabilities in force, as ``GET /v1/projection`` reports them.

    Returns:
        ``{"sha256": hex of the file, "allowed_builtins": [sorted names],
        "excluded_builtins": {name or "prefix.*": reason}}``.
    """
    raw = load_capabilities()
    names = sorted({str(b["name"]) for b in orjson.loads(raw)["builtins"]})
    return {
        "sha256": hashlib.sha256(raw).hexdigest(),
        "allowed_builtins": names,
        "excluded_builtins": dict(EXCLUDED_BUILTINS),
    }


def load_reserved_modules() -> dict[str, str]:
    """Read the reserved Rego modules (every ``*.rego`` below :data:`REGO_DIR`).

    Returns:
        ``{relative posix path: source}``, e.g. ``{"system/log/log.rego": "package system.log ..."}``.

    Raises:
        ConfigError: A module of :data:`REQUIRED_MODULES` is missing.
    """
    found = {
        path.relative_to(REGO_DIR).as_posix(): path.read_text()
        for path in sorted(REGO_DIR.rglob("*.rego"))
        if path.is_file() and not path.name.endswith("_test.rego")
    }
    missing = [m for m in REQUIRED_MODULES if m not in found]
    if missing:
        raise ConfigError(
            f"the gateway's reserved Rego is incomplete: {', '.join(missing)} missing below {REGO_DIR}; "
            "reinstall the package (bundles without system/log would log raw arguments)"
        )
    return found


def require_assets() -> None:
    """Check at start-up that the reserved Rego and the restricted capabilities are present.

    Raises:
        ConfigError: Either is missing or unreadable.
    """
    load_reserved_modules()
    load_capabilities()


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m gateway.policy.reserved <pinned capabilities.json>", file=sys.stderr)
        return 2
    full = orjson.loads(Path(argv[0]).read_bytes())
    sys.stdout.write(orjson.dumps(restrict_capabilities(full), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
