"""Keep credentials out of log lines: a :class:`logging.Filter` and the redaction it applies.

What is redacted, wherever it appears in a rendered message, its exception text
or stack text (the third-party loggers of httpx, the SDK's vendored ``httpx2``,
aiohttp, uvicorn and hypercorn included):

* URL userinfo (RFC 3986 §3.2.1): ``http://user:pass@host`` -> ``http://***@host``;
* query values (RFC 3986 §3.4), in full URLs and in bare request targets:
  ``?apikey=s3cret&x`` -> ``?apikey=***&***``; and URL fragments -> ``#***``;
* credential header values (``Authorization``, ``Proxy-Authorization``,
  ``Cookie``, ``Set-Cookie``, ``X-Api-Key``, ``Api-Key``, ``X-Auth-Token``) in
  the ``name: value``, ``'name': 'value'`` and ``(b'name', b'value')`` shapes,
  and ``Bearer <token>``.

Redaction runs only for records a handler is about to emit (handler filter), so
debug records that are dropped by level cost nothing; an emitted record pays
one message rendering (which the formatter would do anyway) and three regex
scans.
"""

from __future__ import annotations

import logging
import re

__all__ = ["REDACTED", "RedactingFilter", "install", "redact", "redact_url"]

REDACTED = "***"

_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s@'\"<>\\]*@)?(?P<rest>[^\s'\"<>\\]*)")
_QUERY = re.compile(r"\?(?P<query>[^\s'\"<>\\#]+)")
_HEADER = re.compile(
    r"(?i)(?P<name>\b(?:proxy-authorization|authorization|set-cookie|cookie|x-api-key|api-key|x-auth-token))"
    r"(?P<sep>['\"]?\s*[:=,]\s*(?-i:b)?['\"]?)(?P<value>[^'\"\r\n]+)"
)
_BEARER = re.compile(r"(?i)\b(?P<scheme>bearer|basic)\s+[A-Za-z0-9._~+/=-]{12,}")


def _redact_query(query: str) -> str:
    return "&".join(f"{part.partition('=')[0]}={REDACTED}" if "=" in part else REDACTED for part in query.split("&"))


def _redact_url_match(match: re.Match[str]) -> str:
    rest = match.group("rest")
    rest, hash_, _fragment = rest.partition("#")
    path, qmark, query = rest.partition("?")
    out = match.group("scheme") + (f"{REDACTED}@" if match.group("userinfo") else "") + path
    if qmark:
        out += "?" + _redact_query(query)
    if hash_:
        out += "#" + REDACTED
    return out


def redact(text: str) -> str:
    """``text`` with URL userinfo, query values, fragments and credential headers replaced by ``***``."""
    if "://" in text:
        text = _URL.sub(_redact_url_match, text)
    if "?" in text:  # bare request targets (``GET /mcp?token=…``); idempotent on redacted URLs
        text = _QUERY.sub(lambda m: "?" + _redact_query(m.group("query")), text)
    text = _HEADER.sub(lambda m: f"{m.group('name')}{m.group('sep')}{REDACTED}", text)
    return _BEARER.sub(lambda m: f"{m.group('scheme')} {REDACTED}", text)


def redact_url(url: str) -> str:
    """``url`` for a log line: userinfo, query values and fragment replaced by ``***``."""
    return redact(url)


class RedactingFilter(logging.Filter):
    """Rewrite each record a handler emits so that it carries no credentials (see the module doc).

    The record's message is rendered once (``msg % args``), redacted, and stored
    back with ``args`` cleared; exception and stack text are rendered and redacted
    too. A record whose arguments cannot be rendered is left to the formatter's
    own error reporting. Never drops a record.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - the handler reports unrenderable records itself
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(filter_: logging.Filter | None = None) -> logging.Filter:
    """Add a :class:`RedactingFilter` to every handler that exists now (root and named loggers).

    Call it after the logging set-up (``basicConfig``, the ASGI server's own
    handlers); handlers added later are not covered. Idempotent per handler.

    Returns:
        The filter installed (``filter_`` or a new one).
    """
    flt = filter_ or RedactingFilter()
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(flt)
    return flt
