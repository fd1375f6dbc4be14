"""Resources, prompts, completion and logging through a running stack (``gateway serve``, real
OPA, PostgreSQL, the sample upstream), with the ``mcp`` SDK ``Client`` in both eras; then the
same against the third-party ``@modelcontextprotocol/server-everything`` (streamable HTTP),
whose ``demo://`` URIs collide with the sample upstream's: namespacing keeps them apart.

Sample policy: viewers read every resource whose URI has no ``internal`` segment, everyone
with a recognised role gets prompts and may set the logging level."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import PromptReference, ResourceTemplateReference

from gateway.devtools.stack import LocalStack
from tests.e2e import test_third_party as third_party
from tests.e2e.helpers import audit_item, client, recorded
from tests.e2e.test_third_party import Everything

# server-everything's install and start, shared with the third-party module (its fixtures, here).
node_bin = third_party.node_bin
everything_bin = third_party.everything_bin
everything = third_party.everything

pytestmark = [pytest.mark.integration, pytest.mark.db, pytest.mark.anyio, pytest.mark.timeout(300)]

ERAS = [pytest.param("auto", "2026-07-28", id="2026-07-28"), pytest.param("legacy", "2025-11-25", id="2025-11-25")]
PUBLIC = ["mcp-gw://demo/demo://docs/readme", "mcp-gw://demo/demo://docs/policies"]
PAYROLL = "mcp-gw://demo/demo://internal/payroll"
CANARY = "CANARY-5e1d-prompt-argument"


def _reset(stack: LocalStack) -> None:
    httpx.delete(f"http://127.0.0.1:{stack.upstream_port}/_recorded")


def _audited(stack: LocalStack, subject: str, action: str, count: int, timeout: float = 15) -> list[dict[str, Any]]:
    """The audit events of ``subject`` for ``action`` (newest first), once ``count`` of them arrived."""
    deadline = time.monotonic() + timeout
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        items = stack.admin("GET", f"/v1/audit/decisions?subject={subject}&action={action}")["items"]
        if len(items) >= count:
            return items
        time.sleep(0.1)
    raise AssertionError(f"{count} {action} events of {subject} not audited after {timeout}s: {items}")


@pytest.mark.parametrize(("mode", "version"), ERAS)
async def test_capabilities_come_from_the_approved_servers(stack: LocalStack, mode: str, version: str) -> None:
    token = stack.idp.mint("cap", ["viewer"], stack.audience)
    for path in ("/mcp", "/mcp/demo"):
        async with client(stack, token, path=path, mode=mode) as c:
            assert c.protocol_version == version
            caps = c.server_capabilities
            # demo (an MCPServer) serves subscriptions/listen, i.e. resource subscriptions
            assert caps.resources is not None and caps.resources.subscribe is True
            assert caps.tools is not None and caps.tools.list_changed is True
            assert caps.prompts is not None and caps.completions is not None
            # logging/setLevel exists only in the handshake era
            assert (caps.logging is not None) is (mode == "legacy")


@pytest.mark.parametrize(("mode", "version"), ERAS)
async def test_resources_are_listed_live_namespaced_and_filtered_by_policy(
    stack: LocalStack, mode: str, version: str
) -> None:
    viewer = stack.idp.mint("res-viewer", ["viewer"], stack.audience)
    operator = stack.idp.mint("res-operator", ["operator"], stack.audience)
    async with client(stack, viewer, mode=mode) as c:
        assert [r.uri for r in (await c.list_resources()).resources] == PUBLIC
        templates = (await c.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["mcp-gw://demo/demo://weather/{city}"]
    async with client(stack, operator, mode=mode) as c:
        assert [r.uri for r in (await c.list_resources()).resources] == [*PUBLIC, PAYROLL]
    async with client(stack, viewer, path="/mcp/demo", mode=mode) as c:
        assert [r.uri for r in (await c.list_resources()).resources] == ["demo://docs/readme", "demo://docs/policies"]
    listed = _audited(stack, "res-viewer", "resources/list", 2)
    assert {tuple(i["reasons"]) for i in listed} == {("listed:2/3",)}
    assert {i["server"] for i in listed} == {None, "demo"}


@pytest.mark.parametrize(("mode", "version"), ERAS)
async def test_a_read_is_decided_on_the_upstream_uri_audited_and_denied_reads_never_reach_it(
    stack: LocalStack, mode: str, version: str
) -> None:
    _reset(stack)
    token = stack.idp.mint(f"reader-{mode}", ["viewer"], stack.audience)
    async with client(stack, token, mode=mode) as c:
        readme = await c.read_resource(PUBLIC[0])
        # an expanded template of the namespaced listing reaches the upstream as its own URI
        weather = await c.read_resource("mcp-gw://demo/demo://weather/Paris")
        with pytest.raises(MCPError) as denied:
            await c.read_resource(PAYROLL)
    async with client(stack, token, path="/mcp/demo", mode=mode) as c:
        plain = await c.read_resource("demo://docs/readme")
    assert readme.contents[0].uri == PUBLIC[0] and readme.contents[0].text.startswith("# Demo upstream")
    assert weather.contents[0].text.startswith("Paris: 18 C")
    assert plain.contents[0].uri == "demo://docs/readme"
    error = denied.value.error
    assert error.code == -32003 and error.data["reasons"] == ["internal_resource_requires_operator"]
    reads = [r["params"]["uri"] for r in recorded(stack)["requests"] if r["method"] == "resources/read"]
    assert reads == ["demo://docs/readme", "demo://weather/Paris", "demo://docs/readme"]
    item = audit_item(stack, error.data["decision_id"], opa_logged=True)
    assert (item["action"], item["server"], item["tool"], item["status"]) == (
        "resources/read",
        "demo",
        "demo://internal/payroll",
        "denied",
    )
    assert item["opa_decision_log"]["input"]["resource"] == {"uri": "demo://internal/payroll", "server": "demo"}
    assert item["protocol_version"] == version


async def test_an_unknown_resource_is_an_audited_32602(stack: LocalStack) -> None:
    token = stack.idp.mint("lost-reader", ["admin"], stack.audience)
    async with client(stack, token) as c:
        with pytest.raises(MCPError) as unknown:
            await c.read_resource("demo://docs/readme")  # on /mcp a URI must name its server
    assert unknown.value.error.code == -32602 and unknown.value.error.data == {"category": "unknown_resource"}
    [item] = _audited(stack, "lost-reader", "resources/read", 1)
    assert (item["tool"], item["status"], item["error_category"]) == (
        "demo://docs/readme",
        "rejected",
        "unknown_resource",
    )


@pytest.mark.parametrize(("mode", "version"), ERAS)
async def test_prompts_are_listed_got_and_checked_against_their_declared_arguments(
    stack: LocalStack, mode: str, version: str
) -> None:
    _reset(stack)
    subject = f"prompter-{uuid.uuid4().hex[:6]}"
    token = stack.idp.mint(subject, ["viewer"], stack.audience)
    guest = stack.idp.mint(f"{subject}-guest", ["guest"], stack.audience)
    async with client(stack, token, mode=mode) as c:
        names = [p.name for p in (await c.list_prompts()).prompts]
        brief = await c.get_prompt("demo__weather_brief", {"city": CANARY})
        with pytest.raises(MCPError) as missing:
            await c.get_prompt("demo__incident_report", {"severity": "high"})
        with pytest.raises(MCPError) as unknown:
            await c.get_prompt("incident_report", {"service": "vpn"})
    async with client(stack, token, path="/mcp/demo", mode=mode) as c:
        plain = [p.name for p in (await c.list_prompts()).prompts]
    async with client(stack, guest, mode=mode) as c:
        assert (await c.list_prompts()).prompts == []
    assert names == ["demo__incident_report", "demo__weather_brief"]
    assert plain == ["incident_report", "weather_brief"]
    # the embedded resource of the prompt is readable through /mcp: its URI is namespaced
    assert brief.messages[0].content.resource.uri == f"mcp-gw://demo/demo://weather/{CANARY}"
    assert missing.value.error.code == -32602 and missing.value.error.data == {"category": "invalid_arguments"}
    assert "missing required argument(s) ['service']" in missing.value.error.message
    assert unknown.value.error.data == {"category": "unknown_prompt"}
    gets = [r["params"] for r in recorded(stack)["requests"] if r["method"] == "prompts/get"]
    assert gets == [{"name": "weather_brief", "arguments": {"city": CANARY}}]
    items = _audited(stack, subject, "prompts/get", 3)
    assert [(i["tool"], i["status"]) for i in items] == [
        ("incident_report", "rejected"),
        ("incident_report", "rejected"),
        ("weather_brief", "ok"),
    ]
    logged = audit_item(stack, items[-1]["decision_id"], opa_logged=True)
    assert logged["opa_decision_log"]["input"]["prompt"] == {"name": "weather_brief"}
    assert "/input/prompt/arguments" in logged["opa_decision_log"]["erased"]
    assert CANARY not in str(logged)


@pytest.mark.parametrize(("mode", "version"), ERAS)
async def test_completion_is_governed_and_forwarded_with_original_names(
    stack: LocalStack, mode: str, version: str
) -> None:
    viewer = stack.idp.mint("completer", ["viewer"], stack.audience)
    async with client(stack, viewer, mode=mode) as c:
        template = ResourceTemplateReference(type="ref/resource", uri="mcp-gw://demo/demo://weather/{city}")
        cities = await c.complete(template, {"name": "city", "value": "p"})
        prompt = PromptReference(type="ref/prompt", name="demo__incident_report")
        services = await c.complete(prompt, {"name": "service", "value": "b"})
        internal = ResourceTemplateReference(type="ref/resource", uri="mcp-gw://demo/demo://internal/{id}")
        with pytest.raises(MCPError) as denied:
            await c.complete(internal, {"name": "id", "value": "1"})
    assert cities.completion.values == ["paris"] and services.completion.values == ["billing"]
    assert denied.value.error.data["reasons"] == ["internal_resource_requires_operator"]


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")  # logging, subscribe: 2025-era
async def test_logging_set_level_is_governed_and_not_a_2026_method(stack: LocalStack) -> None:
    guest = stack.idp.mint("log-guest", ["guest"], stack.audience)
    operator = stack.idp.mint("log-operator", ["operator"], stack.audience)
    async with client(stack, guest, mode="legacy") as c:
        with pytest.raises(MCPError) as denied:
            await c.set_logging_level("debug")
        with pytest.raises(MCPError) as subscribe:
            await c.subscribe_resource(PUBLIC[0])
    async with client(stack, operator, mode="legacy") as c:
        assert (await c.set_logging_level("debug")).model_dump(exclude_none=True) == {}
    assert denied.value.error.data["reasons"] == ["no_recognised_role"]
    assert audit_item(stack, denied.value.error.data["decision_id"])["action"] == "logging/setLevel"
    # a subscription is governed like a read: no recognised role, no subscription
    assert subscribe.value.error.code == -32003 and subscribe.value.error.data["reasons"] == ["no_recognised_role"]
    [allowed] = _audited(stack, "log-operator", "logging/setLevel", 1)
    assert (allowed["allowed"], allowed["server"], allowed["status"]) == (True, None, "ok")
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    resp = httpx.post(
        f"{stack.data_url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel", "params": {"level": "debug", "_meta": meta}},
        headers={
            "authorization": f"Bearer {operator}",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "logging/setLevel",
        },
    )
    assert resp.status_code == 404 and resp.json()["error"]["code"] == -32601


# ---------------------------------------------------------------- server-everything (third party)
class TestServerEverything:
    """Resources, prompts and completion of the reference server, behind the gateway next to ``demo``."""

    @pytest.mark.parametrize(("mode", "version"), ERAS)
    async def test_resources_of_two_servers_with_colliding_uris_stay_apart(
        self, stack: LocalStack, everything: Everything, mode: str, version: str
    ) -> None:
        token = stack.idp.mint("ev-reader", ["viewer"], stack.audience)
        async with client(stack, token, mode=mode) as c:
            uris = [r.uri for r in (await c.list_resources()).resources]
            templates = [t.uri_template for t in (await c.list_resource_templates()).resource_templates]
            ours = [u for u in uris if u.startswith("mcp-gw://everything/demo://resource/")]
            assert ours and [u for u in uris if u.startswith("mcp-gw://demo/")] == PUBLIC
            doc = await c.read_resource(ours[0])
            text = "mcp-gw://everything/demo://resource/dynamic/text/{resourceId}"
            assert text in templates
            dynamic = await c.read_resource(text.replace("{resourceId}", "3"))
        assert doc.contents[0].uri == ours[0]
        assert dynamic.contents[0].uri == "mcp-gw://everything/demo://resource/dynamic/text/3"

    async def test_a_resource_link_from_a_tool_result_is_readable_through_mcp(
        self, stack: LocalStack, everything: Everything
    ) -> None:
        token = stack.idp.mint("ev-admin", ["admin"], stack.audience)
        async with client(stack, token) as c:
            result = await c.call_tool("everything__get-resource-links", {"count": 1})
            [link] = [block for block in result.content if block.type == "resource_link"]
            assert link.uri.startswith("mcp-gw://everything/demo://resource/")
            read = await c.read_resource(link.uri)
        assert read.contents[0].uri == link.uri

    @pytest.mark.parametrize(("mode", "version"), ERAS)
    async def test_prompts_and_context_aware_completion(
        self, stack: LocalStack, everything: Everything, mode: str, version: str
    ) -> None:
        token = stack.idp.mint("ev-prompter", ["viewer"], stack.audience)
        async with client(stack, token, mode=mode) as c:
            names = {p.name for p in (await c.list_prompts()).prompts}
            assert {"everything__simple-prompt", "everything__args-prompt", "everything__completable-prompt"} <= names
            args = await c.get_prompt("everything__args-prompt", {"city": "Lyon"})
            embedded = await c.get_prompt("everything__resource-prompt", {"resourceType": "Text", "resourceId": "2"})
            ref = PromptReference(type="ref/prompt", name="everything__completable-prompt")
            departments = await c.complete(ref, {"name": "department", "value": "E"})
            people = await c.complete(ref, {"name": "name", "value": "A"}, {"department": "Engineering"})
            with pytest.raises(MCPError) as undeclared:
                await c.get_prompt("everything__args-prompt", {"city": "Lyon", "country": "FR"})
        assert args.messages[0].content.text == "What's weather in Lyon?"
        uris = [m.content.resource.uri for m in embedded.messages if m.content.type == "resource"]
        assert uris == ["mcp-gw://everything/demo://resource/dynamic/text/2"]
        assert departments.completion.values == ["Engineering"] and people.completion.values == ["Alice"]
        assert undeclared.value.error.data == {"category": "invalid_arguments"}
