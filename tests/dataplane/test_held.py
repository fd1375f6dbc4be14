"""Held calls: a handshake-era upstream's question to a 2026-07-28 client, as MRTR (gateway.dataplane.held)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from gateway.dataplane import held
from gateway.dataplane.held import HANDLE_PREFIX, HeldCalls
from gateway.dataplane.relay import Outbox

pytestmark = pytest.mark.anyio
ALICE, MALLORY = ("https://idp", "alice"), ("https://idp", "mallory")


async def test_a_question_becomes_input_required_and_the_retry_gets_the_result() -> None:
    store = HeldCalls()
    call = store.new(ALICE)
    asked: list[dict[str, Any]] = []

    async def work() -> dict[str, Any]:
        asked.append(await call.request("elicitation/create", {"message": "ok?"}))
        return {"jsonrpc": "2.0", "id": 1, "result": {"content": [], "answer": asked[-1]}}

    async with anyio.create_task_group() as tg:
        call.attach(Outbox(None))
        call.start(work, lambda fn: tg.start_soon(fn))
        first = await call.next(1)
        result = first["result"]
        assert result["resultType"] == "input_required" and result["requestState"].startswith(HANDLE_PREFIX)
        assert result["inputRequests"] == {"q1": {"method": "elicitation/create", "params": {"message": "ok?"}}}
        assert store.get(result["requestState"], MALLORY) is None  # bound to the caller
        resumed = store.get(result["requestState"], ALICE)
        assert resumed is call
        resumed.answer({"q1": {"action": "accept", "content": {"ok": True}}})
        final = await resumed.next(2)
    assert final["id"] == 2 and final["result"]["answer"] == {"result": {"action": "accept", "content": {"ok": True}}}
    assert len(store) == 0  # collected: forgotten


async def test_a_call_that_asks_nothing_is_never_held() -> None:
    store = HeldCalls()
    call = store.new(ALICE)

    async def work() -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": 1, "result": {"content": []}}

    async with anyio.create_task_group() as tg:
        call.start(work, lambda fn: tg.start_soon(fn))
        assert (await call.next(1))["result"] == {"content": []}
    assert len(store) == 0


async def test_the_store_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(held, "MAX_HELD", 1)
    store = HeldCalls()
    first, second = store.new(ALICE), store.new(ALICE)
    assert store.hold(first) and not store.hold(second)
    refused = await second.request("sampling/createMessage", {})
    assert refused["error"]["data"]["category"] == "no_back_channel"


async def test_closing_the_stream_cancels_the_held_call() -> None:
    store = HeldCalls()
    call = store.new(ALICE)
    cancelled = anyio.Event()

    async def work() -> dict[str, Any]:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    async with anyio.create_task_group() as tg:
        call.start(work, lambda fn: tg.start_soon(fn))
        with anyio.move_on_after(0.05):
            await call.next(1)  # the client leaves while it waits
        with anyio.fail_after(2):
            await cancelled.wait()
