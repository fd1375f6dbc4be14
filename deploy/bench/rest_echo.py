"""The REST endpoint of `make bench`'s ``api_adapter`` section: one small JSON GET, and its OpenAPI document.

A Starlette app run by uvicorn exactly as the sample MCP upstream is run
(``deploy/demo/sample_upstream.py``: ``uvicorn.run`` with its default loop and HTTP parser,
uvloop and httptools when installed, log level ``warning``), so a REST request to it costs
about what the bench's RTT unit (``GET /_health`` of the sample upstream, a Starlette route
answering a small ``JSONResponse``) costs. Routes:

* ``GET /items/{id}?q=<text>`` (operation ``getItem``) -> ``200 {"id": <id>, "q": <q or null>,
  "name": "item-<id>"}``; ``id`` is an integer (``{id:int}``: anything else is 404);
* ``GET /_health`` -> ``200 {"status": "ok"}``;
* ``GET /openapi.json`` -> :data:`DOCUMENT`.

Nothing is recorded or logged per request (a growing request log would make the direct side
of the measure slower as the run goes on).

    python deploy/bench/rest_echo.py --port N
"""

from __future__ import annotations

import argparse
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["DOCUMENT", "OPERATION_ID", "build_app", "item"]

OPERATION_ID = "getItem"
"""The one operation: its tool is ``<source>__getItem`` on ``/mcp``."""

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "bench REST echo", "version": "1.0.0"},
    "paths": {
        "/items/{id}": {
            "get": {
                "operationId": OPERATION_ID,
                "summary": "One item by id",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}},
                    {"name": "q", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "The item",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "id": {"type": "integer"},
                                        "q": {"type": ["string", "null"]},
                                        "name": {"type": "string"},
                                    },
                                    "required": ["id", "q", "name"],
                                }
                            }
                        },
                    }
                },
            }
        }
    },
}
"""The OpenAPI 3.1 document of :func:`build_app`'s ``getItem`` (what the bench registers)."""


def item(item_id: int, q: str | None) -> dict[str, Any]:
    """The JSON object ``GET /items/{item_id}?q=<q>`` answers."""
    return {"id": item_id, "q": q, "name": f"item-{item_id}"}


async def _get_item(request: Request) -> JSONResponse:
    return JSONResponse(item(request.path_params["id"], request.query_params.get("q")))


async def _health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _openapi(request: Request) -> JSONResponse:
    return JSONResponse(DOCUMENT)


def build_app() -> Starlette:
    """The ASGI app (routes in the module docstring)."""
    return Starlette(
        routes=[
            Route("/items/{id:int}", _get_item, methods=["GET"]),
            Route("/_health", _health, methods=["GET"]),
            Route("/openapi.json", _openapi, methods=["GET"]),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """CLI: ``--host 127.0.0.1 --port N``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "localhost", "::1"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(build_app(), host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()
