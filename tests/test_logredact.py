"""The credential filter every log handler carries (gateway/logredact.py), in process."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from gateway.logredact import REDACTED, RedactingFilter, install, redact, redact_url

SECRET = "s3cr3t-CANARY-value"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            f"POST http://bob:{SECRET}@up.example:8080/mcp ok",
            "POST http://***@up.example:8080/mcp ok",
            id="url-userinfo",
        ),
        pytest.param(
            f"GET https://up.example/mcp?apikey={SECRET}&mode=x done",
            "GET https://up.example/mcp?apikey=***&mode=*** done",
            id="url-query",
        ),
        pytest.param(
            f"see https://up.example/cb#{SECRET}",
            "see https://up.example/cb#***",
            id="url-fragment",
        ),
        pytest.param(
            f'"POST /mcp?access_token={SECRET} HTTP/1.1" 401',
            '"POST /mcp?access_token=*** HTTP/1.1" 401',
            id="bare-request-target",
        ),
        pytest.param(f"Authorization: Bearer {SECRET}", "Authorization: ***", id="header-colon"),
        pytest.param(f"{{'x-api-key': '{SECRET}'}}", "{'x-api-key': '***'}", id="header-dict"),
        pytest.param(f"(b'cookie', b'sid={SECRET}')", "(b'cookie', b'***')", id="header-bytes-tuple"),
        pytest.param(f"token was Bearer {SECRET}xyz", f"token was Bearer {REDACTED}", id="bearer-anywhere"),
    ],
)
def test_redact_removes_each_shape_of_credential(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert SECRET not in redact(text)


def test_redact_keeps_text_without_credentials_and_is_idempotent() -> None:
    plain = "upstream demo failed: upstream_timeout after 30 s (http://127.0.0.1:9/mcp)"
    assert redact(plain) == plain
    once = redact(f"http://u:{SECRET}@h/p?k={SECRET}")
    assert redact(once) == once


def test_redact_url_keeps_scheme_host_and_path() -> None:
    assert redact_url(f"https://u:{SECRET}@api.example:8443/v1/mcp?key={SECRET}") == (
        "https://***@api.example:8443/v1/mcp?key=***"
    )


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger with one stream handler that carries the filter, at DEBUG."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.logredact")
    logger.handlers, logger.propagate, logger.level = [handler], False, logging.DEBUG
    install()
    try:
        yield logger, stream
    finally:
        logger.handlers = []


def test_the_filter_redacts_rendered_arguments_at_every_level(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    url = f"http://user:{SECRET}@up/mcp?apikey={SECRET}"
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
        logger.log(level, "request to %s with %r", url, {"authorization": f"Bearer {SECRET}"})
    out = stream.getvalue()
    assert out.count("request to http://***@up/mcp?apikey=***") == 4
    assert SECRET not in out


def test_the_filter_redacts_exception_text(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ConnectionError(f"cannot connect to https://u:{SECRET}@up.example/mcp")
    except ConnectionError:
        logger.exception("upstream failed")
    out = stream.getvalue()
    assert "ConnectionError: cannot connect to https://***@up.example/mcp" in out
    assert SECRET not in out


def test_install_is_idempotent_per_handler(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, _ = captured
    install()
    install()
    assert sum(isinstance(f, RedactingFilter) for f in logger.handlers[0].filters) == 1


def test_a_record_that_cannot_be_rendered_is_not_dropped() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items", ("many",), None)
    assert RedactingFilter().filter(record) is True
