"""Benchmark upstream: a real MCP server (Python SDK ``MCPServer``) with N tools, for `make bench`.

Serves Streamable HTTP at ``http://<host>:<port>/mcp`` (both eras, like the sample upstream)
and ``GET /_health``. Tools, all annotated ``readOnlyHint: true`` (so the sample policy lets a
``viewer`` call them):

* ``echo(text: str)`` -- returns ``text`` unchanged; unlike the sample upstream's ``echo`` (at
  most 10,000 characters) the text is unbounded, so the benchmark can send 10 KB and 1 MB
  arguments (the SDK still refuses request bodies above 4 MiB);
* ``tool_0001`` .. ``tool_<N-1>(query: str, limit: int = 5)`` -- filler tools, each with its
  own description, so ``tools/list`` returns N definitions of a realistic size (~400 bytes).

Usage::

    python deploy/bench/upstream_many.py --port 8002 --tools 1000
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp

__all__ = ["build_app", "main"]

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)


def _filler(index: int) -> Callable[..., str]:
    def tool(
        query: Annotated[str, Field(min_length=1, max_length=200, description="Search terms.")],
        limit: Annotated[int, Field(ge=1, le=20, description="Maximum number of hits (1..20).")] = 5,
    ) -> str:
        return f"tool {index}: {limit} hit(s) for {query!r}"

    return tool


def build_app(tools: int, host: str = "127.0.0.1") -> ASGIApp:
    """The ASGI app serving ``tools`` tools (``echo`` + ``tools - 1`` fillers) at ``/mcp``."""
    if tools < 1:
        raise ValueError("tools must be >= 1")
    mcp = MCPServer(name=f"bench-{tools}", version="0.1.0", log_level="WARNING")

    def echo(text: Annotated[str, Field(description="Text to echo back (unbounded).")]) -> str:
        return text

    mcp.add_tool(
        echo,
        title="Echo",
        description="Return the given text unchanged.",
        annotations=READ_ONLY,
        structured_output=False,
    )
    for i in range(1, tools):
        mcp.add_tool(
            _filler(i),
            name=f"tool_{i:04d}",
            title=f"Filler tool {i}",
            description=f"Benchmark filler tool number {i}: searches a fake index and returns up to `limit` hits.",
            annotations=READ_ONLY,
            structured_output=False,
        )

    @mcp.custom_route("/_health", methods=["GET"])
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "tools": tools})

    return mcp.streamable_http_app(streamable_http_path="/mcp", host=host)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``--host 127.0.0.1 --port N --tools N``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "localhost", "::1"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tools", type=int, default=10)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(
        build_app(args.tools, args.host),
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
