"""Credential kinds: the secret/non-secret split, refused names, and messages that never echo input."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.credentials import KINDS, validate_credential, validate_rotation
from gateway.db.migrate import MIGRATIONS_DIR
from gateway.errors import RequestRejected
from tests.credentials.helpers import CANARY, bodies, canary


@pytest.mark.parametrize("body", [pytest.param(b, id=b["kind"]) for b in bodies()])
def test_every_kind_keeps_its_secret_out_of_the_clear_config(body: dict[str, Any]) -> None:
    validated = validate_credential(body["kind"], body.get("config"), body["secret"])
    assert validated.kind == body["kind"]
    assert CANARY not in repr(validated.config) and CANARY not in repr(validated)
    assert CANARY in validated.secret.to_bytes().decode()


def test_map_kinds_show_their_names_and_oauth_kinds_their_settings() -> None:
    by_kind = {b["kind"]: validate_credential(b["kind"], b.get("config"), b["secret"]) for b in bodies()}
    assert by_kind["bearer"].config == {}
    assert by_kind["headers"].config == {"header_names": ["x-api-key", "x-other"]}
    assert by_kind["headers"].secret.reveal()["headers"]["x-api-key"] == canary("header")
    assert by_kind["query"].config == {"param_names": ["api_key"]}
    assert by_kind["stdio_env"].config == {"env_names": ["API_TOKEN"]}
    assert by_kind["oauth_client_credentials"].config == {
        "token_url": "https://idp.example.com/token",
        "client_id": "gw",
        "scope": "read write",
        "auth_method": "client_secret_basic",
    }
    exchange = by_kind["oauth_token_exchange"]
    assert exchange.config["auth_method"] == "client_secret_post"
    assert exchange.config["requested_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert exchange.secret.reveal() == {"client_secret": canary("tx")}


def test_the_migration_allows_exactly_the_kinds_the_code_knows() -> None:
    # The latest migration constraining credentials.kind (other tables have a `kind` column too).
    touching = [
        p for p in sorted(MIGRATIONS_DIR.glob("*.sql")) if "kind IN (" in (t := p.read_text()) and "credentials" in t
    ]
    latest = touching[-1]
    check = latest.read_text().split("kind IN (", 1)[1].split(")", 1)[0]
    assert {k.strip().strip("'") for k in check.replace("\n", " ").split(",")} == set(KINDS)


def test_rotation_keeps_the_oauth_settings_and_follows_the_new_names() -> None:
    cc = bodies()[4]
    stored = validate_credential(cc["kind"], cc["config"], cc["secret"]).config
    rotated = validate_rotation("oauth_client_credentials", stored, {"client_secret": "new"})
    assert rotated.config == stored and rotated.secret.reveal() == {"client_secret": "new"}
    headers = validate_rotation("headers", {"header_names": ["x-api-key"]}, {"headers": {"X-New": "v"}})
    assert headers.config == {"header_names": ["x-new"]}


C = CANARY


@pytest.mark.parametrize(
    ("kind", "config", "secret", "field"),
    [
        pytest.param("bogus", None, {"token": C}, "kind", id="unknown-kind"),
        pytest.param(C, None, {"token": C}, "kind", id="canary-kind"),
        pytest.param("bearer", None, {"token": f"{C} with space"}, "secret.token", id="token-space"),
        pytest.param("bearer", None, {"token": 12345}, "secret.token", id="token-not-string"),
        pytest.param("bearer", None, {"token": ""}, "secret.token", id="token-empty"),
        pytest.param("bearer", None, {"token": "x" * 8193}, "secret.token", id="token-too-long"),
        pytest.param("bearer", None, {"token": C, C: C}, "secret", id="unknown-secret-field"),
        pytest.param("bearer", None, {}, "secret.token", id="no-token"),
        pytest.param("bearer", None, C, "secret", id="secret-not-object"),
        pytest.param("bearer", {C: C}, {"token": C}, "config", id="bearer-config"),
        pytest.param("headers", None, {"headers": {"Host": C}}, "'host'", id="host"),
        pytest.param("headers", None, {"headers": {"content-length": C}}, "'content-length'", id="content-length"),
        pytest.param("headers", None, {"headers": {"Connection": C}}, "'connection'", id="connection"),
        pytest.param("headers", None, {"headers": {"Transfer-Encoding": C}}, "'transfer-encoding'", id="te"),
        pytest.param("headers", None, {"headers": {"Mcp-Session-Id": C}}, "'mcp-session-id'", id="mcp-session"),
        pytest.param("headers", None, {"headers": {f"{C}: x": "v"}}, "secret.headers", id="bad-name"),
        pytest.param("headers", None, {"headers": {"X-A": f"{C}\r\nX-Injected: 1"}}, "secret.headers", id="crlf"),
        pytest.param("headers", None, {"headers": {"X-A": C, "x-a": C}}, "differ only in case", id="dup"),
        pytest.param("headers", None, {"headers": {}}, "secret.headers", id="no-headers"),
        pytest.param("query", None, {"params": {f"{C}&x=": "v"}}, "secret.params", id="param-name"),
        pytest.param("query", None, {"params": {"k": f"{C}\n"}}, "secret.params", id="param-newline"),
        pytest.param("stdio_env", None, {"env": {"PATH": C}}, "PATH", id="path"),
        pytest.param("stdio_env", None, {"env": {"LD_PRELOAD": C}}, "LD_*", id="ld-preload"),
        pytest.param("stdio_env", None, {"env": {"DYLD_INSERT_LIBRARIES": C}}, "LD_*", id="dyld"),
        pytest.param("stdio_env", None, {"env": {"pythonpath": C}}, "PYTHONPATH", id="pythonpath-lower"),
        pytest.param("stdio_env", None, {"env": {"NODE_OPTIONS": C}}, "NODE_OPTIONS", id="node-options"),
        pytest.param("stdio_env", None, {"env": {"npm_config_registry": C}}, "NPM_CONFIG_*", id="npm-registry"),
        pytest.param("stdio_env", None, {"env": {"UV_INDEX_URL": C}}, "UV_*", id="uv-index"),
        pytest.param("stdio_env", None, {"env": {"HTTPS_PROXY": C}}, "HTTPS_PROXY", id="proxy"),
        pytest.param("stdio_env", None, {"env": {"PYTHONWARNINGS": C}}, "PYTHONWARNINGS", id="pythonwarnings"),
        pytest.param("stdio_env", None, {"env": {"NODE_EXTRA_CA_CERTS": C}}, "NODE_EXTRA_CA_CERTS", id="ca-certs"),
        pytest.param("stdio_env", None, {"env": {"1BAD": C}}, "secret.env", id="env-name"),
        pytest.param("stdio_env", None, {"env": {"A": C + "\x00"}}, "secret.env", id="env-nul"),
        pytest.param(
            "oauth_client_credentials",
            {"token_url": "http://idp.example.com/token", "client_id": "gw"},
            {"client_secret": C},
            "config.token_url",
            id="http-token-url",
        ),
        pytest.param(
            "oauth_client_credentials",
            {"token_url": f"https://idp.example.com/token?key={C}", "client_id": "gw"},
            {"client_secret": C},
            "config.token_url",
            id="query-in-token-url",
        ),
        pytest.param(
            "oauth_client_credentials",
            {"token_url": f"https://u:{C}@idp.example.com/token", "client_id": "gw"},
            {"client_secret": C},
            "config.token_url",
            id="userinfo-in-token-url",
        ),
        pytest.param(
            "oauth_client_credentials",
            {"token_url": "https://idp.example.com/token", "client_id": "gw", "auth_method": C},
            {"client_secret": C},
            "config.auth_method",
            id="auth-method",
        ),
        pytest.param(
            "oauth_client_credentials",
            {"token_url": "https://idp.example.com/token", "client_id": "gw", "scope": f'"{C}"'},
            {"client_secret": C},
            "config.scope",
            id="scope-syntax",
        ),
        pytest.param(
            "oauth_client_credentials",
            {"token_url": "https://idp.example.com/token"},
            {"client_secret": C},
            "config.client_id",
            id="no-client-id",
        ),
        pytest.param(
            "oauth_token_exchange",
            {"token_url": "https://idp.example.com/token", "client_id": "gw", "requested_token_type": f"{C} x"},
            {"client_secret": C},
            "config.requested_token_type",
            id="token-type",
        ),
        pytest.param(
            "oauth_token_exchange",
            {"token_url": "https://idp.example.com/token", "client_id": "gw"},
            {"client_secret": f"{C}\x07"},
            "secret.client_secret",
            id="client-secret-control",
        ),
        pytest.param(
            "oauth_authorization_code",
            {"authorization_endpoint": "https://as.example.com/authorize"},
            {},
            "config.token_endpoint",
            id="one-endpoint",
        ),
        pytest.param(
            "oauth_authorization_code",
            {"authorization_endpoint": f"http://{C}.example.com/a", "token_endpoint": "https://as.example.com/t"},
            {},
            "config.authorization_endpoint",
            id="http-authorization-endpoint",
        ),
        pytest.param("oauth_authorization_code", None, {"client_secret": C}, "config.client_id", id="secret-no-id"),
        pytest.param(
            "oauth_authorization_code",
            {"client_id": "gw"},
            {"client_secret": C},
            "secret.client_secret",
            id="secret-to-discovered-endpoints",
        ),
        pytest.param(
            "oauth_authorization_code", {"client_id": "gw"}, {"client_secret": C, C: C}, "secret", id="code-extra"
        ),
        pytest.param(
            "oauth_authorization_code",
            {"client_id": "gw", "auth_method": "none"},
            {"client_secret": C},
            "config.auth_method",
            id="none-with-secret",
        ),
        pytest.param(
            "oauth_authorization_code", {"resource": f"urn-{C}"}, {}, "config.resource", id="resource-not-absolute"
        ),
    ],
)
def test_bad_input_is_refused_naming_the_field_and_never_echoing_a_value(
    kind: str, config: Any, secret: Any, field: str
) -> None:
    with pytest.raises(RequestRejected) as caught:
        validate_credential(kind, config, secret)
    assert field in str(caught.value)
    assert CANARY not in str(caught.value)


def test_http_to_a_loopback_token_endpoint_is_allowed_for_development() -> None:
    config = {"token_url": "http://127.0.0.1:9000/token", "client_id": "gw"}
    assert validate_credential("oauth_client_credentials", config, {"client_secret": "s"}).config["token_url"]


def test_authorization_code_takes_a_public_or_a_configured_client_and_optional_endpoints() -> None:
    public = validate_credential("oauth_authorization_code", None, {})
    assert public.config == {"auth_method": "none"} and public.secret.reveal() == {}
    config = {
        "client_id": "gw",
        "scope": "read",
        "resource": "https://mcp.example.com/mcp",
        "authorization_endpoint": "https://as.example.com/authorize",
        "token_endpoint": "http://127.0.0.1:9000/token",
    }
    confidential = validate_credential("oauth_authorization_code", config, {"client_secret": CANARY})
    assert confidential.config == {**config, "auth_method": "client_secret_basic"}
    assert CANARY not in repr(confidential.config)
    rotated = validate_rotation("oauth_authorization_code", confidential.config, {"client_secret": "new"})
    assert rotated.config == confidential.config


def test_authorization_code_pins_an_issuer_only_for_configured_endpoints() -> None:
    endpoints = {
        "authorization_endpoint": "https://as.example.com/authorize",
        "token_endpoint": "https://as.example.com/token",
    }
    pinned = validate_credential("oauth_authorization_code", {**endpoints, "issuer": "https://as.example.com"}, {})
    assert pinned.config["issuer"] == "https://as.example.com"
    with pytest.raises(RequestRejected, match="config.issuer pins the issuer of configured endpoints"):
        validate_credential("oauth_authorization_code", {"issuer": "https://as.example.com"}, {})
    with pytest.raises(RequestRejected, match="config.issuer"):
        validate_credential("oauth_authorization_code", {**endpoints, "issuer": "ftp://as.example.com"}, {})
