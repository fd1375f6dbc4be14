"""The PEP for resources, prompts, completion and logging, governed like ``tools/call``.

Every request below is authenticated (by the endpoint), checked, decided by one OPA
query with its own ``action`` (the method name), forwarded and audited once,
whatever happens:

* ``resources/list`` and ``resources/templates/list``: listed **live** from every
  upstream of the endpoint that declared ``resources`` (all pages, servers
  concurrently), then filtered by one ``gateway_runtime.main.list`` query with one
  candidate per resource (template); an upstream that fails is left out of the list
  (audited ``error`` with its category), all of them failing is ``-32004``. For a
  2026-07-28 caller the result carries ``ttlMs``, the smallest of every page of every
  upstream asked, only when each page had one and no upstream failed (the endpoint
  makes it ``private`` and 0 when absent).
* ``resources/read``: the URI (namespaced ``mcp-gw://<server>/<uri>`` on ``/mcp``,
  see :mod:`gateway.dataplane.namespacing`) names the server; policy decides on the
  upstream's URI. The gateway does not check that the URI was listed (resources
  are dynamic and templates expand to unlisted URIs).
* ``prompts/list``: the prompts pinned at approval (like tools), filtered by one query.
* ``prompts/get``: a pinned prompt; its arguments must be strings, every required
  declared argument present and no undeclared one (``-32602`` ``invalid_arguments``).
* ``completion/complete``: a ``ref/prompt`` (pinned prompt, declared argument) or a
  ``ref/resource`` (a URI template of a server that declared ``resources``); decided
  like using that prompt or resource. A server that did not declare ``completions``
  is not asked: the answer is an empty completion.
* ``logging/setLevel``: one decision (``server`` absent on ``/mcp``), then forwarded
  to every server of the endpoint that declared ``logging``, concurrently. An upstream
  that answers ``-32601`` (a 2026-07-28 upstream: the method was removed there) is
  skipped; the answer is ``{}`` when at least one upstream took (or skipped) the level,
  the others being audited (``error``/``tool_error``).

Source: MCP 2025-11-25 ``server/resources``, ``server/prompts``,
``server/utilities/completion``, ``server/utilities/logging``; MCP 2026-07-28 (the
same methods without ``logging/setLevel``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from gateway.dataplane._feature_steps import MAX_NAME, FeatureSteps, servers_offering
from gateway.dataplane.credentials import choose
from gateway.dataplane.governance import UPSTREAM_FAILED, CallContext, _sha256, _Trace, relayed_params
from gateway.dataplane.namespacing import namespace_contents, namespace_messages
from gateway.dataplane.projection import ActiveProjection, ServerEntry
from gateway.errors import RequestRejected, UpstreamError, UpstreamProtocolError
from gateway.mcp.credential import UpstreamCredential
from gateway.mcp.messages import METHOD_NOT_FOUND, MODERN_VERSIONS, error_response, result_response
from gateway.policy.input import Candidate

__all__ = ["LOG_LEVELS", "MAX_LIST_ITEMS", "MAX_LIST_PAGES", "FeatureGovernor", "cache_ttl_ms"]

log = logging.getLogger("gateway.pep")

LOG_LEVELS = frozenset({"debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"})
"""RFC 5424 severities, the ``LoggingLevel`` enum of MCP 2025-11-25."""

MAX_LIST_PAGES = 20
"""Most pages of one upstream's ``resources/list`` (or templates) followed per request."""
MAX_LIST_ITEMS = 2000
"""Most resources (or templates) taken from one upstream per request; more are dropped (logged)."""


class FeatureGovernor(FeatureSteps):
    """:class:`~gateway.dataplane.governance.Governor` plus resources, prompts, completion and logging.

    Each method returns the JSON-RPC response message (lists of pinned prompts
    return the list) and emits exactly one audit event, unexpected exceptions and
    cancellation included.
    """

    # ------------------------------------------------------------------ resources
    async def list_resources(
        self, projection: ActiveProjection, ctx: CallContext, msg_id: str | int | None, *, templates: bool = False
    ) -> dict[str, Any]:
        """``resources/list`` (or ``resources/templates/list``): live from the upstreams, filtered by policy.

        Returns:
            The response message: ``{"resources": [...]}`` (``{"resourceTemplates": [...]}``),
            every page of every upstream in one answer (no ``nextCursor``), URIs namespaced
            on ``/mcp``, in upstream order per server, servers by name; or ``-32004`` when
            every upstream asked failed.
        """
        started = time.perf_counter()
        action = "resources/templates/list" if templates else "resources/list"
        member, field = ("resourceTemplates", "uriTemplate") if templates else ("resources", "uri")
        servers = servers_offering(projection, ctx, "resources")
        fetched: dict[str, list[dict[str, Any]]] = {}
        ttls: dict[str, int | None] = {}
        failures: dict[str, str] = {}

        async def fetch(server: ServerEntry) -> None:
            try:
                fetched[server.name], ttls[server.name] = await self._list_live(
                    projection, ctx, server, action, member, field
                )
            except UpstreamError as exc:
                log.warning("upstream %s failed to list %s: %s", server.name, member, exc)
                failures[server.name] = exc.category

        async with anyio.create_task_group() as tg:
            for server in servers:
                tg.start_soon(fetch, server)
        failure = failures[min(failures)] if failures else None
        if servers and len(failures) == len(servers):
            self._event(
                ctx,
                decision_id=str(uuid.uuid4()),
                action=action,
                server=ctx.server,
                tool=None,
                allowed=False,
                reasons=[failure or "upstream_unavailable"],
                revision=None,
                projection=projection,
                started=started,
                status="error",
                error_category=failure,
            )
            return error_response(msg_id, UPSTREAM_FAILED, "Upstream server failed", {"category": failure})
        offered: list[tuple[Candidate, dict[str, Any]]] = []
        for server in servers:
            for item in fetched.get(server.name, []):
                key = self._key(ctx, server.name, item[field], uri=True)
                candidate = Candidate(key, server.name, server.transport, resource_uri=item[field])
                offered.append((candidate, {**item, field: key}))
        items = await self._filter(projection, ctx, action, offered, started=started, failure=failure)
        result: dict[str, Any] = {member: items}
        known = [ttl for ttl in ttls.values() if ttl is not None]
        if ctx.protocol_version in MODERN_VERSIONS and servers and len(known) == len(servers):
            result["ttlMs"] = min(known)
        return result_response(msg_id, result)

    async def _list_live(
        self, projection: ActiveProjection, ctx: CallContext, server: ServerEntry, method: str, member: str, field: str
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Every item of one upstream's ``resources/list`` or ``resources/templates/list``.

        Items that are not objects with a string ``field`` are dropped (logged). The
        second value is the smallest ``ttlMs`` of the pages, None when a page had no
        valid one (a handshake-era upstream never has one).

        Raises:
            UpstreamError: The upstream failed or answered an error or a malformed page.
        """
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        seen: set[str] = set()
        ttls: list[int | None] = []
        for _ in range(MAX_LIST_PAGES):
            params = {"cursor": cursor} if cursor else {}
            page, is_error = await self._exchange(
                projection, ctx, server, method, params, await self._material(server, ctx)
            )
            if is_error or not isinstance(page.get(member), list):
                raise UpstreamProtocolError(f"upstream {server.name} answered {method} without a {member} list")
            ttls.append(cache_ttl_ms(page.get("ttlMs")))
            for item in page[member]:
                if isinstance(item, dict) and isinstance(item.get(field), str):
                    items.append(item)
                else:
                    log.warning("upstream %s listed a malformed %s entry; dropped", server.name, member)
            if len(items) > MAX_LIST_ITEMS:
                log.warning(
                    "upstream %s lists more than %d %s; the rest is dropped", server.name, MAX_LIST_ITEMS, member
                )
                return items[:MAX_LIST_ITEMS], _smallest(ttls)
            next_cursor = page.get("nextCursor")
            if not isinstance(next_cursor, str) or not next_cursor or next_cursor in seen:
                return items, _smallest(ttls)
            seen.add(next_cursor)
            cursor = next_cursor
        log.warning(
            "upstream %s has more than %d pages of %s; the rest is dropped", server.name, MAX_LIST_PAGES, member
        )
        return items, _smallest(ttls)

    async def read_resource(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        msg_id: str | int | None,
        params: dict[str, Any],
        *,
        rejection: RequestRejected | None = None,
    ) -> dict[str, Any]:
        """``resources/read``: resolve the URI's server, decide on the original URI, forward ``{"uri"}``.

        Returns:
            The response message; on ``/mcp`` every ``contents[].uri`` is namespaced.
            ``-32602`` ``unknown_resource`` when the URI names no approved server that
            declared ``resources``.
        """

        async def run(trace: _Trace) -> dict[str, Any]:
            uri = params.get("uri")
            if isinstance(uri, str):
                trace.tool = uri[:MAX_NAME]
            refused = self._checked(projection, ctx, trace, msg_id, params, rejection)
            if refused is not None:
                return refused
            if not isinstance(uri, str):
                return self._reject(projection, ctx, trace, msg_id, "bad_request", "resources/read needs a string uri")
            resolved = self._resolve_uri(projection, ctx, uri)
            if resolved is None:
                message = f"Unknown resource: {uri[:MAX_NAME]}"
                return self._reject(projection, ctx, trace, msg_id, "unknown_resource", message)
            server, original = resolved
            trace.server, trace.tool = server.name, original[:MAX_NAME]
            doc = self._input(projection, ctx, "resources/read", server, resource_uri=original)
            denied = await self._decide(projection, ctx, trace, msg_id, doc)
            if denied is not None:
                return denied
            reply = await self._forward(
                projection,
                ctx,
                trace,
                msg_id,
                server,
                "resources/read",
                {"uri": original, **relayed_params(params, ctx)},
            )
            result = reply.get("result")
            if ctx.server is None and isinstance(result, dict) and "contents" in result:
                result["contents"] = namespace_contents(result["contents"], server.name)
            return reply

        return await self._governed(projection, ctx, "resources/read", run)

    async def subscription(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        msg_id: str | int | None,
        params: dict[str, Any],
        *,
        method: str,
        apply: Callable[[ServerEntry, str, UpstreamCredential | None], None],
        rejection: RequestRejected | None = None,
    ) -> dict[str, Any]:
        """``resources/subscribe`` or ``resources/unsubscribe``: checked and decided like
        ``resources/read`` (same ``resource`` input, ``action`` = ``method``), then ``apply``
        (server, original URI, the caller's credential for it on ``resources/subscribe``)
        starts or stops the subscription; answers ``{}``.

        Returns:
            The response message; ``-32602`` ``unknown_resource`` for a URI of no approved
            server that declared ``resources.subscribe``, ``-32003`` when policy refused.
        """

        async def run(trace: _Trace) -> dict[str, Any]:
            uri = params.get("uri")
            if isinstance(uri, str):
                trace.tool = uri[:MAX_NAME]
            refused = self._checked(projection, ctx, trace, msg_id, params, rejection)
            if refused is not None:
                return refused
            if not isinstance(uri, str):
                return self._reject(projection, ctx, trace, msg_id, "bad_request", f"{method} needs a string uri")
            resolved = self._resolve_uri(projection, ctx, uri)
            resources = resolved[0].capabilities.get("resources") if resolved else None
            if resolved is None or not isinstance(resources, dict) or resources.get("subscribe") is not True:
                message = f"Unknown resource: {uri[:MAX_NAME]}"
                return self._reject(projection, ctx, trace, msg_id, "unknown_resource", message)
            server, original = resolved
            trace.server, trace.tool = server.name, original[:MAX_NAME]
            doc = self._input(projection, ctx, method, server, resource_uri=original)
            denied = await self._decide(projection, ctx, trace, msg_id, doc)
            if denied is not None:
                return denied
            credential: UpstreamCredential | None = None
            if method == "resources/subscribe":
                chosen = choose(server.bindings, ctx.subject) if server.bindings else None
                credential, refused = await self._credential(projection, ctx, trace, msg_id, server, chosen)
                if refused is not None:
                    return refused
            apply(server, original, credential)
            self._emit(projection, ctx, trace, status="ok", result_sha256=_sha256({}))
            return result_response(msg_id, {})

        return await self._governed(projection, ctx, method, run)

    # ------------------------------------------------------------------ prompts
    async def list_prompts(self, projection: ActiveProjection, ctx: CallContext) -> list[dict[str, Any]]:
        """``prompts/list``: the pinned prompts this caller may get, in one OPA query.

        Returns:
            Wire prompt definitions (names ``<server>__<prompt>`` on ``/mcp``), sorted by
            name. Empty when OPA is unavailable (fail closed).
        """
        started = time.perf_counter()
        offered: list[tuple[Candidate, dict[str, Any]]] = []
        for server in servers_offering(projection, ctx, "prompts"):
            for name in sorted(server.prompts):
                key = self._key(ctx, server.name, name, uri=False)
                offered.append((Candidate(key, server.name, server.transport, prompt=name), {"name": key}))
        items = await self._filter(projection, ctx, "prompts/list", offered, started=started)
        out = []
        for item in items:
            entry = projection.resolve_prompt(ctx.server, item["name"])
            if entry is not None:
                out.append({**entry.wire, "name": item["name"]})
        return sorted(out, key=lambda p: str(p["name"]))

    async def get_prompt(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        msg_id: str | int | None,
        params: dict[str, Any],
        *,
        rejection: RequestRejected | None = None,
    ) -> dict[str, Any]:
        """``prompts/get``: a pinned prompt, its arguments checked against the declared ones.

        Returns:
            The response message; on ``/mcp`` the resource URIs embedded in the messages
            are namespaced. ``-32602`` with ``unknown_prompt``, ``invalid_arguments``
            (a required argument missing, an undeclared one present) or ``bad_request``.
        """

        async def run(trace: _Trace) -> dict[str, Any]:
            name = params.get("name")
            if isinstance(name, str):
                trace.tool = name[:MAX_NAME]
            refused = self._checked(projection, ctx, trace, msg_id, params, rejection)
            if refused is not None:
                return refused
            arguments = params.get("arguments")
            arguments = {} if arguments is None else arguments
            if (
                not isinstance(name, str)
                or not isinstance(arguments, dict)
                or not all(isinstance(v, str) for v in arguments.values())
            ):
                message = "prompts/get needs a string name and arguments mapping names to strings"
                return self._reject(projection, ctx, trace, msg_id, RequestRejected.category, message)
            trace.arguments_sha256 = _sha256(arguments)
            entry = projection.resolve_prompt(ctx.server, name)
            if entry is None:
                message = f"Unknown prompt: {name[:MAX_NAME]}"
                return self._reject(projection, ctx, trace, msg_id, "unknown_prompt", message)
            server = projection.servers[entry.server]
            trace.server, trace.tool = entry.server, entry.name
            problem = _argument_problem(entry.required, entry.arguments, arguments)
            if problem is not None:
                message = f"Invalid arguments for prompt {name!r}: {problem}"
                return self._reject(projection, ctx, trace, msg_id, "invalid_arguments", message)
            doc = self._input(projection, ctx, "prompts/get", server, prompt=entry.name, prompt_arguments=arguments)
            denied = await self._decide(projection, ctx, trace, msg_id, doc)
            if denied is not None:
                return denied
            forwarded = {"name": entry.name, "arguments": arguments, **relayed_params(params, ctx)}
            reply = await self._forward(projection, ctx, trace, msg_id, server, "prompts/get", forwarded)
            result = reply.get("result")
            if ctx.server is None and isinstance(result, dict) and "messages" in result:
                result["messages"] = namespace_messages(result["messages"], server.name)
            return reply

        return await self._governed(projection, ctx, "prompts/get", run)

    # ------------------------------------------------------------------ completion
    async def complete(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        msg_id: str | int | None,
        params: dict[str, Any],
        *,
        rejection: RequestRejected | None = None,
    ) -> dict[str, Any]:
        """``completion/complete`` for a prompt argument or a resource-template argument.

        The decision input carries ``prompt`` (``arguments``: the context arguments plus
        the one being completed) or ``resource`` (``uri``: the template), and those
        values in ``arguments``; policy decides it like using the prompt or resource.

        Returns:
            The response message. ``-32602`` with ``unknown_prompt``,
            ``unknown_resource``, ``invalid_arguments`` (an argument the prompt does not
            declare) or ``bad_request`` (malformed ``ref``, ``argument`` or ``context``).
        """

        async def run(trace: _Trace) -> dict[str, Any]:
            ref, argument, context = params.get("ref"), params.get("argument"), params.get("context")
            ref_name = _ref_name(ref)
            if ref_name is not None:
                trace.tool = ref_name[:MAX_NAME]
            refused = self._checked(projection, ctx, trace, msg_id, params, rejection)
            if refused is not None:
                return refused
            context_args = _context_arguments(context)
            if (
                ref_name is None
                or context_args is None
                or not isinstance(argument, dict)
                or not isinstance(argument.get("name"), str)
                or not isinstance(argument.get("value"), str)
            ):
                message = (
                    "completion/complete needs ref {type: ref/prompt, name} or {type: ref/resource, uri}, "
                    "argument {name, value} and optional context {arguments} of strings"
                )
                return self._reject(projection, ctx, trace, msg_id, RequestRejected.category, message)
            values = {**context_args, argument["name"]: argument["value"]}
            trace.arguments_sha256 = _sha256(values)
            assert isinstance(ref, dict)  # _ref_name checked it
            if ref.get("type") == "ref/prompt":
                entry = projection.resolve_prompt(ctx.server, ref_name)
                if entry is None:
                    message = f"Unknown prompt: {ref_name[:MAX_NAME]}"
                    return self._reject(projection, ctx, trace, msg_id, "unknown_prompt", message)
                server = projection.servers[entry.server]
                trace.server, trace.tool = entry.server, entry.name
                undeclared = sorted(set(values) - entry.arguments)
                if undeclared:
                    message = f"Invalid arguments for prompt {ref_name!r}: undeclared argument(s) {undeclared}"
                    return self._reject(projection, ctx, trace, msg_id, "invalid_arguments", message)
                doc = self._input(
                    projection,
                    ctx,
                    "completion/complete",
                    server,
                    arguments=values,
                    prompt=entry.name,
                    prompt_arguments=values,
                )
                forwarded_ref: dict[str, Any] = {"type": "ref/prompt", "name": entry.name}
            else:
                resolved = self._resolve_uri(projection, ctx, ref_name)
                if resolved is None:
                    message = f"Unknown resource: {ref_name[:MAX_NAME]}"
                    return self._reject(projection, ctx, trace, msg_id, "unknown_resource", message)
                server, template = resolved
                trace.server, trace.tool = server.name, template[:MAX_NAME]
                doc = self._input(
                    projection, ctx, "completion/complete", server, arguments=values, resource_uri=template
                )
                forwarded_ref = {"type": "ref/resource", "uri": template}
            denied = await self._decide(projection, ctx, trace, msg_id, doc)
            if denied is not None:
                return denied
            if not server.offers("completions"):
                empty = {"completion": {"values": [], "hasMore": False}}
                self._emit(projection, ctx, trace, status="ok", result_sha256=_sha256(empty))
                return result_response(msg_id, empty)
            forwarded: dict[str, Any] = {"ref": forwarded_ref, "argument": argument}
            if context is not None:
                forwarded["context"] = {"arguments": context_args}
            return await self._forward(projection, ctx, trace, msg_id, server, "completion/complete", forwarded)

        return await self._governed(projection, ctx, "completion/complete", run)

    # ------------------------------------------------------------------ ping
    async def ping(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        msg_id: str | int | None,
        params: dict[str, Any],
        *,
        rejection: RequestRejected | None = None,
    ) -> dict[str, Any]:
        """``ping`` (handshake era): one decision (``action: "ping"``, the endpoint's
        ``server`` on ``/mcp/{server}``, none on ``/mcp``), one audit event, answered ``{}``
        by the gateway, the peer the client pings (MCP 2025-11-25 ``basic/utilities/ping``);
        no upstream is asked. ``-32003`` when policy refuses.
        """

        async def run(trace: _Trace) -> dict[str, Any]:
            refused = self._checked(projection, ctx, trace, msg_id, params, rejection)
            if refused is not None:
                return refused
            endpoint_server = projection.servers.get(ctx.server) if ctx.server else None
            doc = self._input(projection, ctx, "ping", endpoint_server)
            denied = await self._decide(projection, ctx, trace, msg_id, doc)
            if denied is not None:
                return denied
            self._emit(projection, ctx, trace, status="ok", result_sha256=_sha256({}))
            return result_response(msg_id, {})

        return await self._governed(projection, ctx, "ping", run)

    # ------------------------------------------------------------------ logging
    async def set_logging_level(
        self,
        projection: ActiveProjection,
        ctx: CallContext,
        msg_id: str | int | None,
        params: dict[str, Any],
        *,
        rejection: RequestRejected | None = None,
    ) -> dict[str, Any]:
        """``logging/setLevel``: one decision, then forwarded to each server of the endpoint that declared ``logging``.

        The decision input has ``arguments: {"level"}`` and no ``server`` on ``/mcp``.
        An upstream answering ``-32601`` (2026-07-28 removed the method) is skipped.

        Returns:
            ``{}`` when at least one upstream accepted (or skipped) it, or none declared
            ``logging``; when none did, the first upstream's JSON-RPC error (by server
            name), else ``-32004``. ``-32602`` ``invalid_arguments`` for a level that is
            not a ``LoggingLevel``.
        """

        async def run(trace: _Trace) -> dict[str, Any]:
            refused = self._checked(projection, ctx, trace, msg_id, params, rejection)
            if refused is not None:
                return refused
            level = params.get("level")
            if level not in LOG_LEVELS:
                message = f"level must be one of {', '.join(sorted(LOG_LEVELS))}"
                return self._reject(projection, ctx, trace, msg_id, "invalid_arguments", message)
            trace.arguments_sha256 = _sha256({"level": level})
            endpoint_server = projection.servers.get(ctx.server) if ctx.server else None
            doc = self._input(projection, ctx, "logging/setLevel", endpoint_server, arguments={"level": level})
            denied = await self._decide(projection, ctx, trace, msg_id, doc)
            if denied is not None:
                return denied
            servers = servers_offering(projection, ctx, "logging")
            errors: dict[str, dict[str, Any]] = {}
            failures: dict[str, str] = {}

            async def send(server: ServerEntry) -> None:
                try:
                    payload, is_error = await self._exchange(
                        projection, ctx, server, "logging/setLevel", {"level": level}, await self._material(server, ctx)
                    )
                except UpstreamError as exc:
                    log.warning("upstream %s failed on logging/setLevel: %s", server.name, exc)
                    failures[server.name] = exc.category
                    return
                if is_error and payload.get("code") != METHOD_NOT_FOUND:
                    errors[server.name] = payload

            async with anyio.create_task_group() as tg:
                for server in servers:
                    tg.start_soon(send, server)
            accepted = len(servers) - len(errors) - len(failures)
            if servers and accepted == 0 and errors:
                first_error = errors[min(errors)]
                self._emit(projection, ctx, trace, status="tool_error", result_sha256=_sha256(first_error))
                return {"jsonrpc": "2.0", "id": msg_id, "error": first_error}
            category = failures[min(failures)] if failures else None
            if servers and accepted == 0 and category is not None:
                self._emit(projection, ctx, trace, status="error", error_category=category)
                data = {"category": category, "decision_id": trace.decision_id}
                return error_response(msg_id, UPSTREAM_FAILED, "Upstream server failed", data)
            # Some upstream took the level: the answer is {}; the ones that did not are audited.
            status = "error" if failures else "tool_error" if errors else "ok"
            self._emit(projection, ctx, trace, status=status, error_category=category, result_sha256=_sha256({}))
            return result_response(msg_id, {})

        return await self._governed(projection, ctx, "logging/setLevel", run)


def cache_ttl_ms(value: Any) -> int | None:
    """``value`` when it is a valid ``ttlMs`` (an integer >= 0, milliseconds), else None.

    Source: MCP 2026-07-28 ``server/utilities/caching`` (``CacheableResult``).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _smallest(ttls: list[int | None]) -> int | None:
    """The smallest ``ttlMs`` of a list's pages; None when one of them had none."""
    if not ttls or any(ttl is None for ttl in ttls):
        return None
    return min(ttl for ttl in ttls if ttl is not None)


def _argument_problem(required: frozenset[str], declared: frozenset[str], given: Mapping[str, Any]) -> str | None:
    """What is wrong with prompt arguments ``given``: missing required or undeclared names; None if nothing."""
    missing = sorted(required - set(given))
    undeclared = sorted(set(given) - declared)
    problems = []
    if missing:
        problems.append(f"missing required argument(s) {missing}")
    if undeclared:
        problems.append(f"undeclared argument(s) {undeclared}")
    return "; ".join(problems) or None


def _ref_name(ref: Any) -> str | None:
    """The prompt name or template URI of a completion ``ref``; None when malformed."""
    if not isinstance(ref, dict):
        return None
    key = {"ref/prompt": "name", "ref/resource": "uri"}.get(str(ref.get("type")))
    value = ref.get(key) if key else None
    return value if isinstance(value, str) else None


def _context_arguments(context: Any) -> dict[str, str] | None:
    """``context.arguments`` of a completion (``{}`` when absent); None when malformed."""
    if context is None:
        return {}
    if not isinstance(context, dict):
        return None
    arguments = context.get("arguments")
    if arguments is None:
        return {}
    if not isinstance(arguments, dict) or not all(isinstance(v, str) for v in arguments.values()):
        return None
    return dict(arguments)
