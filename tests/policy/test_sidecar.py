"""The OPA sidecar's configuration holds the OPA token only, never the data planes' internal token."""

from __future__ import annotations

import stat
from pathlib import Path

import orjson

from gateway.config import Config
from gateway.policy.sidecar import OPA_TOKEN_FILE, OpaSidecar

INTERNAL = "internal-token-of-the-data-planes"


def _config(tmp_path: Path) -> Config:
    return Config.from_mapping(
        {
            "plane": "data",
            "control_plane": {"internal_token": INTERNAL, "url": "http://cp.test"},
            "jwt": {"issuer": "https://idp.test", "audience": "https://gw.test/mcp", "jwks_url": "file:///jwks"},
            "opa": {"bin": "/bin/true", "work_dir": str(tmp_path / "opa")},
        }
    )


def test_the_sidecar_is_given_the_opa_token_and_never_the_internal_token(tmp_path: Path) -> None:
    config = _config(tmp_path)
    work = tmp_path / "opa"
    work.mkdir()
    (work / "internal-token").write_text(INTERNAL)  # what earlier versions left there

    argv = OpaSidecar(config)._prepare()

    document = orjson.loads((work / "opa-config.json").read_bytes())
    token_path = Path(document["services"]["control_plane"]["credentials"]["bearer"]["token_path"])
    assert token_path == work / OPA_TOKEN_FILE
    assert token_path.read_text() == config.control_plane.opa_token.reveal() != INTERNAL
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    assert document["services"]["control_plane"]["url"] == "http://cp.test/v1/opa"
    written = {p.name: p.read_bytes() for p in work.iterdir()}
    assert "internal-token" not in written
    assert all(INTERNAL.encode() not in content for content in written.values())
    assert all(INTERNAL not in arg for arg in argv)


def test_an_explicit_opa_token_is_the_one_written(tmp_path: Path) -> None:
    config = _config(tmp_path)
    explicit = Config.from_mapping(
        {
            "plane": "data",
            "control_plane": {"internal_token": INTERNAL, "opa_token": "explicit-opa", "url": "http://cp.test"},
            "jwt": {"issuer": "https://idp.test", "audience": "https://gw.test/mcp", "jwks_url": "file:///jwks"},
            "opa": {"bin": "/bin/true", "work_dir": config.opa.work_dir},
        }
    )

    OpaSidecar(explicit)._prepare()

    assert (Path(config.opa.work_dir) / OPA_TOKEN_FILE).read_text() == "explicit-opa"
