"""Attribution of server-to-client messages on multiplexed upstream sessions (gateway.mcp.channel)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from gateway.mcp.channel import InFlight, Listeners, answer_server_request, wanted

pytestmark = pytest.mark.anyio


class Client:
    """A ClientChannel double: records notifications, answers requests with ``answer``."""

    def __init__(self, answer: dict[str, Any] | None = None) -> None:
        self.notes: list[dict[str, Any]] = []
        self.asked: list[str] = []
        self.answer = answer or {"result": {"ok": True}}

    async def notify(self, message: dict[str, Any]) -> None:
        self.notes.append(message)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.asked.append(method)
        return self.answer


def progress(token: Any, value: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": token, "progress": value}}


async def test_progress_tokens_are_replaced_upstream_and_restored_for_their_own_caller() -> None:
    inflight = InFlight(idle=30)
    alice, bob = Client(), Client()
    key_a, sent_a = inflight.enter({"name": "t", "_meta": {"progressToken": 1}}, alice)
    key_b, sent_b = inflight.enter({"name": "t", "_meta": {"progressToken": 1}}, bob)
    token_a, token_b = sent_a["_meta"]["progressToken"], sent_b["_meta"]["progressToken"]
    assert token_a != token_b and 1 not in (token_a, token_b)  # the same client token twice never collides
    await inflight.notification(progress(token_b, 5))
    await inflight.notification(progress(token_a, 7))
    await inflight.notification(progress("unknown", 9))
    assert [n["params"] for n in alice.notes] == [{"progressToken": 1, "progress": 7}]
    assert [n["params"] for n in bob.notes] == [{"progressToken": 1, "progress": 5}]
    inflight.leave(key_a)
    await inflight.notification(progress(token_a, 8))
    assert len(alice.notes) == 1  # gone with its request
    inflight.leave(key_b)


async def test_other_messages_go_to_the_sole_call_in_flight_or_nowhere() -> None:
    inflight = InFlight(idle=30)
    log = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}}
    ask = {"jsonrpc": "2.0", "id": 7, "method": "sampling/createMessage", "params": {}}
    alice, bob = Client(), Client()
    assert (await inflight.answer(ask))["error"]["data"]["category"] == "no_related_request"
    key_a, _ = inflight.enter({}, alice)
    await inflight.notification(log)
    assert await inflight.answer(ask) == {"jsonrpc": "2.0", "id": 7, "result": {"ok": True}}
    key_b, _ = inflight.enter({}, bob)
    await inflight.notification(log)  # two callers: cannot tell whose it is
    refused = await inflight.answer(ask)
    assert alice.notes == [log] and bob.notes == [] and alice.asked == ["sampling/createMessage"]
    assert refused["error"]["data"]["category"] == "no_related_request" and bob.asked == []
    ping = await inflight.answer({"jsonrpc": "2.0", "id": 8, "method": "ping"})
    assert ping == {"jsonrpc": "2.0", "id": 8, "result": {}}  # answered by the gateway, whoever is in flight
    inflight.leave(key_a)
    inflight.leave(key_b)


async def test_a_relayed_message_restarts_the_idle_clock_and_asking_stops_it() -> None:
    inflight = InFlight(idle=5)
    clock = anyio.CancelScope(deadline=anyio.current_time() + 0.01)
    client = Client()
    key, sent = inflight.enter({"_meta": {"progressToken": "p"}}, client, clock)
    await inflight.notification(progress(sent["_meta"]["progressToken"], 1))
    assert clock.deadline > anyio.current_time() + 4  # restarted to idle=5 s

    class Slow(Client):
        async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
            assert clock.deadline == float("inf")  # no idle timeout while the client is being asked
            return await super().request(method, params)

    inflight.leave(key)
    slow_clock = anyio.CancelScope(deadline=anyio.current_time() + 0.01)
    key, _ = inflight.enter({}, Slow(), slow_clock)
    clock = slow_clock
    await inflight.answer({"jsonrpc": "2.0", "id": 1, "method": "roots/list"})
    assert clock.deadline < float("inf")
    inflight.leave(key)


async def test_listeners_hear_only_what_they_asked_for() -> None:
    listeners = Listeners()
    tools, watched = Client(), Client()
    listeners.add({"toolsListChanged": True}, tools)
    listeners.add({"resourceSubscriptions": ["a://1"]}, watched)
    updated = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "a://1"}}
    other = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "a://2"}}
    changed = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    prompts = {"jsonrpc": "2.0", "method": "notifications/prompts/list_changed"}
    assert [await listeners.deliver(m) for m in (updated, other, changed, prompts)] == [True, False, True, False]
    assert tools.notes == [changed] and watched.notes == [updated]
    assert listeners.uris() == {"a://1"}
    assert not wanted({"toolsListChanged": False}, changed)


async def test_a_request_without_a_client_is_refused_not_dropped() -> None:
    reply = await answer_server_request(None, {"jsonrpc": "2.0", "id": "x", "method": "elicitation/create"})
    assert reply["id"] == "x" and reply["error"]["code"] == -32603
