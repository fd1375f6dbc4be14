"""A real REST service for the API-to-MCP adapter's tests (Starlette, run by uvicorn as a subprocess).

It serves its own OpenAPI 3.1 document (``GET /openapi.json``; importable as :data:`DOCUMENT`),
whose operations are:

* **echo** endpoints (``/echo/...``, any method) answering JSON of exactly what arrived:
  ``{"method", "path" (raw, still percent-encoded), "query" (raw query string), "headers"
  ({lower-case name: value}), "cookies", "content_type", "body" (text), "json" (parsed JSON
  body or null), "form" (form pairs or null)}`` — for path parameters of each style
  (``echoPathSimple``, ``echoPathLabel``, ``echoPathMatrix``, ``echoPathPlain``), query
  parameters of each style (``echoQuery``), header and cookie parameters (``echoHeaders``),
  a flattenable JSON object body (``echoJson``), an array body (``echoJsonArray``), a form
  body (``echoForm``), a text body (``echoText``), ``replaceItem`` (PUT) and ``deleteItem``
  (DELETE); ``echoRejected`` ``GET /echo/rejected`` echoes the same JSON with status 400 (an
  error response that quotes the request); ``GET /echo/auth`` (not in the document) echoes
  only with ``Authorization: Bearer <an accepted token>``, else answers 401;
* ``getStatus`` ``GET /status/{code}?format=json|text|empty``: that status with a JSON
  ``{"error": <reason>, "code": <code>}`` or text body;
* ``redirect`` ``/redirect?to=<path or URL>&status=302&hops=0`` (any method): a redirect to
  ``to`` (same origin: a path; cross origin: e.g. ``http://localhost:<port>/...``); with
  ``hops=N``, first N redirects to ``/redirect`` itself (a chain of N + 1 redirects);
* ``slow`` ``GET /slow?ms=N&drip=false``: answers after N milliseconds (``drip=true``: answers
  at once and sends one byte every 100 ms for N milliseconds);
* ``large`` ``GET /large?n=N&stream=false&gzip=false``: N bytes of text (``stream=true``:
  chunked, without ``Content-Length``; ``gzip=true``: sent gzip-compressed);
* ``getText`` (text/plain), ``getImage`` (image/png), ``getBinary``
  (application/octet-stream), ``getEmpty`` (204);
* ``invalidOutput`` ``GET /invalid-output``: JSON that violates its documented schema;
* ``largeJson`` ``GET /large-json?n=N``: a JSON array of N items ``{"id": i, "name":
  "item-<i>", "tags": [{"id", "name"} x 2], "owner": {"id", "name"}}`` (~110 bytes each);
* ``custom`` ``GET /custom?status=200&type=<content type>&text=<body>&deep=0``: that status,
  ``Content-Type`` and body (``deep=N``: JSON objects nested N deep, ``{"c":{"c":...{}}}``);
* ``whoami`` ``GET /auth/whoami``: 200 ``{"via": "x-api-key"|"query"|"bearer", "digest":
  <12 hex digits of SHA-256 of the value>}`` when the ``x-api-key`` header or the
  ``api_key`` query parameter is an accepted key, or ``Authorization: Bearer <token>`` an
  accepted token; 401 otherwise. Accepted values come from ``REST_API_KEYS`` /
  ``REST_API_BEARERS`` (comma-separated) or ``--api-key`` / ``--bearer`` (repeatable), and
  are replaced at run time by ``POST /_auth {"api_key": [...], "bearer": [...]}`` (rotation:
  accept a second token, or only the new one).

A small in-memory Swagger Petstore 3.0 lives under ``/petstore`` (``addPet`` ``POST /pet``,
``updatePet`` ``PUT /pet``, ``findPetsByStatus`` ``GET /pet/findByStatus``, ``getPetById``
``GET /pet/{petId}``, ``deletePet`` ``DELETE /pet/{petId}`` with the ``api_key`` header,
checked when ``--petstore-api-key`` / ``REST_API_PETSTORE_KEY`` is set), so the shipped
``petstore-3.0.json`` with base URL ``<url>/petstore`` works against it. Pets 1-3 exist at start.

``GET /_received`` ``{"count", "requests": [{"method", "path", "query", "headers"}]}`` lists
every request served outside ``/_*`` and ``/openapi.json``; ``POST /_reset`` clears it and
restores the petstore. No request content is logged (uvicorn's access log is off).

    python tests/support/rest_api.py --port N [--api-key K ...] [--bearer T ...] [--petstore-api-key K]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import http
import os
import struct
import sys
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import anyio
import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

ALL_METHODS = ["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"]


def _png() -> bytes:
    """A valid 1x1 red PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


PNG = _png()
BINARY = bytes(range(256))
TEXT = "hello, world\n"


def digest(value: str) -> str:
    """First 12 hex digits of SHA-256 (what the service shows instead of a secret)."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- the OpenAPI document

_ECHO = {"$ref": "#/components/schemas/Echo"}


def _echo_responses() -> dict[str, Any]:
    return {"200": {"description": "What arrived", "content": {"application/json": {"schema": _ECHO}}}}


def _p(name: str, where: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": where, "schema": schema, **extra}


_STR = {"type": "string"}
_STRS = {"type": "array", "items": {"type": "string"}}
_RGB = {
    "type": "object",
    "properties": {"R": {"type": "integer"}, "G": {"type": "integer"}, "B": {"type": "integer"}},
}
_PET_ID = _p("petId", "path", {"type": "integer", "format": "int64"}, required=True)
_REF = {"type": "object", "required": ["id", "name"], "properties": {"id": {"type": "integer"}, "name": _STR}}
_ITEMS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["id", "name"],
        "properties": {
            "id": {"type": "integer", "minimum": 0},
            "name": {"type": "string", "pattern": "^item-[0-9]+$"},
            "tags": {"type": "array", "items": _REF},
            "owner": _REF,
        },
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Adapter test REST API", "version": "1.0.0"},
    "servers": [{"url": "/"}],
    "paths": {
        "/echo/path/simple/{color}": {
            "get": {
                "operationId": "echoPathSimple",
                "summary": "Echo a simple-style array path parameter",
                "parameters": [_p("color", "path", _STRS, required=True, style="simple")],
                "responses": _echo_responses(),
            }
        },
        "/echo/path/label/{color}": {
            "get": {
                "operationId": "echoPathLabel",
                "summary": "Echo a label-style exploded array path parameter",
                "parameters": [_p("color", "path", _STRS, required=True, style="label", explode=True)],
                "responses": _echo_responses(),
            }
        },
        "/echo/path/matrix/{color}": {
            "get": {
                "operationId": "echoPathMatrix",
                "summary": "Echo a matrix-style exploded object path parameter",
                "parameters": [_p("color", "path", _RGB, required=True, style="matrix", explode=True)],
                "responses": _echo_responses(),
            }
        },
        "/echo/path/plain/{name}": {
            "get": {
                "operationId": "echoPathPlain",
                "summary": "Echo a string path parameter",
                "parameters": [_p("name", "path", _STR, required=True)],
                "responses": _echo_responses(),
            }
        },
        "/echo/query": {
            "get": {
                "operationId": "echoQuery",
                "summary": "Echo query parameters of every style",
                "parameters": [
                    _p("q", "query", _STR),
                    _p("tags", "query", _STRS),
                    _p("ids", "query", {"type": "array", "items": {"type": "integer"}}, explode=False),
                    _p("words", "query", _STRS, style="spaceDelimited"),
                    _p("pipes", "query", _STRS, style="pipeDelimited"),
                    _p("filter", "query", _RGB, style="deepObject", explode=True),
                    _p("expr", "query", _STR, allowReserved=True),
                    _p("flag", "query", {"type": "boolean"}),
                    {
                        "name": "meta",
                        "in": "query",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                ],
                "responses": _echo_responses(),
            }
        },
        "/echo/headers": {
            "get": {
                "operationId": "echoHeaders",
                "summary": "Echo header and cookie parameters",
                "parameters": [
                    _p("X-Trace", "header", _STR),
                    _p("X-List", "header", _STRS),
                    _p("session", "cookie", _STR),
                    _p("prefs", "cookie", _STRS, explode=False),
                ],
                "responses": _echo_responses(),
            }
        },
        "/echo/json": {
            "post": {
                "operationId": "echoJson",
                "summary": "Echo a JSON object body",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": _STR, "size": {"type": "integer"}, "tags": _STRS},
                            }
                        }
                    },
                },
                "responses": _echo_responses(),
            }
        },
        "/echo/json-array": {
            "post": {
                "operationId": "echoJsonArray",
                "summary": "Echo a JSON array body",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "array", "items": {"type": "integer"}}}},
                },
                "responses": _echo_responses(),
            }
        },
        "/echo/form": {
            "post": {
                "operationId": "echoForm",
                "summary": "Echo a form body",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "properties": {"name": _STR, "count": {"type": "integer"}, "tags": _STRS},
                            }
                        }
                    },
                },
                "responses": _echo_responses(),
            }
        },
        "/echo/text": {
            "post": {
                "operationId": "echoText",
                "summary": "Echo a text body",
                "requestBody": {"required": True, "content": {"text/plain": {"schema": _STR}}},
                "responses": _echo_responses(),
            }
        },
        "/echo/items/{itemId}": {
            "parameters": [_p("itemId", "path", {"type": "integer"}, required=True)],
            "put": {
                "operationId": "replaceItem",
                "summary": "Replace an item (echo)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object", "properties": {"name": _STR}}}},
                },
                "responses": _echo_responses(),
            },
            "delete": {
                "operationId": "deleteItem",
                "summary": "Delete an item (echo)",
                "responses": _echo_responses(),
            },
        },
        "/status/{code}": {
            "get": {
                "operationId": "getStatus",
                "summary": "Answer the given HTTP status",
                "parameters": [
                    _p("code", "path", {"type": "integer", "minimum": 100, "maximum": 599}, required=True),
                    _p("format", "query", {"type": "string", "enum": ["json", "text", "empty"]}),
                ],
                "responses": {
                    "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                    "default": {"description": "The status asked for"},
                },
            }
        },
        "/redirect": {
            "get": {
                "operationId": "redirect",
                "summary": "Redirect to the given location",
                "parameters": [
                    _p("to", "query", _STR, allowReserved=True),
                    _p("status", "query", {"type": "integer"}),
                    _p("hops", "query", {"type": "integer", "minimum": 0}),
                ],
                "responses": {"302": {"description": "Redirect"}},
            },
            "post": {
                "operationId": "redirectPost",
                "summary": "Redirect a POST to the given location",
                "parameters": [_p("to", "query", _STR, allowReserved=True), _p("status", "query", {"type": "integer"})],
                "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"302": {"description": "Redirect"}},
            },
        },
        "/slow": {
            "get": {
                "operationId": "slow",
                "summary": "Answer after a delay",
                "parameters": [
                    _p("ms", "query", {"type": "integer", "minimum": 0}, required=True),
                    _p("drip", "query", {"type": "boolean"}),
                ],
                "responses": {
                    "200": {
                        "description": "Slept",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/large": {
            "get": {
                "operationId": "large",
                "summary": "Answer n bytes",
                "parameters": [
                    _p("n", "query", {"type": "integer", "minimum": 0}, required=True),
                    _p("stream", "query", {"type": "boolean"}),
                    _p("gzip", "query", {"type": "boolean"}),
                ],
                "responses": {"200": {"description": "Bytes", "content": {"text/plain": {"schema": _STR}}}},
            }
        },
        "/text": {
            "get": {
                "operationId": "getText",
                "summary": "Plain text",
                "responses": {"200": {"description": "Text", "content": {"text/plain": {"schema": _STR}}}},
            }
        },
        "/image": {
            "get": {
                "operationId": "getImage",
                "summary": "A PNG image",
                "responses": {"200": {"description": "PNG", "content": {"image/png": {}}}},
            }
        },
        "/binary": {
            "get": {
                "operationId": "getBinary",
                "summary": "Opaque bytes",
                "responses": {"200": {"description": "Bytes", "content": {"application/octet-stream": {}}}},
            }
        },
        "/empty": {
            "get": {
                "operationId": "getEmpty",
                "summary": "No content",
                "responses": {"204": {"description": "Nothing"}},
            }
        },
        "/invalid-output": {
            "get": {
                "operationId": "invalidOutput",
                "summary": "JSON that violates its documented schema",
                "responses": {
                    "200": {
                        "description": "A thing",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["id", "name"],
                                    "properties": {"id": {"type": "integer"}, "name": _STR},
                                }
                            }
                        },
                    }
                },
            }
        },
        "/echo/rejected": {
            "get": {
                "operationId": "echoRejected",
                "summary": "Refuse the request with a 400 that quotes it",
                "parameters": [_p("X-Trace", "header", _STR), _p("q", "query", _STR)],
                "responses": {
                    "400": {"description": "What arrived", "content": {"application/json": {"schema": _ECHO}}}
                },
            }
        },
        "/large-json": {
            "get": {
                "operationId": "largeJson",
                "summary": "A JSON array of n items",
                "parameters": [_p("n", "query", {"type": "integer", "minimum": 0}, required=True)],
                "responses": {"200": {"description": "Items", "content": {"application/json": {"schema": _ITEMS}}}},
            }
        },
        "/custom": {
            "get": {
                "operationId": "custom",
                "summary": "Answer the given status, content type and body",
                "parameters": [
                    _p("status", "query", {"type": "integer", "minimum": 200, "maximum": 599}),
                    _p("type", "query", _STR),
                    _p("text", "query", _STR),
                    _p("deep", "query", {"type": "integer", "minimum": 0}),
                ],
                "responses": {"default": {"description": "As asked"}},
            }
        },
        "/auth/whoami": {
            "get": {
                "operationId": "whoami",
                "summary": "Which credential arrived (401 without an accepted one)",
                "security": [{"apiKey": []}, {"bearer": []}],
                "responses": {
                    "200": {
                        "description": "Accepted",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["via", "digest"],
                                    "properties": {"via": _STR, "digest": _STR},
                                }
                            }
                        },
                    },
                    "401": {"description": "No accepted credential"},
                },
            }
        },
    },
    "components": {
        "schemas": {
            "Echo": {
                "type": "object",
                "required": ["method", "path", "query", "headers"],
                "properties": {
                    "method": _STR,
                    "path": _STR,
                    "query": _STR,
                    "headers": {"type": "object", "additionalProperties": _STR},
                    "cookies": {"type": "object", "additionalProperties": _STR},
                    "content_type": {"type": ["string", "null"]},
                    "body": _STR,
                    "json": {},
                    "form": {"type": ["array", "null"]},
                },
            }
        },
        "securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            "bearer": {"type": "http", "scheme": "bearer"},
        },
    },
}
"""The service's OpenAPI 3.1 document (also served at ``GET /openapi.json``)."""


# ---------------------------------------------------------------- state


def large_items(n: int) -> list[dict[str, Any]]:
    """What ``GET /large-json?n=N`` answers (valid against the ``largeJson`` response schema)."""
    return [
        {
            "id": i,
            "name": f"item-{i}",
            "tags": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "owner": {"id": i, "name": "o"},
        }
        for i in range(n)
    ]


def _seed_pets() -> dict[int, dict[str, Any]]:
    return {
        1: {
            "id": 1,
            "name": "doggie",
            "category": {"id": 1, "name": "Dogs"},
            "photoUrls": [],
            "tags": [],
            "status": "available",
        },
        2: {
            "id": 2,
            "name": "kitty",
            "category": {"id": 2, "name": "Cats"},
            "photoUrls": [],
            "tags": [],
            "status": "pending",
        },
        3: {
            "id": 3,
            "name": "goldie",
            "category": {"id": 3, "name": "Fish"},
            "photoUrls": [],
            "tags": [],
            "status": "sold",
        },
    }


@dataclass
class State:
    api_keys: set[str] = field(default_factory=set)
    bearers: set[str] = field(default_factory=set)
    petstore_key: str | None = None
    received: list[dict[str, Any]] = field(default_factory=list)
    pets: dict[int, dict[str, Any]] = field(default_factory=_seed_pets)


def _headers(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


class Recorder:
    """Records every request outside ``/_*`` and ``/openapi.json`` (pure ASGI)."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not (scope["path"].startswith("/_") or scope["path"] == "/openapi.json"):
            raw = scope.get("raw_path") or scope["path"].encode()
            self.state.received.append(
                {
                    "method": scope["method"],
                    "path": raw.decode("latin-1"),
                    "query": scope.get("query_string", b"").decode("latin-1"),
                    "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
                }
            )
        await self.app(scope, receive, send)


# ---------------------------------------------------------------- handlers


def build_app(state: State) -> ASGIApp:
    async def echo(request: Request) -> Response:
        body = await request.body()
        if request.url.path.startswith("/echo/auth"):
            auth = request.headers.get("authorization", "")
            if not (auth[:7].lower() == "bearer " and auth[7:].strip() in state.bearers):
                return JSONResponse({"error": "unauthorized"}, status_code=401)
        content_type = request.headers.get("content-type")
        parsed: Any = None
        form: list[list[str]] | None = None
        media = (content_type or "").split(";")[0].strip().lower()
        if media == "application/json" or media.endswith("+json"):
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None
        elif media == "application/x-www-form-urlencoded":
            form = [[k, v] for k, v in parse_qsl(body.decode("latin-1"), keep_blank_values=True)]
        raw = request.scope.get("raw_path") or request.url.path.encode()
        return JSONResponse(
            status_code=400 if request.url.path.startswith("/echo/rejected") else 200,
            content={
                "method": request.method,
                "path": raw.decode("latin-1"),
                "query": request.scope.get("query_string", b"").decode("latin-1"),
                "headers": _headers(request),
                "cookies": dict(request.cookies),
                "content_type": content_type,
                "body": body.decode("utf-8", errors="replace"),
                "json": parsed,
                "form": form,
            },
        )

    async def status(request: Request) -> Response:
        code = int(request.path_params["code"])
        fmt = request.query_params.get("format", "json")
        try:
            reason = http.HTTPStatus(code).phrase
        except ValueError:
            reason = "Unknown"
        if fmt == "empty" or code in (204, 304):
            return Response(status_code=code)
        if fmt == "text":
            return PlainTextResponse(f"{code} {reason}: plain text error body", status_code=code)
        return JSONResponse({"error": reason, "code": code}, status_code=code)

    async def redirect(request: Request) -> Response:
        to = request.query_params.get("to", "/echo/redirected")
        code = int(request.query_params.get("status", "302"))
        hops = int(request.query_params.get("hops", "0"))
        if hops > 0:
            to = f"/redirect?hops={hops - 1}&status={code}&to={quote(to, safe='')}"
        await request.body()
        return Response(status_code=code, headers={"location": to})

    async def slow(request: Request) -> Response:
        ms = int(request.query_params.get("ms", "0"))
        if request.query_params.get("drip") == "true":

            async def drip() -> AsyncIterator[bytes]:
                for _ in range(max(ms // 100, 1)):
                    await anyio.sleep(0.1)
                    yield b"."

            return StreamingResponse(drip(), media_type="text/plain")
        await anyio.sleep(ms / 1000)
        return JSONResponse({"slept_ms": ms})

    async def large(request: Request) -> Response:
        n = int(request.query_params.get("n", "0"))
        if request.query_params.get("stream") == "true":

            async def chunks() -> AsyncIterator[bytes]:
                left = n
                while left > 0:
                    size = min(left, 65536)
                    left -= size
                    yield b"a" * size

            return StreamingResponse(chunks(), media_type="text/plain")
        if request.query_params.get("gzip") == "true":
            packed = gzip.compress(b"a" * n)
            return Response(packed, media_type="text/plain", headers={"content-encoding": "gzip"})
        return Response(b"a" * n, media_type="text/plain")

    async def text(request: Request) -> Response:
        return PlainTextResponse(TEXT)

    async def large_json(request: Request) -> Response:
        n = int(request.query_params.get("n", "0"))
        return Response(orjson.dumps(large_items(n)), media_type="application/json")

    async def custom(request: Request) -> Response:
        params = request.query_params
        deep = int(params.get("deep", "0"))
        body = b'{"c":' * deep + b"{}" + b"}" * deep if deep else params.get("text", "").encode()
        content_type = params.get("type", "application/json" if deep else "text/plain")
        return Response(body, status_code=int(params.get("status", "200")), headers={"content-type": content_type})

    async def image(request: Request) -> Response:
        return Response(PNG, media_type="image/png")

    async def binary(request: Request) -> Response:
        return Response(BINARY, media_type="application/octet-stream")

    async def empty(request: Request) -> Response:
        return Response(status_code=204)

    async def invalid_output(request: Request) -> Response:
        return JSONResponse({"id": "not-a-number", "name": 42})

    async def whoami(request: Request) -> Response:
        key = request.headers.get("x-api-key")
        if key is not None and key in state.api_keys:
            return JSONResponse({"via": "x-api-key", "digest": digest(key)})
        query_key = request.query_params.get("api_key")
        if query_key is not None and query_key in state.api_keys:
            return JSONResponse({"via": "query", "digest": digest(query_key)})
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and auth[7:].strip() in state.bearers:
            return JSONResponse({"via": "bearer", "digest": digest(auth[7:].strip())})
        return JSONResponse(
            {"error": "unauthorized"}, status_code=401, headers={"www-authenticate": 'Bearer realm="rest-api"'}
        )

    # ------------------------------------------------------------ petstore

    def pet_id(request: Request) -> int | None:
        try:
            return int(request.path_params["petId"])
        except ValueError:
            return None

    def valid_pet(data: Any) -> bool:
        return (
            isinstance(data, dict)
            and isinstance(data.get("name"), str)
            and isinstance(data.get("photoUrls"), list)
            and data.get("status", "available") in ("available", "pending", "sold")
        )

    async def pets(request: Request) -> Response:
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return JSONResponse({"code": 400, "message": "Invalid input"}, status_code=400)
        if not valid_pet(data):
            return JSONResponse({"code": 422, "message": "Validation exception"}, status_code=422)
        if request.method == "PUT":
            if not isinstance(data.get("id"), int) or data["id"] not in state.pets:
                return JSONResponse({"code": 404, "message": "Pet not found"}, status_code=404)
        elif not isinstance(data.get("id"), int):
            data["id"] = max(state.pets, default=0) + 1
        pet = {"photoUrls": [], "tags": [], **data}
        state.pets[pet["id"]] = pet
        return JSONResponse(pet)

    async def find_by_status(request: Request) -> Response:
        wanted: set[str] = set()
        for value in request.query_params.getlist("status") or ["available"]:
            wanted.update(v for v in value.split(",") if v)
        if not wanted <= {"available", "pending", "sold"}:
            return JSONResponse({"code": 400, "message": "Invalid status value"}, status_code=400)
        return JSONResponse([p for p in state.pets.values() if p.get("status") in wanted])

    async def pet(request: Request) -> Response:
        ident = pet_id(request)
        if ident is None:
            return JSONResponse({"code": 400, "message": "Invalid ID supplied"}, status_code=400)
        if request.method == "DELETE":
            if state.petstore_key is not None and request.headers.get("api_key") != state.petstore_key:
                return JSONResponse({"code": 401, "message": "api_key required"}, status_code=401)
            if state.pets.pop(ident, None) is None:
                return JSONResponse({"code": 404, "message": "Pet not found"}, status_code=404)
            return PlainTextResponse("Pet deleted")
        found = state.pets.get(ident)
        if found is None:
            return JSONResponse({"code": 404, "message": "Pet not found"}, status_code=404)
        return JSONResponse(found)

    # ------------------------------------------------------------ test control

    async def openapi(request: Request) -> Response:
        return JSONResponse(DOCUMENT)

    async def received(request: Request) -> Response:
        return JSONResponse({"count": len(state.received), "requests": state.received})

    async def reset(request: Request) -> Response:
        state.received.clear()
        state.pets = _seed_pets()
        return JSONResponse({"ok": True})

    async def set_auth(request: Request) -> Response:
        data = orjson.loads(await request.body() or b"{}")
        if "api_key" in data:
            state.api_keys = set(data["api_key"])
        if "bearer" in data:
            state.bearers = set(data["bearer"])
        return JSONResponse({"api_keys": len(state.api_keys), "bearers": len(state.bearers)})

    routes = [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/_received", received, methods=["GET"]),
        Route("/_reset", reset, methods=["POST"]),
        Route("/_auth", set_auth, methods=["POST"]),
        Route("/echo/{rest:path}", echo, methods=ALL_METHODS),
        Route("/status/{code:int}", status, methods=["GET", "POST"]),
        Route("/redirect", redirect, methods=ALL_METHODS),
        Route("/slow", slow, methods=["GET"]),
        Route("/large", large, methods=["GET"]),
        Route("/text", text, methods=["GET"]),
        Route("/large-json", large_json, methods=["GET"]),
        Route("/custom", custom, methods=["GET"]),
        Route("/image", image, methods=["GET"]),
        Route("/binary", binary, methods=["GET"]),
        Route("/empty", empty, methods=["GET"]),
        Route("/invalid-output", invalid_output, methods=["GET"]),
        Route("/auth/whoami", whoami, methods=["GET"]),
        Route("/petstore/pet", pets, methods=["POST", "PUT"]),
        Route("/petstore/pet/findByStatus", find_by_status, methods=["GET"]),
        Route("/petstore/pet/{petId}", pet, methods=["GET", "DELETE"]),
    ]
    return Recorder(Starlette(routes=routes), state)


# ---------------------------------------------------------------- running it


@dataclass
class RunningRestApi:
    """A started service: ``url`` (``http://127.0.0.1:N``) and the process (``proc.read_log()``)."""

    url: str
    proc: Any

    def _client(self) -> httpx.Client:
        return httpx.Client(trust_env=False, timeout=5)

    def received(self) -> dict[str, Any]:
        """``{"count", "requests": [{"method", "path", "query", "headers"}]}``."""
        with self._client() as http_client:
            data: dict[str, Any] = http_client.get(f"{self.url}/_received").raise_for_status().json()
        return data

    def count(self) -> int:
        return int(self.received()["count"])

    def reset(self) -> None:
        """Forget the requests received; restore the petstore's pets."""
        with self._client() as http_client:
            http_client.post(f"{self.url}/_reset").raise_for_status()

    def set_auth(self, *, api_key: Sequence[str] | None = None, bearer: Sequence[str] | None = None) -> None:
        """Replace the accepted API keys and/or bearer tokens (rotation)."""
        body: dict[str, list[str]] = {}
        if api_key is not None:
            body["api_key"] = list(api_key)
        if bearer is not None:
            body["bearer"] = list(bearer)
        with self._client() as http_client:
            http_client.post(f"{self.url}/_auth", json=body).raise_for_status()


@contextlib.contextmanager
def start_subprocess(
    log_dir: Path,
    port: int | None = None,
    *,
    api_keys: Sequence[str] = (),
    bearers: Sequence[str] = (),
    petstore_api_key: str | None = None,
    env: Mapping[str, str] | None = None,
    name: str = "rest-api",
) -> Iterator[RunningRestApi]:
    """Run this module on ``port`` (default: a free loopback port) until the block ends.

    Accepted secrets travel in the environment, never on the command line.
    """
    from tests.support.ports import free_port
    from tests.support.procs import managed_process

    port = port or free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--port", str(port)]
    full_env = dict(env or {})
    if api_keys:
        full_env["REST_API_KEYS"] = ",".join(api_keys)
    if bearers:
        full_env["REST_API_BEARERS"] = ",".join(bearers)
    if petstore_api_key is not None:
        full_env["REST_API_PETSTORE_KEY"] = petstore_api_key
    url = f"http://127.0.0.1:{port}"
    with managed_process(name, argv, log_dir=log_dir, env=full_env, wait_http=f"{url}/_received", timeout=30) as proc:
        yield RunningRestApi(url, proc)


def _split(value: str | None) -> set[str]:
    return {v for v in (value or "").split(",") if v}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="REST service for the API-to-MCP adapter's tests")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", action="append", default=[], help="an accepted x-api-key / api_key value")
    parser.add_argument("--bearer", action="append", default=[], help="an accepted bearer token")
    parser.add_argument("--petstore-api-key", default=None, help="the api_key header deletePet requires")
    args = parser.parse_args(argv)
    state = State(
        api_keys=set(args.api_key) | _split(os.environ.get("REST_API_KEYS")),
        bearers=set(args.bearer) | _split(os.environ.get("REST_API_BEARERS")),
        petstore_key=args.petstore_api_key or os.environ.get("REST_API_PETSTORE_KEY") or None,
    )
    uvicorn.run(
        build_app(state),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
