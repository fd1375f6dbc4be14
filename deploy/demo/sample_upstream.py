"""Sample MCP upstream for the gateway demo, the integration tests and the benchmark.

This is a real MCP server built on the Python SDK 2.x (`mcp.server.mcpserver.MCPServer`)
serving Streamable HTTP at ``http://<host>:<port>/mcp``. The SDK transport is dual-era:
it answers modern stateless 2026-07-28 requests (``server/discover`` + per-request ``_meta``)
and legacy ``initialize``-handshake sessions (2025-03-26 .. 2025-11-25, ``Mcp-Session-Id``)
on the same endpoint. DNS-rebinding protection stays at the SDK defaults, which accept the
``Host`` values ``127.0.0.1:<port>``, ``localhost:<port>`` and ``[::1]:<port>`` (and the
matching ``http://`` origins); anything else gets 421 (bad Host) or 403 (bad Origin).

Usage::

    python deploy/demo/sample_upstream.py --host 127.0.0.1 --port 8001 [--name demo]

The server binds loopback only (``127.0.0.1``, ``localhost`` or ``::1``); other hosts are
refused because this process has no authentication at all.

Tools (input schemas are generated from the annotated signatures below):

==================  ===============================================================  ==========================
tool                arguments (JSON Schema)                                          annotations
==================  ===============================================================  ==========================
``echo``            ``text``: string, required, maxLength 10000                      readOnly
``get_weather``     ``city``: string, required, minLength 1, maxLength 100          readOnly
``search_docs``     ``query``: string, required, minLength 1, maxLength 200;         readOnly
                    ``limit``: integer, optional, default 5, minimum 1, maximum 20
``create_ticket``   ``title``: string, required, minLength 1, maxLength 120;         not readOnly,
                    ``priority``: string enum ``low|medium|high``, required          not destructive
``delete_record``   ``record_id``: string, required, minLength 1, maxLength 64      not readOnly, destructive
==================  ===============================================================  ==========================

``create_ticket`` returns structured content ``{"ticket_id": "TCK-0001", "title": ...,
"priority": ..., "status": "open"}`` (plus the same JSON as a text block); every other tool
returns a single text block.

Resources, prompts, completion and logging (capabilities ``resources``, ``prompts``,
``completions``, ``logging``):

=================================  ==========================================================
resource                           content
=================================  ==========================================================
``demo://docs/readme``             ``text/markdown``, a short readme
``demo://docs/policies``           ``text/plain``, how policies are decided
``demo://internal/payroll``        ``text/plain``, fake payroll figures (an ``internal`` URI:
                                   the sample policy keeps it from viewers)
``demo://weather/{city}``          template: the ``get_weather`` text for ``city``
=================================  ==========================================================

Prompts: ``incident_report`` (arguments ``service`` required, ``severity`` optional) returns
one user message; ``weather_brief`` (``city`` required) returns a user message that embeds
the resource ``demo://weather/<city>``. ``completion/complete`` completes ``service`` of
``incident_report`` and ``city`` of ``weather_brief`` and of the ``demo://weather/{city}``
template by prefix. ``logging/setLevel`` accepts any level and records it.

Test hooks (plain HTTP routes beside ``/mcp``, never authenticated, never proxied):

* ``GET /_recorded`` -> ``200 application/json``::

      {"calls": [{"tool": "echo", "arguments": {"text": "hi"}}, ...],
       "requests": [{"method": "resources/read", "params": {"uri": "demo://docs/readme"}}, ...],
       "last_authorization": "Bearer ..." | null,
       "authorization_header_count": 0,
       "mcp_request_count": 3}

  ``calls`` lists every ``tools/call`` request the MCP layer received, in arrival order,
  with the raw ``name`` and ``arguments`` as sent (recorded before argument validation, so
  calls to unknown tools or with invalid arguments are recorded too). ``requests`` lists
  every other request of :data:`RECORDED_METHODS` the same way, as ``{"method", "params"}``
  (``params`` without ``_meta``).
  ``last_authorization`` is the last ``Authorization`` header value seen on any non-hook
  HTTP request, ``authorization_header_count`` counts such requests, ``mcp_request_count``
  counts all non-hook HTTP requests. A test uses these to prove that a denied call never
  reached the upstream and that a client's token was not passed through.
* ``DELETE /_recorded`` -> ``200 {"reset": true}``; clears all of the above.
* ``GET /_health`` -> ``200 {"status": "ok", "name": ...}``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import threading
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.types import (
    Completion,
    CompletionArgument,
    CompletionContext,
    EmptyResult,
    PromptReference,
    ResourceTemplateReference,
    SetLevelRequestParams,
    ToolAnnotations,
)
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["CallRecorder", "TicketResult", "build_app", "build_server", "main"]

MCP_PATH = "/mcp"
RECORDED_PATH = "/_recorded"
HEALTH_PATH = "/_health"
_HOOK_PATHS = frozenset({RECORDED_PATH, HEALTH_PATH})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
RECORDED_METHODS = frozenset(
    {
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
    }
)
"""Requests besides ``tools/call`` that ``GET /_recorded`` lists under ``requests``."""


class CallRecorder:
    """Thread-safe, in-memory record of what reached this upstream.

    Attributes are read through :meth:`snapshot` (a JSON-ready dict) and cleared by
    :meth:`reset`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[dict[str, Any]] = []
        self._requests: list[dict[str, Any]] = []
        self._last_authorization: str | None = None
        self._authorization_header_count = 0
        self._mcp_request_count = 0

    def record_call(self, tool: Any, arguments: Any) -> None:
        """Append one ``tools/call`` (raw tool name and arguments, deep-copied)."""
        with self._lock:
            self._calls.append({"tool": tool, "arguments": copy.deepcopy(arguments) if arguments is not None else {}})

    def record_request(self, method: str, params: Mapping[str, Any]) -> None:
        """Append one request of :data:`RECORDED_METHODS` (params deep-copied, without ``_meta``)."""
        kept = {k: copy.deepcopy(v) for k, v in params.items() if k != "_meta"}
        with self._lock:
            self._requests.append({"method": method, "params": kept})

    def record_http(self, authorization: str | None) -> None:
        """Count one HTTP request; remember its ``Authorization`` header value if present."""
        with self._lock:
            self._mcp_request_count += 1
            if authorization is not None:
                self._authorization_header_count += 1
                self._last_authorization = authorization

    def snapshot(self) -> dict[str, Any]:
        """Return the ``GET /_recorded`` body."""
        with self._lock:
            return {
                "calls": copy.deepcopy(self._calls),
                "requests": copy.deepcopy(self._requests),
                "last_authorization": self._last_authorization,
                "authorization_header_count": self._authorization_header_count,
                "mcp_request_count": self._mcp_request_count,
            }

    def reset(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self._calls.clear()
            self._requests.clear()
            self._last_authorization = None
            self._authorization_header_count = 0
            self._mcp_request_count = 0


class _RecordToolCalls:
    """MCP server middleware: records every inbound ``tools/call`` (and :data:`RECORDED_METHODS`
    request) before validation."""

    def __init__(self, recorder: CallRecorder) -> None:
        self._recorder = recorder

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "tools/call" and ctx.request_id is not None:
            params: Mapping[str, Any] = ctx.params or {}
            self._recorder.record_call(params.get("name"), params.get("arguments"))
        elif ctx.method in RECORDED_METHODS and ctx.request_id is not None:
            self._recorder.record_request(ctx.method, ctx.params or {})
        return await call_next(ctx)


class _RecordAuthorization:
    """Pure ASGI wrapper: counts HTTP requests and remembers the last ``Authorization`` value.

    Hook routes (``/_recorded``, ``/_health``) are not counted. Lifespan and other scope
    types pass straight through, so the SDK's session-manager lifespan still runs.
    """

    def __init__(self, app: ASGIApp, recorder: CallRecorder) -> None:
        self._app = app
        self._recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") not in _HOOK_PATHS:
            authorization: str | None = None
            for key, value in scope.get("headers", ()):
                if key.lower() == b"authorization":
                    authorization = value.decode("latin-1")
            self._recorder.record_http(authorization)
        await self._app(scope, receive, send)


class TicketResult(BaseModel):
    """Structured result of ``create_ticket``."""

    ticket_id: str
    title: str
    priority: Literal["low", "medium", "high"]
    status: Literal["open"] = "open"


_WEATHER = {
    "paris": "Paris: 18 C, light rain, wind 12 km/h W",
    "london": "London: 14 C, overcast, wind 20 km/h SW",
    "tokyo": "Tokyo: 24 C, sunny, wind 5 km/h S",
}

_DOCS = [
    ("Getting started", "Install the gateway, point it at an upstream and mint a token."),
    ("Policies", "Every tools/call is decided by OPA; deny is the default."),
    ("Upstreams", "Upstreams are registered in the control plane with their URL and era."),
    ("Tokens", "The gateway validates RS256 JWTs against the configured JWKS."),
    ("Auditing", "Every decision is written to the audit log with the input and result."),
    ("Rate limits", "Per-client rate limits are enforced before policy evaluation."),
    ("Tool filtering", "tools/list only shows tools the caller may call."),
    ("Benchmarks", "The echo tool of the sample upstream is used to measure overhead."),
]


_SERVICES = ("api", "auth", "billing", "search", "vpn")
_PAYROLL = "Payroll (fake): alice 1000, bob 1000, carol 1000."


def _weather(city: str) -> str:
    return _WEATHER.get(city.strip().lower(), f"{city}: 21 C, partly cloudy, wind 10 km/h N")


def build_server(name: str = "demo", recorder: CallRecorder | None = None) -> tuple[MCPServer, CallRecorder]:
    """Create the sample ``MCPServer`` (tools, resources, prompts, completion, logging, hook
    routes) and its :class:`CallRecorder`."""
    recorder = recorder if recorder is not None else CallRecorder()
    mcp = MCPServer(
        name=name,
        version="0.1.0",
        instructions="Sample upstream for the MCP gateway demo. All data is fake.",
        middleware=[_RecordToolCalls(recorder)],
        log_level="WARNING",
    )
    ticket_numbers = itertools.count(1)

    @mcp.tool(
        title="Echo",
        description="Return the given text unchanged.",
        annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False),
        structured_output=False,
    )
    def echo(text: Annotated[str, Field(max_length=10_000, description="Text to echo back.")]) -> str:
        return text

    @mcp.tool(
        title="Get weather",
        description="Return a (fake, fixed) weather forecast for a city.",
        annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False),
        structured_output=False,
    )
    def get_weather(
        city: Annotated[str, Field(min_length=1, max_length=100, description="City name, e.g. 'Paris'.")],
    ) -> str:
        return _weather(city)

    @mcp.tool(
        title="Search docs",
        description="Search the (fake) product documentation and return up to `limit` hits.",
        annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False),
        structured_output=False,
    )
    def search_docs(
        query: Annotated[str, Field(min_length=1, max_length=200, description="Search terms.")],
        limit: Annotated[int, Field(ge=1, le=20, description="Maximum number of hits (1..20).")] = 5,
    ) -> str:
        words = [w for w in query.lower().split() if w]
        hits = [d for d in _DOCS if any(w in (d[0] + " " + d[1]).lower() for w in words)] or _DOCS
        lines = [f"{i}. {title}: {body}" for i, (title, body) in enumerate(hits[:limit], start=1)]
        return f"{len(lines)} result(s) for {query!r}:\n" + "\n".join(lines)

    @mcp.tool(
        title="Create ticket",
        description="Open a (fake) support ticket and return its id.",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
    )
    def create_ticket(
        title: Annotated[str, Field(min_length=1, max_length=120, description="Ticket title.")],
        priority: Annotated[Literal["low", "medium", "high"], Field(description="Ticket priority.")],
    ) -> TicketResult:
        return TicketResult(ticket_id=f"TCK-{next(ticket_numbers):04d}", title=title, priority=priority)

    @mcp.tool(
        title="Delete record",
        description="Delete a (fake) record by id. Destructive.",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
        ),
        structured_output=False,
    )
    def delete_record(
        record_id: Annotated[str, Field(min_length=1, max_length=64, description="Id of the record to delete.")],
    ) -> str:
        return f"record {record_id} deleted"

    _add_resources_and_prompts(mcp)
    levels: list[str] = []

    async def set_level(ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams) -> EmptyResult:
        levels.append(params.level)
        return EmptyResult()

    # No public MCPServer hook exists for logging/setLevel (deprecated in 2026-07-28); the
    # low-level server advertises the `logging` capability once the handler is registered.
    mcp._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)

    @mcp.custom_route(RECORDED_PATH, methods=["GET", "DELETE"])
    async def recorded(request: Request) -> JSONResponse:
        if request.method == "DELETE":
            recorder.reset()
            return JSONResponse({"reset": True})
        return JSONResponse(recorder.snapshot())

    @mcp.custom_route(HEALTH_PATH, methods=["GET"])
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "name": name})

    return mcp, recorder


def _add_resources_and_prompts(mcp: MCPServer) -> None:
    """Register the sample resources, resource template, prompts and completion handler."""

    @mcp.resource("demo://docs/readme", name="readme", title="Readme", mime_type="text/markdown")
    def readme() -> str:
        return "# Demo upstream\n\nA sample MCP server. All data is fake."

    @mcp.resource("demo://docs/policies", name="policies", title="Policies", mime_type="text/plain")
    def policies() -> str:
        return _DOCS[1][1]

    @mcp.resource("demo://internal/payroll", name="payroll", title="Payroll (internal)", mime_type="text/plain")
    def payroll() -> str:
        return _PAYROLL

    @mcp.resource("demo://weather/{city}", name="weather", title="Weather by city", mime_type="text/plain")
    def weather(city: str) -> str:
        return _weather(city)

    @mcp.prompt(title="Incident report", description="Draft an incident report for a service.")
    def incident_report(service: str, severity: str = "medium") -> str:
        return f"Write an incident report for service {service!r} (severity {severity})."

    @mcp.prompt(title="Weather brief", description="Brief the user on the weather in a city.")
    def weather_brief(city: str) -> list[dict[str, Any]]:
        uri = f"demo://weather/{city}"
        return [
            {
                "role": "user",
                "content": {
                    "type": "resource",
                    "resource": {"uri": uri, "mimeType": "text/plain", "text": _weather(city)},
                },
            },
            {"role": "user", "content": f"Summarise the weather in {city} in one sentence."},
        ]

    @mcp.completion()
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion | None:
        if argument.name == "service":
            options: tuple[str, ...] = _SERVICES
        elif argument.name == "city":
            options = tuple(sorted(_WEATHER))
        else:
            return None
        values = [o for o in options if o.startswith(argument.value.lower())]
        return Completion(values=values, total=len(values), has_more=False)


def build_app(name: str = "demo", host: str = "127.0.0.1") -> tuple[ASGIApp, CallRecorder]:
    """Return the full ASGI app (MCP at ``/mcp`` + hook routes, with lifespan) and its recorder."""
    mcp, recorder = build_server(name)
    # transport_security=None + a loopback host = the SDK's default DNS-rebinding allowlist.
    starlette_app = mcp.streamable_http_app(streamable_http_path=MCP_PATH, host=host)
    return _RecordAuthorization(starlette_app, recorder), recorder


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: ``--host 127.0.0.1 --port N [--name demo] [--log-level warning]``."""
    parser = argparse.ArgumentParser(description="Sample MCP upstream (Streamable HTTP at /mcp) for the gateway demo.")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="TCP port (default 8001)")
    parser.add_argument("--name", default="demo", help="server name reported in serverInfo (default demo)")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level (default warning)",
    )
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK_HOSTS:
        parser.error(f"--host must be a loopback address ({', '.join(sorted(LOOPBACK_HOSTS))}); got {args.host!r}")

    import uvicorn

    app, _ = build_app(args.name, args.host)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=3,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
