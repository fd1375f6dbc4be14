"""KEK configuration: variables, files (and their modes), base64, errors that never echo key material."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from gateway.config import Config, CredentialsConfig, Secret
from gateway.credentials import Kek, load_keyring, parse_kek
from gateway.errors import ConfigError
from tests.credentials.helpers import new_kek

OPA = {"opa": {"bin": "/bin/true"}}


def _key_file(tmp_path: Path, name: str, content: str, mode: int = 0o600) -> str:
    path = tmp_path / name
    path.write_text(content + "\n")
    path.chmod(mode)
    return str(path)


def test_no_kek_configured_means_no_keyring() -> None:
    assert load_keyring(CredentialsConfig()) is None


def test_the_environment_variables_map_onto_the_credentials_settings(tmp_path: Path) -> None:
    current, previous = _key_file(tmp_path, "kek", new_kek()), _key_file(tmp_path, "old", new_kek())
    env = {
        "GATEWAY_PLANE": "data",
        "GATEWAY_JWT_ISSUER": "i",
        "GATEWAY_JWT_AUDIENCE": "a",
        "GATEWAY_INTERNAL_TOKEN": "x",
    }
    env |= {"GATEWAY_JWKS_URL": "file:///jwks.json", "GATEWAY_OPA_MANAGE": "false"}
    env |= {"GATEWAY_CREDENTIALS_KEK_FILE": current, "GATEWAY_CREDENTIALS_KEK_PREVIOUS_FILES": f"{previous}, "}
    creds = Config.from_env(env).credentials
    assert creds == CredentialsConfig(kek_file=current, kek_previous_files=(previous,))
    inline = new_kek()
    env.pop("GATEWAY_CREDENTIALS_KEK_FILE")
    env.pop("GATEWAY_CREDENTIALS_KEK_PREVIOUS_FILES")
    config = Config.from_env(env | {"GATEWAY_CREDENTIALS_KEK": inline})
    assert config.credentials.kek == Secret(inline)
    assert inline not in repr(config)


def test_a_file_kek_with_previous_ones_makes_a_keyring(tmp_path: Path) -> None:
    keys = [new_kek() for _ in range(3)]
    files = [_key_file(tmp_path, f"k{i}", k, 0o400 if i else 0o600) for i, k in enumerate(keys)]
    ring = load_keyring(CredentialsConfig(kek_file=files[0], kek_previous_files=tuple(files[1:])))
    assert ring is not None
    ids = [Kek(base64.b64decode(k)).id for k in keys]
    assert ring.current.id == ids[0]
    assert set(ring.ids) == set(ids) and all(i in ring for i in ids)


def test_the_inline_kek_accepts_url_safe_base64_and_whitespace() -> None:
    raw = bytes(range(256))[-32:]  # bytes whose base64 holds + and /
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    ring = load_keyring(CredentialsConfig(kek=Secret(f"  {urlsafe}\n")))
    assert ring is not None and ring.current.key == raw


def test_the_kek_id_is_16_hex_digits_derived_from_the_key() -> None:
    kek = Kek(b"\x01" * 32)
    assert len(kek.id) == 16 and int(kek.id, 16) >= 0
    assert kek.id == Kek(b"\x01" * 32).id != Kek(b"\x02" * 32).id


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(base64.b64encode(os.urandom(16)).decode(), id="16-bytes"),
        pytest.param(base64.b64encode(os.urandom(33)).decode(), id="33-bytes"),
        pytest.param("not base64 at all, a s3cr3t-passphrase!!", id="passphrase"),
        pytest.param("", id="empty"),
    ],
)
def test_a_malformed_kek_is_refused_without_echoing_it(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_kek(text, "GATEWAY_CREDENTIALS_KEK")
    message = str(caught.value)
    assert "GATEWAY_CREDENTIALS_KEK" in message and "32" in message
    assert not text or text not in message
    assert caught.value.__cause__ is None and caught.value.__context__ is None


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o666])
def test_a_key_file_others_or_the_group_can_access_is_refused(tmp_path: Path, mode: int) -> None:
    key = new_kek()
    path = _key_file(tmp_path, "kek", key, mode)
    with pytest.raises(ConfigError, match="chmod 600") as caught:
        load_keyring(CredentialsConfig(kek_file=path))
    assert path in str(caught.value) and key not in str(caught.value)


def test_a_missing_or_non_regular_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_CREDENTIALS_KEK_FILE .*cannot read"):
        load_keyring(CredentialsConfig(kek_file=str(tmp_path / "absent")))
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_keyring(CredentialsConfig(kek_file=str(directory)))
    current = _key_file(tmp_path, "kek", new_kek())
    with pytest.raises(ConfigError, match="GATEWAY_CREDENTIALS_KEK_PREVIOUS_FILES"):
        load_keyring(CredentialsConfig(kek_file=current, kek_previous_files=(str(tmp_path / "gone"),)))


def test_a_key_file_of_the_wrong_content_is_refused_without_echoing_it(tmp_path: Path) -> None:
    secret = "hunter2-passphrase-not-a-key"
    path = _key_file(tmp_path, "kek", secret)
    with pytest.raises(ConfigError) as caught:
        load_keyring(CredentialsConfig(kek_file=path))
    assert path in str(caught.value) and secret not in str(caught.value)


def test_inconsistent_settings_are_configuration_errors(tmp_path: Path) -> None:
    path = _key_file(tmp_path, "kek", new_kek())
    base = {"database_url": "postgresql://x/y", "control_plane": {"admin_token": "t"}, "plane": "control"} | OPA
    with pytest.raises(ConfigError, match="not both"):
        Config.from_mapping(base | {"credentials": {"kek_file": path, "kek": new_kek()}})
    with pytest.raises(ConfigError, match="needs a current key"):
        Config.from_mapping(base | {"credentials": {"kek_previous_files": [path]}})
    with pytest.raises(ConfigError, match="unknown key"):
        Config.from_mapping(base | {"credentials": {"kek_files": path}})
