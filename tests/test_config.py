"""Tests for gateway.config: defaults < TOML < environment, validated once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

import pytest

import gateway.config as config_module
from gateway.config import ENV_KEYS, Config, Secret, session_key_bytes
from gateway.errors import ConfigError

ADMIN = "admin-token-s3cr3t-value"
DB = "postgresql://gateway:db-pa55word@127.0.0.1:5432/gateway"
BASE_ENV = {
    "DATABASE_URL": DB,
    "GATEWAY_ADMIN_TOKEN": ADMIN,
    "GATEWAY_JWT_ISSUER": "https://idp.test.invalid",
    "GATEWAY_JWT_AUDIENCE": "https://gw.test.invalid/mcp",
    "GATEWAY_JWKS_URL": "file:///tmp/jwks.json",
    "OPA_BIN": "/bin/true",
}


def _env(**changes: str | None) -> dict[str, str]:
    env = dict(BASE_ENV)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


def _config_error(**kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as exc_info:
        Config.from_env(**kwargs)
    assert exc_info.value.category == "config_error"
    return exc_info.value


def test_from_env_reads_the_base_environment() -> None:
    cfg = Config.from_env(BASE_ENV)

    assert cfg.database_url.reveal() == DB
    assert cfg.control_plane.admin_token.reveal() == ADMIN
    assert (cfg.jwt.issuer, cfg.jwt.audience, cfg.jwt.jwks_url) == (
        "https://idp.test.invalid",
        "https://gw.test.invalid/mcp",
        "file:///tmp/jwks.json",
    )
    assert cfg.opa.bin == "/bin/true"
    assert cfg.plane == "both"


@pytest.mark.parametrize(
    ("env_key", "value", "attr", "expected"),
    [
        pytest.param("GATEWAY_TENANT", "t1", "tenant", "t1", id="tenant"),
        pytest.param("GATEWAY_ENVIRONMENT", "staging", "environment", "staging", id="environment"),
        pytest.param("GATEWAY_PLANE", "control", "plane", "control", id="plane"),
        pytest.param("GATEWAY_RUN_DIR", "/tmp/run", "run_dir", "/tmp/run", id="run-dir"),
        pytest.param("GATEWAY_CONTROL_HOST", "0.0.0.0", "control_plane.host", "0.0.0.0", id="control-host"),
        pytest.param("GATEWAY_CONTROL_PORT", "9090", "control_plane.port", 9090, id="control-port"),
        pytest.param("GATEWAY_CONTROL_URL", "http://cp:1/", "control_plane.url", "http://cp:1", id="control-url"),
        pytest.param("GATEWAY_DATA_HOST", "0.0.0.0", "data_plane.host", "0.0.0.0", id="data-host"),
        pytest.param("GATEWAY_DATA_PORT", "9091", "data_plane.port", 9091, id="data-port"),
        pytest.param("GATEWAY_PUBLIC_URL", "https://gw/", "data_plane.public_url", "https://gw", id="public-url"),
        pytest.param("GATEWAY_DATAPLANE_ID", "dp-fixed", "data_plane.id", "dp-fixed", id="dataplane-id"),
        pytest.param("GATEWAY_UPSTREAM_TIMEOUT", "2.5", "data_plane.upstream_timeout", 2.5, id="upstream-timeout"),
        pytest.param("GATEWAY_JWT_ROLES_CLAIM", "groups", "jwt.roles_claim", "groups", id="roles-claim"),
        pytest.param("GATEWAY_OPA_ADDR", "127.0.0.1:9181", "opa.url", "http://127.0.0.1:9181", id="opa-addr"),
        pytest.param("GATEWAY_OPA_URL", "http://opa:8181/", "opa.url", "http://opa:8181", id="opa-url"),
        pytest.param("GATEWAY_OPA_MANAGE", "false", "opa.manage", False, id="opa-manage"),
        pytest.param("GATEWAY_AUDIT_SPOOL_DIR", "/tmp/spool", "audit.spool_dir", "/tmp/spool", id="audit-spool"),
    ],
)
def test_from_env_maps_each_variable_to_its_key(env_key: str, value: str, attr: str, expected: Any) -> None:
    node: Any = Config.from_env(_env(**{env_key: value}))
    for part in attr.split("."):
        node = getattr(node, part)

    assert node == expected


def test_every_env_key_names_an_existing_config_field() -> None:
    for env_key, dotted in ENV_KEYS.items():
        node: Any = Config()
        for part in dotted.split("."):
            assert hasattr(node, part), env_key
            node = getattr(node, part)


def test_from_env_ignores_empty_variables() -> None:
    cfg = Config.from_env(_env(GATEWAY_TENANT="", GATEWAY_CONTROL_PORT=""))

    assert cfg.tenant == "tenant_local"
    assert cfg.control_plane.port == 8080


def test_from_env_reads_a_toml_file(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        f"""
database_url = "{DB}"
tenant = "from_toml"
plane = "both"

[control_plane]
port = 7000
admin_token = "{ADMIN}"

[data_plane]
port = 7001
max_sessions = 5

[jwt]
issuer = "https://idp.toml.invalid"
audience = "https://gw.toml.invalid/mcp"
jwks_url = "https://idp.toml.invalid/jwks.json"
algorithms = ["RS256"]

[opa]
bin = "/bin/true"
manage = false

[audit]
batch_size = 10
""",
    )

    cfg = Config.from_env({}, toml_path=path)

    assert cfg.tenant == "from_toml"
    assert cfg.control_plane.port == 7000
    assert cfg.control_plane.url == "http://127.0.0.1:7000"
    assert (cfg.data_plane.port, cfg.data_plane.max_sessions) == (7001, 5)
    assert cfg.jwt.algorithms == ("RS256",)
    assert cfg.jwt.jwks_url == "https://idp.toml.invalid/jwks.json"
    assert cfg.opa.manage is False
    assert cfg.audit.batch_size == 10


def test_gateway_config_variable_names_the_toml_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'tenant = "via_variable"\n')

    assert Config.from_env(_env(GATEWAY_CONFIG=path)).tenant == "via_variable"


def test_environment_overrides_the_toml_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'tenant = "from_toml"\n[control_plane]\nport = 7000\nhost = "10.0.0.1"\n')

    cfg = Config.from_env(_env(GATEWAY_TENANT="from_env", GATEWAY_CONTROL_PORT="7100"), toml_path=path)

    assert cfg.tenant == "from_env"
    assert cfg.control_plane.port == 7100
    assert cfg.control_plane.host == "10.0.0.1"


@pytest.mark.parametrize(
    ("toml_text", "env_changes"),
    [
        pytest.param("surprise = 1\n", {}, id="unknown-top-level-key"),
        pytest.param('[jwt]\nissuer_url = "x"\n', {}, id="unknown-section-key"),
        pytest.param("[nonsense]\nx = 1\n", {}, id="unknown-section"),
        pytest.param('audit = "not a table"\n', {}, id="section-not-a-table"),
        pytest.param('jwt = "not a table"\n', {"GATEWAY_JWT_ISSUER": "x"}, id="env-into-section-not-a-table"),
        pytest.param('[control_plane]\nport = "eighty"\n', {}, id="bad-int-in-toml"),
        pytest.param("[control_plane]\nport = true\n", {}, id="bool-as-int"),
        pytest.param("[control_plane]\nport = [1]\n", {}, id="array-as-int"),
        pytest.param("tenant = 5\n", {}, id="int-as-string"),
        pytest.param('[opa]\nmanage = "maybe"\n', {}, id="bad-bool"),
        pytest.param("[jwt]\nalgorithms = 5\n", {}, id="bad-tuple"),
        pytest.param("this is = = not toml\n", {}, id="not-toml"),
    ],
)
def test_malformed_toml_raises_config_error(tmp_path: Path, toml_text: str, env_changes: dict[str, str]) -> None:
    _config_error(environ=_env(**env_changes), toml_path=_toml(tmp_path, toml_text))


def test_a_toml_file_that_is_not_utf8_raises_config_error(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(b'tenant = "\xff\xfe"\n')

    _config_error(environ=BASE_ENV, toml_path=str(path))


def test_a_missing_toml_file_raises_config_error(tmp_path: Path) -> None:
    _config_error(environ=BASE_ENV, toml_path=str(tmp_path / "absent.toml"))


@pytest.mark.parametrize(
    ("env_key", "value"),
    [
        pytest.param("GATEWAY_CONTROL_PORT", "eighty", id="control-port"),
        pytest.param("GATEWAY_DATA_PORT", "1.5", id="data-port-float"),
        pytest.param("GATEWAY_UPSTREAM_TIMEOUT", "soon", id="upstream-timeout"),
        pytest.param("GATEWAY_OPA_MANAGE", "perhaps", id="opa-manage"),
    ],
)
def test_malformed_environment_values_raise_config_error(env_key: str, value: str) -> None:
    _config_error(environ=_env(**{env_key: value}))


@pytest.mark.parametrize(
    ("plane", "missing"),
    [
        pytest.param("both", "DATABASE_URL", id="both-without-database"),
        pytest.param("both", "GATEWAY_ADMIN_TOKEN", id="both-without-admin-token"),
        pytest.param("control", "DATABASE_URL", id="control-without-database"),
        pytest.param("control", "GATEWAY_ADMIN_TOKEN", id="control-without-admin-token"),
        pytest.param("both", "GATEWAY_JWT_ISSUER", id="both-without-issuer"),
        pytest.param("data", "GATEWAY_JWT_ISSUER", id="data-without-issuer"),
        pytest.param("data", "GATEWAY_JWT_AUDIENCE", id="data-without-audience"),
        pytest.param("data", "GATEWAY_JWKS_URL", id="data-without-jwks-url"),
    ],
)
def test_required_settings_are_enforced_per_plane(plane: str, missing: str) -> None:
    _config_error(environ=_env(GATEWAY_PLANE=plane, **{missing: None}))


@pytest.mark.parametrize(
    ("plane", "absent"),
    [
        pytest.param(
            "control", ("GATEWAY_JWT_ISSUER", "GATEWAY_JWT_AUDIENCE", "GATEWAY_JWKS_URL"), id="control-no-jwt"
        ),
        pytest.param("data", ("DATABASE_URL",), id="data-no-database"),
    ],
)
def test_a_plane_does_not_need_the_other_planes_settings(plane: str, absent: tuple[str, ...]) -> None:
    cfg = Config.from_env(_env(GATEWAY_PLANE=plane, **dict.fromkeys(absent)))

    assert cfg.plane == plane


def test_data_plane_without_admin_or_internal_token_raises_config_error() -> None:
    _config_error(environ=_env(GATEWAY_PLANE="data", GATEWAY_ADMIN_TOKEN=None, DATABASE_URL=None))


def test_data_plane_accepts_an_explicit_internal_token_without_admin_token() -> None:
    cfg = Config.from_env(_env(GATEWAY_PLANE="data", GATEWAY_ADMIN_TOKEN=None, GATEWAY_INTERNAL_TOKEN="internal-x"))

    assert cfg.control_plane.internal_token.reveal() == "internal-x"


@pytest.mark.parametrize("plane", [pytest.param(p, id=p) for p in ("Both", "all", "dataplane", " data")])
def test_an_unknown_plane_raises_config_error(plane: str) -> None:
    _config_error(environ=_env(GATEWAY_PLANE=plane))


def test_an_empty_plane_in_toml_raises_config_error(tmp_path: Path) -> None:
    _config_error(environ=BASE_ENV, toml_path=_toml(tmp_path, 'plane = ""\n'))


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("ftp://idp/jwks.json", id="ftp"),
        pytest.param("/etc/jwks.json", id="bare-path"),
        pytest.param("idp.example.com/jwks.json", id="no-scheme"),
        pytest.param("HTTPS://idp/jwks.json", id="upper-case-scheme"),
    ],
)
def test_jwks_url_must_be_http_https_or_file(url: str) -> None:
    _config_error(environ=_env(GATEWAY_JWKS_URL=url))


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://idp/jwks.json", id="http"),
        pytest.param("https://idp/jwks.json", id="https"),
        pytest.param("file:///tmp/jwks.json", id="file"),
    ],
)
def test_jwks_url_accepts_http_https_and_file(url: str) -> None:
    assert Config.from_env(_env(GATEWAY_JWKS_URL=url)).jwt.jwks_url == url


def test_internal_token_is_derived_from_the_admin_token_deterministically() -> None:
    first = Config.from_env(BASE_ENV).control_plane.internal_token
    second = Config.from_env(BASE_ENV).control_plane.internal_token
    other = Config.from_env(_env(GATEWAY_ADMIN_TOKEN="another-admin-token")).control_plane.internal_token

    assert first == second
    assert first.reveal() == hmac.new(ADMIN.encode(), b"gateway-internal-token", hashlib.sha256).hexdigest()
    assert first.reveal() != ADMIN
    assert first != other


def test_an_explicit_internal_token_is_not_replaced() -> None:
    cfg = Config.from_env(_env(GATEWAY_INTERNAL_TOKEN="explicit-internal"))

    assert cfg.control_plane.internal_token.reveal() == "explicit-internal"


def test_the_opa_token_is_derived_from_the_internal_token_and_opens_nothing_of_it() -> None:
    cfg = Config.from_env(_env(GATEWAY_INTERNAL_TOKEN="explicit-internal"))
    derived = Config.from_env(BASE_ENV).control_plane

    opa = cfg.control_plane.opa_token.reveal()
    assert opa == hmac.new(b"explicit-internal", b"gateway-opa-token", hashlib.sha256).hexdigest()
    assert (
        derived.opa_token.reveal() == config_module.derived_token(derived.internal_token, "gateway-opa-token").reveal()
    )
    assert len({opa, derived.opa_token.reveal(), "explicit-internal", ADMIN, derived.internal_token.reveal()}) == 5


def test_an_explicit_opa_token_is_kept_and_reaches_a_data_plane_without_an_admin_token() -> None:
    env = _env(GATEWAY_PLANE="data", GATEWAY_ADMIN_TOKEN=None, GATEWAY_INTERNAL_TOKEN="i", GATEWAY_OPA_TOKEN="o")
    cfg = Config.from_env(env)

    assert (cfg.control_plane.internal_token.reveal(), cfg.control_plane.opa_token.reveal()) == ("i", "o")
    assert "GATEWAY_OPA_TOKEN" in ENV_KEYS


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"GATEWAY_INTERNAL_TOKEN": "same", "GATEWAY_OPA_TOKEN": "same"}, id="opa-is-the-internal-token"),
        pytest.param({"GATEWAY_OPA_TOKEN": ADMIN}, id="opa-is-the-admin-token"),
    ],
)
def test_the_opa_token_must_differ_from_the_other_tokens(changes: dict[str, str]) -> None:
    _config_error(environ=_env(**changes))


@pytest.mark.parametrize(
    "absent",
    [
        pytest.param(("GATEWAY_JWT_ISSUER",), id="no-issuer"),
        pytest.param(("GATEWAY_JWT_AUDIENCE", "GATEWAY_JWKS_URL"), id="issuer-only"),
    ],
)
def test_a_control_plane_takes_a_whole_jwt_configuration_or_none(absent: tuple[str, ...]) -> None:
    error = _config_error(environ=_env(GATEWAY_PLANE="control", **dict.fromkeys(absent)))

    assert all(name in str(error) for name in absent)


def test_a_control_plane_checks_the_jwks_url_too() -> None:
    _config_error(environ=_env(GATEWAY_PLANE="control", GATEWAY_JWKS_URL="ftp://idp/jwks.json"))


def test_jwt_configured_says_whether_all_three_settings_are_there() -> None:
    full = Config.from_env(_env(GATEWAY_PLANE="control")).jwt
    none = Config.from_env(
        _env(GATEWAY_PLANE="control", GATEWAY_JWT_ISSUER=None, GATEWAY_JWT_AUDIENCE=None, GATEWAY_JWKS_URL=None)
    ).jwt

    assert full.configured and not none.configured


def test_repr_of_config_never_shows_secrets() -> None:
    cfg = Config.from_env(_env(GATEWAY_INTERNAL_TOKEN="explicit-internal-value"))
    text = repr(cfg) + str(cfg)

    assert ADMIN not in text
    assert "db-pa55word" not in text
    assert "explicit-internal-value" not in text
    assert cfg.control_plane.admin_token.reveal() == ADMIN


@pytest.mark.parametrize(
    ("secret", "shown"),
    [
        pytest.param(Secret("hunter2"), "Secret('**********')", id="set"),
        pytest.param(Secret(""), "Secret('')", id="empty"),
    ],
)
def test_secret_repr_and_str_hide_the_value(secret: Secret, shown: str) -> None:
    assert repr(secret) == str(secret) == f"{secret!r}" == shown


def test_secret_compares_by_value_and_is_falsy_when_empty() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert hash(Secret("a")) == hash(Secret("a"))
    assert not Secret("")
    assert Secret("x")


def test_derived_defaults_fill_urls_ids_and_directories() -> None:
    cfg = Config.from_env(_env(GATEWAY_RUN_DIR="/tmp/gw-run"))

    assert cfg.control_plane.url == "http://127.0.0.1:8080"
    assert cfg.data_plane.public_url == "http://127.0.0.1:8081"
    assert cfg.data_plane.id.startswith("dp-")
    assert cfg.opa.url == "http://127.0.0.1:8181"
    assert cfg.opa.work_dir == f"/tmp/gw-run/opa-{cfg.data_plane.id}"
    assert cfg.audit.spool_dir == "/tmp/gw-run/audit-spool"


def test_data_plane_id_is_stable_across_restarts_and_names_host_and_port() -> None:
    # The id names the audit spool: a restarted data plane must find what it spooled.
    first, second = Config.from_env(BASE_ENV).data_plane.id, Config.from_env(BASE_ENV).data_plane.id
    assert first == second
    assert first.startswith("dp-") and first.endswith("-8081")
    assert Config.from_env(_env(GATEWAY_DATA_PORT="9091")).data_plane.id.endswith("-9091")


def test_managed_opa_without_a_binary_raises_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config_module.shutil, "which", lambda _name: None)
    monkeypatch.setattr(config_module, "PROJECT_ROOT", tmp_path)

    _config_error(environ=_env(OPA_BIN=None))


def test_a_data_plane_with_an_unmanaged_opa_needs_no_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config_module.shutil, "which", lambda _name: None)
    monkeypatch.setattr(config_module, "PROJECT_ROOT", tmp_path)

    env = _env(OPA_BIN=None, GATEWAY_OPA_MANAGE="0", GATEWAY_OPA_URL="http://opa:8181", GATEWAY_PLANE="data")
    cfg = Config.from_env(env)

    assert (cfg.opa.manage, cfg.opa.bin, cfg.opa.url) == (False, "", "http://opa:8181")


@pytest.mark.parametrize("plane", ["both", "control"])
def test_the_control_plane_needs_an_opa_binary_to_validate_policies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, plane: str
) -> None:
    monkeypatch.setattr(config_module.shutil, "which", lambda _name: None)
    monkeypatch.setattr(config_module, "PROJECT_ROOT", tmp_path)

    _config_error(environ=_env(OPA_BIN=None, GATEWAY_OPA_MANAGE="0", GATEWAY_PLANE=plane))


def test_a_relative_opa_bin_is_made_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "opa").write_text("")
    monkeypatch.chdir(tmp_path)

    assert Config.from_env(_env(OPA_BIN="opa")).opa.bin == str(tmp_path / "opa")


def test_from_mapping_accepts_secret_instances() -> None:
    cfg = Config.from_mapping(
        {
            "plane": "control",
            "database_url": Secret(DB),
            "control_plane": {"admin_token": Secret(ADMIN)},
            "opa": {"bin": "/bin/true"},
        }
    )

    assert cfg.database_url.reveal() == DB


def test_a_plane_override_is_applied_before_validation() -> None:
    # `gateway serve --plane data` must not demand the control plane's DATABASE_URL.
    env = _env(DATABASE_URL=None, GATEWAY_ADMIN_TOKEN=None, GATEWAY_INTERNAL_TOKEN="internal")
    with pytest.raises(ConfigError):
        Config.from_env(env)
    assert Config.from_env(env, overrides={"plane": "data"}).plane == "data"


def test_sse_polling_settings_are_read_and_checked() -> None:
    env = {
        **BASE_ENV,
        "GATEWAY_SSE_POLL_INTERVAL": "25",
        "GATEWAY_SSE_RETRY": "0.5",
        "GATEWAY_SSE_RESUME_WINDOW": "90",
    }
    dp = Config.from_env(env).data_plane
    assert (dp.sse_poll_interval, dp.sse_retry, dp.sse_resume_window) == (25.0, 0.5, 90.0)
    assert Config.from_env(BASE_ENV).data_plane.sse_poll_interval == 0  # off unless set
    for key, value in [
        ("GATEWAY_SSE_POLL_INTERVAL", "-1"),
        ("GATEWAY_SSE_RETRY", "7200"),
        ("GATEWAY_SSE_RESUME_WINDOW", "0"),
        ("GATEWAY_SSE_RESUME_WINDOW", "inf"),
    ]:
        assert "GATEWAY_SSE" in str(_config_error(environ={**BASE_ENV, key: value}))


def test_an_admin_audience_the_data_plane_also_accepts_is_refused() -> None:
    base = {
        "DATABASE_URL": "postgresql://x",
        "GATEWAY_ADMIN_TOKEN": "t",
        "GATEWAY_JWT_ISSUER": "https://idp",
        "GATEWAY_JWT_AUDIENCE": "agents",
        "GATEWAY_JWKS_URL": "file:///jwks.json",
        "GATEWAY_PUBLIC_URL": "https://gw.example",
        "GATEWAY_ADMIN_JWT_ISSUER": "https://idp",
        "GATEWAY_ADMIN_JWKS_URL": "file:///jwks.json",
    }
    for audience in ("agents", "https://gw.example/mcp", "https://gw.example/mcp/github"):
        with pytest.raises(ConfigError, match="admin JWT audience must differ"):
            Config.from_env({**base, "GATEWAY_ADMIN_JWT_AUDIENCE": audience})
    assert (
        Config.from_env({**base, "GATEWAY_ADMIN_JWT_AUDIENCE": "gateway-admin"}).admin.jwt_audience == "gateway-admin"
    )
    with pytest.raises(ConfigError, match="GATEWAY_ADMIN_TOKEN_ENABLED=false needs an admin JWT issuer"):
        Config.from_env(
            {
                **{k: v for k, v in base.items() if not k.startswith("GATEWAY_ADMIN_J")},
                "GATEWAY_ADMIN_TOKEN_ENABLED": "false",
            }
        )


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        pytest.param({"GATEWAY_SESSION_KEY": "c2hvcnQ="}, "GATEWAY_SESSION_KEY", id="session-key-short"),
        pytest.param({"GATEWAY_SESSION_KEY": "not base64 at all!"}, "GATEWAY_SESSION_KEY", id="session-key-garbage"),
        pytest.param({"GATEWAY_SESSION_MAX_AGE": "0"}, "GATEWAY_SESSION_MAX_AGE", id="session-max-age-zero"),
        pytest.param({"GATEWAY_SESSION_MAX_AGE": "1e12"}, "GATEWAY_SESSION_MAX_AGE", id="session-max-age-huge"),
        pytest.param({"GATEWAY_DATAPLANE_ID": "dp/with/slash"}, "GATEWAY_DATAPLANE_ID", id="dataplane-id"),
        pytest.param({"GATEWAY_SESSION_EVENTS_INTERVAL": "0"}, "GATEWAY_SESSION_EVENTS_INTERVAL", id="events-zero"),
        pytest.param({"GATEWAY_OPA_INSTANCE_ID": "pod-1"}, "GATEWAY_OPA_MANAGE=false", id="instance-id-managed"),
        pytest.param(
            {"GATEWAY_OPA_INSTANCE_ID": "pod 1", "GATEWAY_OPA_MANAGE": "false"},
            "GATEWAY_OPA_INSTANCE_ID must match",
            id="instance-id-malformed",
        ),
    ],
)
def test_session_and_opa_instance_settings_are_checked(changes: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(names)):
        Config.from_env(_env(**changes))


def test_data_planes_sharing_an_internal_token_share_a_session_key_and_another_token_gives_another() -> None:
    first = Config.from_env(_env(GATEWAY_PLANE="data", GATEWAY_INTERNAL_TOKEN="shared"))
    second = Config.from_env(_env(GATEWAY_PLANE="data", GATEWAY_INTERNAL_TOKEN="shared", GATEWAY_DATA_PORT="9000"))
    other = Config.from_env(_env(GATEWAY_PLANE="data", GATEWAY_INTERNAL_TOKEN="another"))
    key = session_key_bytes(first.data_plane.session_key)
    assert len(key) == 32 and key == session_key_bytes(second.data_plane.session_key)
    assert key != session_key_bytes(other.data_plane.session_key)
    explicit = base64.urlsafe_b64encode(bytes(range(32))).decode()
    assert session_key_bytes(Config.from_env(_env(GATEWAY_SESSION_KEY=explicit)).data_plane.session_key) == bytes(
        range(32)
    )
