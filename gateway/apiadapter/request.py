"""A ``tools/call`` of an adapter tool turned into one HTTP request (pure: no I/O).

:func:`build_request` serialises each argument where its :class:`~gateway.apiadapter.binding.Param`
says, in the style it says (OpenAPI 3.1.1 section 4.8.12.4 "Style Values", 4.8.12.5 "Style
Examples"; the same in 3.0.3), and the request body per its
:class:`~gateway.apiadapter.binding.Body`. The rules that keep an agent inside the source:

* the URL is the source's base URL (scheme, host, port **and** path prefix) followed by the
  operation's path template; every value put into the path or the query is percent-encoded
  per component, so a value can never add a path segment, a query parameter or a fragment; a
  path value that is empty or would make a ``.``/``..`` segment is refused; the finished URL's
  scheme, host and port are checked against the base URL once more (defence in depth);
* header names must be RFC 9110 tokens and values printable ASCII without leading or trailing
  space or tab (a CR, LF or NUL could split the request; RFC 9110 section 5.5 field values
  carry no surrounding whitespace, and h11 refuses to send it); framing headers (``Host``, ``Content-Length``, ``Transfer-Encoding``,
  ...) cannot be parameters; ``Accept``, ``Content-Type`` and ``Authorization`` parameters are
  ignored (OpenAPI 3.1.1 section 4.8.12.2), and so is ``User-Agent``;
* the brokered credential comes last and can never be overridden or shadowed: its headers
  replace any same-named header (names are compared in lower case); an argument that would
  produce a query parameter named like one of the credential's — the same name in any case,
  that name followed by ``[`` or ``.``, or the same name as PHP reads names (``.`` and space
  as ``_``) — is refused, and so is an argument cookie named like a cookie of a credential
  ``Cookie`` header (servers disagree on which of two same-named parameters wins).

``null`` is an undefined value (RFC 6570 section 2.3): an optional parameter given ``null``
is not sent. Combinations OpenAPI leaves undefined are sent the nearest defined way:
``spaceDelimited``/``pipeDelimited`` with a primitive value as ``form``, and with
``explode: true`` as ``form`` exploded; ``deepObject`` takes objects of scalars only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
import orjson

from gateway.apiadapter.binding import ApiSource, Body, Operation, Param
from gateway.mcp.credential import UpstreamCredential

__all__ = ["ACCEPT", "USER_AGENT", "ArgumentMappingError", "OutgoingRequest", "build_request"]

ACCEPT = "application/json, */*;q=0.5"
"""The ``Accept`` header of every adapter request."""
USER_AGENT = "mcp-opa-gateway"
"""The ``User-Agent`` header of every adapter request."""

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TRIPLE = re.compile(r"%[0-9A-Fa-f]{2}")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
_HEADER_SPACE = " \t"
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# allowReserved keeps RFC 3986 reserved characters except those not allowed in a query
# ("[", "]", "#") or meaningful in form encoding ("&", "=", "+") (OpenAPI 3.1.1 4.8.12.2.2).
_RESERVED_KEPT = ":/?@!$'()*,;"
_IGNORED_HEADERS = frozenset({"accept", "content-type", "authorization", "user-agent"})
_FRAMING_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-authorization",
        "proxy-connection",
        "cookie",
    }
)


class ArgumentMappingError(ValueError):
    """An argument cannot be sent as its parameter says (a tool error ``invalid_arguments``).

    The message names the argument (``argument``) and what is wrong, never its value.
    """

    def __init__(self, message: str, *, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


@dataclass(frozen=True, slots=True)
class OutgoingRequest:
    """One HTTP request to an API source.

    Attributes:
        method: Upper-case HTTP method.
        url: Absolute URL: the base URL, the expanded path, the query string.
        headers: ``(name, value)`` pairs, names lower-case, credential headers included.
        content: The encoded body, or None for none.
    """

    method: str
    url: str
    headers: list[tuple[str, str]]
    content: bytes | None


# ------------------------------------------------------------------ values


def _fail(param: Param | str, what: str) -> ArgumentMappingError:
    argument = param if isinstance(param, str) else param.argument
    return ArgumentMappingError(f"argument {argument!r} {what}", argument=argument)


def _is_json_type(media: str | None) -> bool:
    if media is None:
        return False
    base = media.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json")


def _scalar(value: Any, argument: str) -> str:
    """A primitive value as text: strings as they are, booleans ``true``/``false``, numbers as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(argument, "is not a finite number")
        return orjson.dumps(value).decode()
    if value is None:
        raise _fail(argument, "holds a null where this parameter's style needs a value")
    raise _fail(argument, "holds a nested array or object, which this parameter's style cannot serialise")


_Shape = tuple[str, Any]  # ("scalar", str) | ("array", list[str]) | ("object", list[tuple[str, str]])


def _shape(param: Param, value: Any) -> _Shape:
    if param.content_type is not None:
        text = (
            orjson.dumps(value).decode() if _is_json_type(param.content_type) or not isinstance(value, str) else value
        )
        return ("scalar", text)
    if isinstance(value, list | tuple):
        return ("array", [_scalar(v, param.argument) for v in value])
    if isinstance(value, Mapping):
        return ("object", [(str(k), _scalar(v, param.argument)) for k, v in value.items()])
    return ("scalar", _scalar(value, param.argument))


def _enc(text: str) -> str:
    return quote(text, safe="")


def _enc_reserved(text: str) -> str:
    out: list[str] = []
    pos = 0
    for match in _TRIPLE.finditer(text):
        out.append(quote(text[pos : match.start()], safe=_RESERVED_KEPT))
        out.append(match.group(0))
        pos = match.end()
    out.append(quote(text[pos:], safe=_RESERVED_KEPT))
    return "".join(out)


# ------------------------------------------------------------------ path


def _path_value(param: Param, value: Any) -> str:
    kind, data = _shape(param, value)
    if (kind == "scalar" and data == "") or (kind != "scalar" and not data):
        raise _fail(param, "is empty, which cannot be a path segment")
    if kind == "scalar" and data in (".", ".."):
        raise _fail(param, "is a dot segment, which cannot be a path value")
    name = _enc(param.name)
    style, explode = param.style, param.explode
    if kind == "scalar":
        text = _enc(data)
        return {"matrix": f";{name}={text}", "label": f".{text}"}.get(style, text)
    if kind == "array":
        items = [_enc(v) for v in data]
        if style == "matrix":
            return "".join(f";{name}={v}" for v in items) if explode else f";{name}=" + ",".join(items)
        if style == "label":
            return "." + ("." if explode else ",").join(items)
        return ",".join(items)
    pairs = [(_enc(k), _enc(v)) for k, v in data]
    if explode:
        joined = [f"{k}={v}" for k, v in pairs]
        if style == "matrix":
            return "".join(f";{p}" for p in joined)
        if style == "label":
            return "." + ".".join(joined)
        return ",".join(joined)
    flat = ",".join(f"{k},{v}" for k, v in pairs)
    return {"matrix": f";{name}={flat}", "label": f".{flat}"}.get(style, flat)


def _expand_path(op: Operation, params: Mapping[str, Param], arguments: Mapping[str, Any]) -> str:
    out: list[str] = []
    spans: list[tuple[int, int, str]] = []
    pos = length = 0
    for match in _PLACEHOLDER.finditer(op.path):
        literal = op.path[pos : match.start()]
        out.append(literal)
        length += len(literal)
        param = params.get(match.group(1))
        if param is None:
            raise ArgumentMappingError(f"path placeholder {match.group(1)!r} has no parameter")
        value = arguments.get(param.argument)
        if value is None:
            raise _fail(param, "is required")
        text = _path_value(param, value)
        out.append(text)
        spans.append((length, length + len(text), param.argument))
        length += len(text)
        pos = match.end()
    out.append(op.path[pos:])
    path = "".join(out)
    start = 0
    for segment in path.split("/"):
        end = start + len(segment)
        if segment in (".", ".."):
            culprits = [a for s, e, a in spans if s <= end and e >= start]
            raise ArgumentMappingError(
                f"argument {culprits[0] if culprits else '?'!r} makes a dot segment in the path",
                argument=culprits[0] if culprits else None,
            )
        start = end + 1
    return path


# ------------------------------------------------------------------ query


def _query_pairs(param: Param, value: Any) -> list[tuple[str, str]]:
    """``(raw name, encoded "name=value")`` pairs of one query parameter (raw names let the
    credential's parameters replace any argument of the same name)."""
    enc = _enc_reserved if param.allow_reserved else _enc
    kind, data = _shape(param, value)
    name, style, explode = param.name, param.style, param.explode
    if style == "deepObject":
        if kind != "object":
            raise _fail(param, "must be an object (deepObject style)")
        return [(f"{name}[{k}]", f"{_enc(f'{name}[{k}]')}={enc(v)}") for k, v in data]
    if kind == "scalar":
        return [(name, f"{_enc(name)}={enc(data)}")]
    if not data:
        return []  # an empty list or object is undefined (RFC 6570 section 2.3): not sent
    if explode:  # form; spaceDelimited/pipeDelimited with explode are undefined: sent as form
        if kind == "array":
            return [(name, f"{_enc(name)}={enc(v)}") for v in data]
        return [(k, f"{_enc(k)}={enc(v)}") for k, v in data]
    delimiter = {"spaceDelimited": "%20", "pipeDelimited": "%7C"}.get(style, ",")
    items = [enc(v) for v in data] if kind == "array" else [enc(x) for pair in data for x in pair]
    return [(name, f"{_enc(name)}=" + delimiter.join(items))]


# ------------------------------------------------------------------ headers and cookies


def _header_value(param: Param, value: Any) -> str:
    kind, data = _shape(param, value)
    if kind == "scalar":
        text = str(data)
    elif kind == "array":
        text = ",".join(data)
    elif param.explode:
        text = ",".join(f"{k}={v}" for k, v in data)
    else:
        text = ",".join(f"{k},{v}" for k, v in data)
    if not _HEADER_VALUE.fullmatch(text):
        raise _fail(param, "holds a control character (CR, LF, NUL, ...) or non-ASCII text, not allowed in a header")
    if text != text.strip(_HEADER_SPACE):
        raise _fail(param, "starts or ends with a space or tab, not allowed in a header value")
    return text


def _cookie_pairs(param: Param, value: Any) -> list[tuple[str, str]]:
    """``(cookie name, "name=value")`` pairs of one cookie parameter."""
    kind, data = _shape(param, value)
    name = param.name
    if kind == "scalar":
        return [(name, f"{name}={_enc(data)}")]
    if not data:
        return []
    if kind == "array":
        if param.explode:
            return [(name, f"{name}={_enc(v)}") for v in data]
        return [(name, f"{name}=" + ",".join(_enc(v) for v in data))]
    if param.explode:
        for k, _ in data:
            if not _TOKEN.fullmatch(k):
                raise _fail(param, "has a property name that is not a cookie name")
        return [(k, f"{k}={_enc(v)}") for k, v in data]
    return [(name, f"{name}=" + ",".join(f"{_enc(k)},{_enc(v)}" for k, v in data))]


# ------------------------------------------------------------------ the credential's names


def _plain(name: str) -> str:
    """A parameter name as a lenient server may read it: up to a NUL, trimmed, lower case."""
    return name.partition("\x00")[0].strip(" \t").lower()


def _php(name: str) -> str:
    return _plain(name).replace(".", "_").replace(" ", "_")


def _shadows(name: str, protected: frozenset[str]) -> bool:
    """True when a server could read parameter ``name`` as one of ``protected`` (lower-case names):
    the same name in any case, that name followed by ``[`` or ``.``, or the same name once PHP
    has turned ``.`` and space into ``_``."""
    plain, php = _plain(name), _php(name)
    for taken in protected:
        if plain == taken or plain.startswith((taken + "[", taken + ".")):
            return True
        if php == _php(taken) or php.startswith(_php(taken) + "["):
            return True
    return False


def _credential_names(credential: UpstreamCredential | None) -> tuple[frozenset[str], frozenset[str]]:
    """(query parameter names, cookie names) of ``credential``, lower case."""
    if credential is None:
        return frozenset(), frozenset()
    query = frozenset(_plain(k) for k in credential.query)
    cookies: set[str] = set()
    for key, value in credential.headers.items():
        if key.lower() == "cookie":
            cookies.update(_plain(piece.partition("=")[0]) for piece in value.split(";") if piece.strip())
    return query, frozenset(cookies)


# ------------------------------------------------------------------ body


def _form_pairs(argument: str, payload: Any) -> list[tuple[str, str]]:
    if not isinstance(payload, Mapping):
        raise _fail(argument, "must be an object (form-encoded body)")
    pairs: list[tuple[str, str]] = []
    for key, value in payload.items():
        if value is None:
            continue
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if isinstance(item, Mapping | list | tuple):
                pairs.append((str(key), orjson.dumps(item).decode()))
            else:
                pairs.append((str(key), _scalar(item, argument)))
    return pairs


def _body(body: Body, arguments: Mapping[str, Any]) -> tuple[bytes, str] | None:
    """(content, content-type) or None when no body is sent."""
    label: str
    if body.argument is None:
        payload: Any = {k: arguments[k] for k in body.properties if k in arguments}
        if not payload and not body.required:
            return None
        label = body.properties[0] if body.properties else "body"
    else:
        label = body.argument
        payload = arguments.get(body.argument)
        if payload is None:
            if body.required:
                raise _fail(label, "is required (the request body)")
            return None
    media = body.content_type
    if _is_json_type(media):
        try:
            return orjson.dumps(payload), media
        except orjson.JSONEncodeError:
            raise _fail(label, "cannot be encoded as JSON") from None
    if media == "application/x-www-form-urlencoded":
        return urlencode(_form_pairs(label, payload)).encode("ascii"), media
    if media == "text/plain":
        if isinstance(payload, Mapping | list | tuple):
            raise _fail(label, "must be text (text/plain body)")
        return _scalar(payload, label).encode(), "text/plain; charset=utf-8"
    raise ArgumentMappingError(f"request body media type {media!r} is not supported")


# ------------------------------------------------------------------ the request


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = httpx.URL(url)
    return (parsed.scheme, parsed.host, parsed.port)


def build_request(
    source: ApiSource, op: Operation, arguments: Mapping[str, Any], credential: UpstreamCredential | None
) -> OutgoingRequest:
    """The HTTP request that calls ``op`` of ``source`` with ``arguments``.

    Args:
        source: The API source (its base URL is the request's scheme, host, port and path prefix).
        op: The operation bound to the tool being called.
        arguments: The ``tools/call`` arguments (already valid against the tool's ``inputSchema``).
        credential: Brokered material: its headers and query parameters are added last; its
            headers replace same-named ones, and an argument that would shadow one of its
            query parameters or cookies is refused.

    Raises:
        ArgumentMappingError: An argument cannot be sent: a required one is missing, a path
            value is empty or a dot segment, a header value holds a control character or
            non-ASCII text or surrounding space, a value has a shape its style cannot serialise,
            a query parameter or cookie would shadow one of the credential's (see the module
            docstring), or the URL would not stay on the base URL's origin. The message names
            the argument, never its value.
    """
    by_name = {p.name: p for p in op.parameters if p.location == "path"}
    path = _expand_path(op, by_name, arguments)
    protected_query, protected_cookies = _credential_names(credential)

    query: list[tuple[str, str]] = []
    headers: list[tuple[str, str]] = []
    cookies: list[str] = []
    for param in op.parameters:
        if param.location == "path":
            continue
        value = arguments.get(param.argument)
        if value is None:
            if param.required:
                raise _fail(param, "is required")
            continue
        if param.location == "query":
            pairs = _query_pairs(param, value)
            if protected_query and any(_shadows(name, protected_query) for name, _ in pairs):
                raise _fail(param, "would set a query parameter of the brokered credential")
            query.extend(pairs)
        elif param.location == "header":
            lowered = param.name.lower()
            if not _TOKEN.fullmatch(param.name):
                raise _fail(param, "is bound to a header name that is not an RFC 9110 token")
            if lowered in _FRAMING_HEADERS:
                raise _fail(param, f"is bound to the {lowered} header, which an argument cannot set")
            if lowered not in _IGNORED_HEADERS:
                headers.append((lowered, _header_value(param, value)))
        else:
            if not _TOKEN.fullmatch(param.name):
                raise _fail(param, "is bound to a cookie name that is not an RFC 9110 token")
            named = _cookie_pairs(param, value)
            if protected_cookies and any(_shadows(name, protected_cookies) for name, _ in named):
                raise _fail(param, "would set a cookie of the brokered credential")
            cookies.extend(piece for _, piece in named)
    if cookies:
        headers.append(("cookie", "; ".join(cookies)))

    content: bytes | None = None
    if op.body is not None:
        encoded = _body(op.body, arguments)
        if encoded is not None:
            content, media = encoded
            headers.append(("content-type", media))

    headers = [("accept", ACCEPT), ("user-agent", USER_AGENT), *headers]
    if credential is not None:
        if credential.query:
            query = [pair for pair in query if pair[0] not in credential.query]
            query.extend((k, f"{_enc(k)}={_enc(v)}") for k, v in credential.query.items())
        if credential.headers:
            replaced = {k.lower() for k in credential.headers}
            headers = [h for h in headers if h[0] not in replaced]
            headers.extend((k.lower(), v) for k, v in credential.headers.items())

    base = source.base_url.rstrip("/")
    url = base + path + ("?" + "&".join(piece for _, piece in query) if query else "")
    _check_origin(base, url)
    return OutgoingRequest(op.method, url, headers, content)


def _check_origin(base: str, url: str) -> None:
    """Defence in depth: the finished URL has the base URL's scheme, host, port and path prefix."""
    want, got = urlsplit(base), urlsplit(url)
    same = (
        (want.scheme, want.hostname, want.port) == (got.scheme, got.hostname, got.port)
        and got.path.startswith(want.path)
        and not got.fragment
        and "#" not in url
    )
    try:
        same = same and _origin(base) == _origin(url)
    except httpx.InvalidURL:
        same = False
    if not same:
        raise ArgumentMappingError("the request URL would leave the API source's base URL")
