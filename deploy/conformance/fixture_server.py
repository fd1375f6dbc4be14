"""Conformance fixture: the MCP server ``make conformance`` runs the official suite against.

``@modelcontextprotocol/conformance`` (server side) acts as an MCP client and expects a server
that exposes a fixed set of ``test_*`` tools, ``test://`` resources and ``test_*`` prompts with
fixed behaviour (its "everything server" contract). This module is our own implementation of that
contract on the Python SDK 2.x ``MCPServer``, served over Streamable HTTP at
``http://<host>:<port>/mcp`` in both protocol eras on one endpoint: the 2025-11-25
``initialize`` handshake with ``Mcp-Session-Id`` sessions (SSE responses, resumable with an
in-memory event store) and the stateless 2026-07-28 revision (``server/discover`` + per-request
``_meta``). The suite is run against it directly and through the gateway, so a check that passes
here and fails through the gateway shows a gateway gap.

Usage::

    python deploy/conformance/fixture_server.py --host 127.0.0.1 --port 8002

Binds loopback only (no authentication). ``GET /_health`` answers ``200 {"status": "ok"}``.

The contract (names and texts are the suite's; where the suite checks a value it is noted):

* Tools (``tools/call``): ``test_simple_text``, ``test_image_content`` (1x1 PNG),
  ``test_audio_content`` (WAV, ``audio/wav``), ``test_embedded_resource``,
  ``test_multiple_content_types`` (text + image + resource), ``test_tool_with_logging`` (three
  ``notifications/message`` at ``info``), ``test_tool_with_progress`` (progress 0/50/100 of 100
  for the caller's ``progressToken``; returns the token), ``test_error_handling`` (a tool error,
  ``isError: true``), ``test_sampling(prompt)`` and ``test_elicitation(message)`` (a
  ``sampling/createMessage`` / ``elicitation/create`` asked with the SDK's resolvers: a request
  on the call's stream in the handshake era, an ``input_required`` result in 2026-07-28), ``test_elicitation_sep1034_defaults`` (every primitive with a ``default``),
  ``test_elicitation_sep1330_enums`` (the five enum shapes), ``test_reconnection`` (closes the
  call's SSE stream mid-call; SEP-1699 polling), ``json_schema_2020_12_tool`` (a JSON Schema
  2020-12 ``inputSchema`` with ``$schema``, ``$defs``, ``$anchor``, ``allOf``/``anyOf``,
  ``if``/``then``/``else``, ``additionalProperties: false``; SEP-1613/SEP-2106),
  ``test_x_mcp_header(region)`` (``region`` carries ``x-mcp-header: Region``; SEP-2243),
  ``test_missing_capability`` (``-32021`` with ``data.requiredCapabilities.sampling`` unless
  the client declared ``sampling``), ``test_logging_tool`` (logs; the SDK drops the log unless
  the 2026-07-28 request opted in with ``_meta`` ``logLevel``), ``test_streaming_elicitation``
  (a progress notification, then the result), ``test_trigger_tool_change`` /
  ``test_trigger_prompt_change`` (mutate the lists and announce it to
  ``subscriptions/listen`` streams; SEP-2575) and the SEP-2322 multi-round-trip tools
  ``test_input_required_result_{elicitation,sampling,list_roots,request_state,
  multiple_inputs,multi_round,tampered_state,capabilities}`` (answer ``resultType:
  "input_required"`` with ``inputRequests`` until the retry carries the ``inputResponses``).
* Resources: ``test://static-text`` (text), ``test://static-binary`` (PNG blob),
  ``test://watched-resource`` (subscribable), template ``test://template/{id}/data`` (JSON);
  ``resources/subscribe`` / ``resources/unsubscribe`` accepted (handshake era).
* Prompts: ``test_simple_prompt``, ``test_prompt_with_arguments(arg1, arg2)``,
  ``test_prompt_with_embedded_resource(resourceUri)``, ``test_prompt_with_image``,
  ``test_input_required_result_prompt`` (SEP-2322 on ``prompts/get``).
* ``completion/complete`` answers an empty completion; ``logging/setLevel`` is accepted
  (handshake era).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import secrets
from collections.abc import Callable
from typing import Annotated, Any

from mcp.server import ServerRequestContext
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    Elicit,
    ElicitationResult,
    MCPServer,
    RequestStateSecurity,
    Resolve,
    Sample,
)
from mcp.server.mcpserver.prompts.base import Message, Prompt, UserMessage
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.exceptions import MCPError
from mcp.types import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    AudioContent,
    Completion,
    CompletionArgument,
    CompletionContext,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    JSONRPCMessage,
    ListRootsRequest,
    ListRootsResult,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["PNG_1X1", "WAV_TINY", "MemoryEventStore", "build_app", "build_server", "main"]

log = logging.getLogger("conformance.fixture")

MCP_PATH = "/mcp"
HEALTH_PATH = "/_health"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SERVER_NAME = "mcp-opa-gateway-conformance-fixture"

PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
"""A 1x1 PNG, base64 (the image of every image content and of ``test://static-binary``)."""
WAV_TINY = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
"""A minimal WAV file, base64."""

SSE_RETRY_MS = 100
"""The SSE ``retry`` the transport announces; the suite's polling scenario reconnects after it."""

# The 2020-12 input schema of json_schema_2020_12_tool: the keywords the suite asserts survive
# tools/list unchanged (SEP-1613: $schema, $defs, additionalProperties; SEP-2106: the rest).
SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


class MemoryEventStore(EventStore):
    """Every SSE event of every stream, in memory, so a reconnect with ``Last-Event-ID`` resumes.

    Event ids are ``<sequence>`` (decimal, increasing over the process); a replay sends the
    stored events of the same stream with a higher sequence, skipping priming events.
    """

    def __init__(self) -> None:
        self._events: list[tuple[int, str, JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        seq = len(self._events) + 1
        self._events.append((seq, stream_id, message))
        return str(seq)

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        if not last_event_id.isdigit():
            return None
        after = int(last_event_id)
        if not 1 <= after <= len(self._events):
            return None
        stream = self._events[after - 1][1]
        for seq, stream_id, message in self._events[after:]:
            if stream_id == stream and message is not None:
                await send_callback(EventMessage(message, str(seq)))
        return stream


# ---------------------------------------------------------------- helpers
def _form(message: str, properties: dict[str, Any], required: list[str]) -> ElicitRequest:
    schema = {"type": "object", "properties": properties, "required": required}
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _ask_text(message: str, field: str) -> ElicitRequest:
    return _form(message, {field: {"type": "string"}}, [field])


def _sample(text: str, max_tokens: int) -> CreateMessageRequest:
    message = SamplingMessage(role="user", content=TextContent(type="text", text=text))
    return CreateMessageRequest(params=CreateMessageRequestParams(messages=[message], max_tokens=max_tokens))


def _elicited(answer: Any, field: str, fallback: str = "?") -> str:
    if isinstance(answer, ElicitResult) and answer.content and field in answer.content:
        return str(answer.content[field])
    return fallback


def _sampled(answer: Any) -> str:
    if isinstance(answer, CreateMessageResult) and isinstance(answer.content, TextContent):
        return answer.content.text
    return "?"


class _Reply(BaseModel):
    response: str = Field(description="User's response")


class _Defaults(BaseModel):
    """SEP-1034: a default for each primitive type."""

    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(
        default="active", description="User status", json_schema_extra={"enum": ["active", "inactive", "pending"]}
    )
    verified: bool = Field(default=True, description="Verification status")


def _titled(pairs: list[tuple[str, str]]) -> Any:
    return [{"const": value, "title": title} for value, title in pairs]


class _Enums(BaseModel):
    """SEP-1330: untitled/titled single and multi select, and the legacy ``enumNames``."""

    untitledSingle: str = Field(description="Pick one", json_schema_extra={"enum": ["red", "green", "blue"]})
    titledSingle: str = Field(
        description="Pick one (titled)",
        json_schema_extra={"oneOf": _titled([("s", "Small"), ("m", "Medium"), ("l", "Large")])},
    )
    legacyEnum: str = Field(
        description="Pick one (legacy titles)",
        json_schema_extra={"enum": ["north", "south"], "enumNames": ["North", "South"]},
    )
    untitledMulti: list[str] = Field(
        description="Pick some", json_schema_extra={"items": {"type": "string", "enum": ["a", "b", "c"]}}
    )
    titledMulti: list[str] = Field(
        description="Pick some (titled)",
        json_schema_extra={"items": {"anyOf": _titled([("x", "Ex"), ("y", "Why"), ("z", "Zed")])}},
    )


def _sample_prompt(prompt: str) -> Sample:
    return Sample([SamplingMessage(role="user", content=TextContent(type="text", text=prompt))], max_tokens=100)


def _ask_reply(message: str) -> Elicit[_Reply]:
    return Elicit(message, _Reply)


def _ask_defaults() -> Elicit[_Defaults]:
    return Elicit("Please review the defaults", _Defaults)


def _ask_enums() -> Elicit[_Enums]:
    return Elicit("Please pick from the enums", _Enums)


def _outcome(answer: Any) -> str:
    content = answer.data.model_dump_json() if isinstance(answer, AcceptedElicitation) else "{}"
    return f"action={answer.action}, content={content}"


# ---------------------------------------------------------------- the server
def build_server(request_state_key: bytes | None = None) -> MCPServer:
    """The fixture server (tools, resources, prompts, completion, logging, subscriptions).

    Args:
        request_state_key: At least 32 bytes sealing SEP-2322 ``requestState``; a random one
            per process when omitted (the state only has to survive this process).
    """
    key = request_state_key or secrets.token_bytes(32)
    mcp = MCPServer(name=SERVER_NAME, version="1.0.0", request_state_security=RequestStateSecurity(keys=[key]))
    subscribed: set[str] = set()

    def tool(fn: Callable[..., Any]) -> None:
        mcp.add_tool(fn, description=(fn.__doc__ or "").strip())

    # -- content tools
    def test_simple_text() -> str:
        """Tests simple text content response."""
        return "This is a simple text response for testing."

    def test_image_content() -> list[ImageContent]:
        """Tests image content response."""
        return [ImageContent(type="image", data=PNG_1X1, mime_type="image/png")]

    def test_audio_content() -> list[AudioContent]:
        """Tests audio content response."""
        return [AudioContent(type="audio", data=WAV_TINY, mime_type="audio/wav")]

    def test_embedded_resource() -> list[EmbeddedResource]:
        """Tests embedded resource content response."""
        inner = TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
        )
        return [EmbeddedResource(type="resource", resource=inner)]

    def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
        """Tests response with multiple content types (text, image, resource)."""
        inner = TextResourceContents(
            uri="test://mixed-content-resource",
            mime_type="application/json",
            text=json.dumps({"test": "data", "value": 123}),
        )
        return [
            TextContent(type="text", text="Multiple content types test:"),
            ImageContent(type="image", data=PNG_1X1, mime_type="image/png"),
            EmbeddedResource(type="resource", resource=inner),
        ]

    def test_error_handling() -> str:
        """Tests error response handling (always a tool error)."""
        raise RuntimeError("This tool intentionally returns an error for testing")

    content_tools: tuple[Callable[..., Any], ...] = (
        test_simple_text,
        test_image_content,
        test_audio_content,
        test_embedded_resource,
        test_multiple_content_types,
        test_error_handling,
    )
    for fn in content_tools:
        tool(fn)

    # -- server-to-client traffic during a call
    async def test_tool_with_logging(ctx: Context) -> str:
        """Tests tool that emits log messages during execution."""
        for step in ("Tool execution started", "Tool processing data", "Tool execution completed"):
            await ctx.log("info", step)
            await asyncio.sleep(0.05)
        return "Tool with logging executed successfully"

    async def test_tool_with_progress(ctx: Context) -> str:
        """Tests tool that reports progress notifications."""
        for done in (0, 50, 100):
            await ctx.report_progress(progress=done, total=100, message=f"Completed step {done} of 100")
            await asyncio.sleep(0.05)
        meta = ctx.request_context.meta or {}
        return str(meta.get("progress_token", 0))

    # Sampling and elicitation go through the SDK's resolvers, so the fixture asks the way the
    # session's era wants: a request on the call's stream (handshake era), or an
    # input_required result answered by the client's retry (2026-07-28).
    async def test_sampling(prompt: str, sampled: Annotated[CreateMessageResult, Resolve(_sample_prompt)]) -> str:
        """Tests server-initiated sampling (LLM completion request)."""
        return f"LLM response: {_sampled(sampled)}"

    async def test_elicitation(message: str, answer: Annotated[ElicitationResult[_Reply], Resolve(_ask_reply)]) -> str:
        """Tests server-initiated elicitation (user input request)."""
        return "User response: " + _outcome(answer)

    async def test_elicitation_sep1034_defaults(
        answer: Annotated[ElicitationResult[_Defaults], Resolve(_ask_defaults)],
    ) -> str:
        """Tests elicitation with default values for all primitive types (SEP-1034)."""
        return "Elicitation completed: " + _outcome(answer)

    async def test_elicitation_sep1330_enums(
        answer: Annotated[ElicitationResult[_Enums], Resolve(_ask_enums)],
    ) -> str:
        """Tests elicitation with the enum schema variants of SEP-1330."""
        return "Elicitation completed: " + _outcome(answer)

    async def test_reconnection(ctx: Context) -> str:
        """Tests SSE polling: closes the call's stream mid-call, answers after the reconnect (SEP-1699)."""
        await ctx.log("info", "Before disconnect")
        await ctx.close_sse_stream()
        await asyncio.sleep(0.2)
        await ctx.log("info", "After reconnect")
        return "Reconnection test completed"

    async def test_logging_tool(ctx: Context) -> str:
        """Logs once; a 2026-07-28 request without a _meta log level must not see it."""
        await ctx.log("info", "Diagnostic trace logging activated")
        return "Logging evaluated"

    async def test_streaming_elicitation(ctx: Context) -> str:
        """Streams a progress notification before its result."""
        await ctx.report_progress(progress=50, total=100)
        return "Streaming complete"

    def test_x_mcp_header(
        region: Annotated[
            str,
            Field(description="Mirrored in the Mcp-Param-Region header", json_schema_extra={"x-mcp-header": "Region"}),
        ] = "none",
    ) -> str:
        """Echoes the region argument that the x-mcp-header annotation mirrors into a header (SEP-2243)."""
        return f"region={region}"

    async def test_missing_capability(ctx: Context) -> str:
        """Needs the client's sampling capability; -32021 without it."""
        caps = ctx.client_capabilities
        if caps is None or caps.sampling is None:
            raise MCPError(
                code=MISSING_REQUIRED_CLIENT_CAPABILITY,
                message="test_missing_capability needs the client's sampling capability",
                data={"requiredCapabilities": {"sampling": {}}},
            )
        return "Success"

    def json_schema_2020_12_tool() -> str:
        """Tool with JSON Schema 2020-12 features (SEP-1613)."""
        return "json_schema_2020_12_tool called"

    def _dynamic() -> str:
        """Registered and removed again by the change triggers."""
        return "dynamic"

    async def test_trigger_tool_change(ctx: Context) -> str:
        """Adds and removes a tool, then announces tools/list_changed (SEP-2575)."""
        mcp.add_tool(_dynamic, name="test_dynamic_tool")
        mcp.remove_tool("test_dynamic_tool")
        await ctx.notify_tools_changed()
        return "Mutation triggered"

    async def test_trigger_prompt_change(ctx: Context) -> str:
        """Adds and removes a prompt, then announces prompts/list_changed (SEP-2575)."""
        mcp.add_prompt(Prompt.from_function(_dynamic, name="test_dynamic_prompt", description="dynamic"))
        mcp.remove_prompt("test_dynamic_prompt")
        await ctx.notify_prompts_changed()
        return "Mutation triggered"

    for fn in (
        test_tool_with_logging,
        test_tool_with_progress,
        test_sampling,
        test_elicitation,
        test_elicitation_sep1034_defaults,
        test_elicitation_sep1330_enums,
        test_reconnection,
        test_logging_tool,
        test_streaming_elicitation,
        test_x_mcp_header,
        test_missing_capability,
        json_schema_2020_12_tool,
        test_trigger_tool_change,
        test_trigger_prompt_change,
    ):
        tool(fn)
    # The SDK derives inputSchema from the signature; this tool publishes the raw 2020-12 one.
    mcp._tool_manager._tools["json_schema_2020_12_tool"].parameters = SCHEMA_2020_12

    _register_input_required(mcp, tool)

    # -- resources
    @mcp.resource("test://static-text", mime_type="text/plain")
    def static_text() -> str:
        """A static text resource for testing."""
        return "This is the content of the static text resource."

    @mcp.resource("test://static-binary", mime_type="image/png")
    def static_binary() -> bytes:
        """A static binary resource (image) for testing."""
        return base64.b64decode(PNG_1X1)

    @mcp.resource("test://watched-resource", mime_type="text/plain")
    def watched_resource() -> str:
        """A resource clients may subscribe to."""
        return "Watched resource content"

    @mcp.resource("test://template/{id}/data", mime_type="application/json")
    def template_data(id: str) -> str:
        """A resource template with parameter substitution."""
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    async def on_subscribe(ctx: ServerRequestContext, params: SubscribeRequestParams) -> EmptyResult:
        subscribed.add(str(params.uri))
        return EmptyResult()

    async def on_unsubscribe(ctx: ServerRequestContext, params: UnsubscribeRequestParams) -> EmptyResult:
        subscribed.discard(str(params.uri))
        return EmptyResult()

    async def on_set_level(ctx: ServerRequestContext, params: SetLevelRequestParams) -> EmptyResult:
        log.info("logging level set to %s", params.level)
        return EmptyResult()

    mcp._lowlevel_server.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)
    mcp._lowlevel_server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, on_unsubscribe)
    mcp._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, on_set_level)

    # -- prompts
    @mcp.prompt()
    def test_simple_prompt() -> list[Message]:
        """A simple prompt without arguments."""
        return [UserMessage(content=TextContent(type="text", text="This is a simple prompt for testing."))]

    @mcp.prompt()
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[Message]:
        """A prompt with required arguments."""
        text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
        return [UserMessage(content=TextContent(type="text", text=text))]

    @mcp.prompt()
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[Message]:
        """A prompt that embeds the resource it is given."""
        inner = TextResourceContents(
            uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
        )
        return [
            UserMessage(content=EmbeddedResource(type="resource", resource=inner)),
            UserMessage(content=TextContent(type="text", text="Please process the embedded resource above.")),
        ]

    @mcp.prompt()
    def test_prompt_with_image() -> list[Message]:
        """A prompt that includes image content."""
        return [
            UserMessage(content=ImageContent(type="image", data=PNG_1X1, mime_type="image/png")),
            UserMessage(content=TextContent(type="text", text="Please analyze the image above.")),
        ]

    @mcp.prompt()
    async def test_input_required_result_prompt(ctx: Context) -> list[Message] | InputRequiredResult:
        """A prompt that first asks the client for context (SEP-2322)."""
        answers = ctx.input_responses or {}
        if "user_context" in answers:
            context = _elicited(answers["user_context"], "context")
            return [UserMessage(content=TextContent(type="text", text=f"Prompt with context: {context}"))]
        ask = _ask_text("What context should the prompt use?", "context")
        return InputRequiredResult(input_requests={"user_context": ask})

    # -- completion
    @mcp.completion()
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        return Completion(values=[], total=0, has_more=False)

    return mcp


def _register_input_required(mcp: MCPServer, tool: Callable[[Callable[..., Any]], None]) -> None:
    """The SEP-2322 multi-round-trip tools: ask with ``inputRequests``, finish on the retry."""

    async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
        """Asks the client's user for a name, then greets."""
        answers = ctx.input_responses or {}
        if "user_name" in answers:
            return f"Hello, {_elicited(answers['user_name'], 'name')}!"
        return InputRequiredResult(input_requests={"user_name": _ask_text("What is your name?", "name")})

    async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
        """Asks the client's model a question, then relays the answer."""
        answers = ctx.input_responses or {}
        if "capital_question" in answers:
            return f"Sampling result: {_sampled(answers['capital_question'])}"
        return InputRequiredResult(input_requests={"capital_question": _sample("What is the capital of France?", 100)})

    async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
        """Asks the client for its roots, then counts them."""
        answers = ctx.input_responses or {}
        if "client_roots" in answers:
            roots = answers["client_roots"]
            return f"Found {len(roots.roots) if isinstance(roots, ListRootsResult) else 0} root(s)"
        return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})

    async def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
        """Round-trips an opaque requestState and checks it came back."""
        answers = ctx.input_responses or {}
        if "confirm" in answers and ctx.request_state == "confirm-round":
            return "state-ok: requestState validated"
        confirm = _form("Please confirm", {"ok": {"type": "boolean"}}, ["ok"])
        return InputRequiredResult(input_requests={"confirm": confirm}, request_state="confirm-round")

    async def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
        """Asks for an elicitation, a sampling and the roots at once."""
        answers = ctx.input_responses or {}
        if {"user_name", "greeting", "client_roots"} <= answers.keys():
            roots = answers["client_roots"]
            count = len(roots.roots) if isinstance(roots, ListRootsResult) else 0
            name, greeting = _elicited(answers["user_name"], "name"), _sampled(answers["greeting"])
            return f"Name: {name}; Greeting: {greeting}; Roots: {count}"
        requests: dict[str, InputRequest] = {
            "user_name": _ask_text("What is your name?", "name"),
            "greeting": _sample("Generate a greeting", 50),
            "client_roots": ListRootsRequest(),
        }
        return InputRequiredResult(input_requests=requests, request_state="multiple-inputs")

    async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
        """Two elicitation rounds carried by an evolving requestState."""
        state = json.loads(ctx.request_state) if ctx.request_state else {"round": 0}
        answers = ctx.input_responses or {}
        if state.get("round") == 1 and "step1" in answers:
            name = _elicited(answers["step1"], "name", "friend")
            ask = _ask_text("Step 2: What is your favorite color?", "color")
            return InputRequiredResult(
                input_requests={"step2": ask}, request_state=json.dumps({"round": 2, "name": name})
            )
        if state.get("round") == 2 and "step2" in answers:
            return f"Multi-round complete for {state.get('name')} who likes {_elicited(answers['step2'], 'color')}"
        ask = _ask_text("Step 1: What is your name?", "name")
        return InputRequiredResult(input_requests={"step1": ask}, request_state=json.dumps({"round": 1}))

    async def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
        """The SDK seals requestState; a tampered echo is refused before this runs."""
        if ctx.request_state is not None and "confirm" in (ctx.input_responses or {}):
            return "integrity-ok: state verified"
        confirm = _form("Please confirm", {"ok": {"type": "boolean"}}, ["ok"])
        return InputRequiredResult(input_requests={"confirm": confirm}, request_state="tamper-test")

    async def test_input_required_result_capabilities(ctx: Context) -> str | InputRequiredResult:
        """Asks only for what the client declared it can answer."""
        answers = ctx.input_responses or {}
        if answers:
            return f"capabilities-ok: received {','.join(sorted(answers))}"
        caps = ctx.client_capabilities
        requests: dict[str, InputRequest] = {}
        if caps is not None and caps.elicitation is not None:
            requests["elicit_input"] = _ask_text("Elicitation input", "value")
        if caps is not None and caps.sampling is not None:
            requests["sample_input"] = _sample("Sample request", 50)
        if not requests:
            return "No supported capabilities declared"
        return InputRequiredResult(input_requests=requests, request_state="capabilities")

    for fn in (
        test_input_required_result_elicitation,
        test_input_required_result_sampling,
        test_input_required_result_list_roots,
        test_input_required_result_request_state,
        test_input_required_result_multiple_inputs,
        test_input_required_result_multi_round,
        test_input_required_result_tampered_state,
        test_input_required_result_capabilities,
    ):
        tool(fn)


class _TrimFieldValues:
    """RFC 9110 §5.5: strip the optional whitespace around every request header value.

    The HTTP server hands header values on with surrounding SP/HTAB kept, so the SDK's
    ``Mcp-Name`` check would compare ``"  test_simple_text  "`` with the body's name; the
    suite (SEP-2243) requires that such a request is accepted.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = dict(scope, headers=[(k, v.strip(b" \t")) for k, v in scope["headers"]])
        await self._app(scope, receive, send)


def build_app(host: str = "127.0.0.1") -> ASGIApp:
    """The ASGI app: MCP at ``/mcp`` (both eras, resumable SSE) and ``GET /_health``."""
    mcp = build_server()

    @mcp.custom_route(HEALTH_PATH, methods=["GET"])
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "name": SERVER_NAME})

    # transport_security=None + a loopback host = the SDK's DNS-rebinding allow-list for this host.
    app = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH, event_store=MemoryEventStore(), retry_interval=SSE_RETRY_MS, host=host
    )
    return _TrimFieldValues(app)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``--host 127.0.0.1 --port N [--log-level warning]``."""
    parser = argparse.ArgumentParser(description="MCP conformance fixture server (Streamable HTTP at /mcp).")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="TCP port")
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK_HOSTS:
        parser.error(f"--host must be a loopback address ({', '.join(sorted(LOOPBACK_HOSTS))}); got {args.host!r}")
    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(
        build_app(args.host),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=3,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
