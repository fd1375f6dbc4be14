"""An MCP upstream whose tools talk back to the client while they run (real SDK server).

Tools (all ``readOnlyHint``):

* ``count(steps)``: one ``notifications/progress`` (``progress`` 1..steps, ``total``,
  ``message "step i"``) and one ``notifications/message`` (info, ``"step i"``) per step,
  ``pause`` seconds apart; returns ``"counted <steps>"``;
* ``summarize(text)``: asks the client ``sampling/createMessage`` and returns the model's text;
* ``confirm(question)``: asks the client ``elicitation/create`` (``{"ok": boolean}``) and
  returns ``"<action> <ok>"``;
* ``roots()``: asks the client ``roots/list`` and returns the root URIs, comma-separated;
* ``session()``: answers ``"ok"`` (opens the caller's upstream session);
* ``revision()``: the protocol revision of the upstream session the call arrived on;
* ``touch(uri)``: announces ``notifications/resources/updated`` of ``uri`` to its
  subscribers (2026-07-28 listeners, and handshake-era sessions that sent
  ``resources/subscribe``; resources ``relay://watched`` and ``relay://internal/secret``);
* ``change_tools()``: announces ``notifications/tools/list_changed`` to 2026-07-28 listeners;
* ``wait(seconds)``: sleeps; a cancelled one is counted (``GET /_state`` ->
  ``{"started": n, "cancelled": n, "finished": n}``).

The questions are asked with the SDK's resolvers: in a handshake-era session as requests
related to the call (on streamable HTTP they ride the call's response stream), in a
2026-07-28 one as an ``input_required`` result the client answers in its retry.

    python tests/support/relay_upstream.py --port N [--transport streamable-http|sse|stdio] [--pin-version V]
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    Elicit,
    ElicitationResult,
    ListRoots,
    MCPServer,
    Resolve,
    Sample,
)
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

READ_ONLY = types.ToolAnnotations(read_only_hint=True)


class Confirmation(BaseModel):
    ok: bool


# Resolvers: the SDK asks the client mid-call (handshake era) or with an input_required
# result (2026-07-28), whichever the session speaks.
def _sample(text: str) -> Sample:
    message = types.SamplingMessage(role="user", content=types.TextContent(type="text", text=f"Summarize: {text}"))
    return Sample([message], max_tokens=50)


def _ask(question: str) -> Elicit[Confirmation]:
    return Elicit(question, Confirmation)


def _roots() -> ListRoots:
    return ListRoots()


def build_server() -> MCPServer:
    """The ``relay`` server (see the module docstring)."""
    mcp = MCPServer(name="relay", version="0.1.0", log_level="WARNING")
    state = {"started": 0, "cancelled": 0, "finished": 0, "counted": 0}

    @mcp.tool(annotations=READ_ONLY, description="Count, reporting progress and logging each step.")
    async def count(steps: int, ctx: Context, pause: float = 0.02) -> str:
        for i in range(1, steps + 1):
            await ctx.report_progress(i, steps, f"step {i}")
            await ctx.info(f"step {i}")
            await anyio.sleep(pause)
        state["counted"] += 1
        return f"counted {steps}"

    @mcp.tool(annotations=READ_ONLY, description="Summarize a text with the client's model.")
    async def summarize(text: str, sampled: Annotated[types.CreateMessageResult, Resolve(_sample)]) -> str:
        content = sampled.content
        return content.text if isinstance(content, types.TextContent) else str(content)

    @mcp.tool(annotations=READ_ONLY, description="Ask the user to confirm.")
    async def confirm(question: str, answer: Annotated[ElicitationResult[Confirmation], Resolve(_ask)]) -> str:
        ok = answer.data.ok if isinstance(answer, AcceptedElicitation) else None
        return f"{answer.action} {ok}"

    @mcp.tool(annotations=READ_ONLY, description="List the client's roots.")
    async def roots(listed: Annotated[types.ListRootsResult, Resolve(_roots)]) -> str:
        return ",".join(str(root.uri) for root in listed.roots)

    @mcp.tool(annotations=READ_ONLY, description="Answer at once.")
    async def session() -> str:
        return "ok"

    @mcp.tool(annotations=READ_ONLY, description="The protocol revision of the session this call arrived on.")
    async def revision(ctx: Context) -> str:
        return str(ctx.request_context.protocol_version)

    @mcp.tool(annotations=READ_ONLY, description="Wait, then answer.")
    async def wait(seconds: float) -> str:
        state["started"] += 1
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            state["cancelled"] += 1
            raise
        state["finished"] += 1
        return "waited"

    # -- resources a client may subscribe to, and list changes
    subscribed: dict[str, list[Any]] = {}  # uri -> handshake-era sessions that subscribed

    @mcp.resource("relay://watched", mime_type="text/plain")
    def watched() -> str:
        return "watched"

    @mcp.resource("relay://internal/secret", mime_type="text/plain")
    def secret() -> str:
        return "secret"

    async def on_subscribe(
        ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        subscribed.setdefault(str(params.uri), []).append(ctx.session)
        return types.EmptyResult()

    async def on_unsubscribe(
        ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        subscribed.pop(str(params.uri), None)
        return types.EmptyResult()

    mcp._lowlevel_server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, on_subscribe)
    mcp._lowlevel_server.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, on_unsubscribe)

    @mcp.tool(annotations=READ_ONLY, description="Announce that a resource changed.")
    async def touch(uri: str, ctx: Context) -> str:
        await ctx.notify_resource_updated(uri)  # 2026-07-28 listeners
        for session in subscribed.get(uri, []):  # handshake-era subscribers
            await session.send_resource_updated(uri)
        return "touched"

    @mcp.tool(annotations=READ_ONLY, description="Announce that the tool list changed.")
    async def change_tools(ctx: Context) -> str:
        await ctx.notify_tools_changed()
        return "changed"

    @mcp.custom_route("/_state", methods=["GET"])
    async def get_state(request: Request) -> JSONResponse:
        return JSONResponse(state)

    return mcp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--transport", default="streamable-http", choices=["streamable-http", "sse", "stdio"])
    parser.add_argument(
        "--pin-version",
        choices=["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"],
        help="answer every initialize with this revision (sse and stdio: handshake era only)",
    )
    args = parser.parse_args(argv)
    if args.pin_version:
        # The SDK server negotiates the requested revision when it knows it, else its latest:
        # knowing only this one, it answers it to whatever the gateway asks.
        import mcp.server.runner as runner

        runner.HANDSHAKE_PROTOCOL_VERSIONS = (args.pin_version,)  # type: ignore[misc]
        runner.LATEST_HANDSHAKE_VERSION = args.pin_version  # type: ignore[misc]
    mcp = build_server()
    kwargs: dict[str, Any] = {} if args.transport == "stdio" else {"host": "127.0.0.1", "port": args.port}
    mcp.run(args.transport, **kwargs)


if __name__ == "__main__":
    main()
