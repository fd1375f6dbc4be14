"""The embedded decision engine: the pinned OPA, in the gateway process (``GATEWAY_DECISION_ENGINE=embedded``).

``deploy/opa/embedded`` builds the pinned OPA's own SDK (``github.com/open-policy-agent/opa/v1/sdk``)
as a C shared library (``make opa-embedded`` → ``.tools/lib/libopa-embedded.so``); this module
loads it with :mod:`ctypes` and starts one SDK instance with the *same* configuration document
as the sidecar (:func:`gateway.policy.sidecar.opa_config`). So the same plugins run: the bundle
is long-polled from the control plane and activated only when signed, the status is reported
and every decision is logged (``system.log.mask`` applied) under the decision id the data
plane audits. What is gone is the HTTP round trip to ``opa run --server``: a decision is one
foreign call (OPA's ``sdk.Decision``; ctypes releases the GIL while it runs).

Not a re-implementation of Rego, and not Wasm: OPA's Wasm target compiled the policy library
into an invalid module and the Python Wasm runtime cost more per decision than the sidecar's
round trip (``docs/performance.md``, "Choosing the embedded engine").

Sandbox: before the first instance starts, the library keeps only the builtins of the
restricted capabilities (:data:`gateway.policy.reserved.CAPABILITIES_FILE`), so a bundle that
calls any other builtin fails to activate (OPA status error ``undefined function ...``, shown in
``GET /v1/projection``) while the previous bundle keeps serving; and ``opa.runtime()`` carries
no ``env`` (the sidecar runs with an empty environment; the gateway's holds secrets).

Costs: one Go runtime per process (~30 MB RSS); a decision is made on the event loop (a typical
one takes 0.1–0.5 ms), for at most :data:`LOOP_BUDGET`: a slower one is cut off and evaluated
again in a worker thread, and inputs above :data:`THREAD_THRESHOLD` bytes go to a worker thread
at once. The process must not ``fork`` without ``exec`` after
the library is loaded (Go's runtime does not survive it); the gateway never does.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson

from gateway.config import Config
from gateway.errors import ConfigError, PolicyUnavailable
from gateway.policy.bundle_signing import verification_keys
from gateway.policy.decision import Decision, ListDecision, parse_call_result, parse_list_result
from gateway.policy.reserved import load_capabilities
from gateway.policy.sidecar import OPA_TOKEN_FILE, opa_config

__all__ = ["THREAD_THRESHOLD", "EmbeddedHealth", "EmbeddedOpa", "EmbeddedPolicyEngine", "load_library"]

log = logging.getLogger("gateway.opa")

THREAD_THRESHOLD = 64 * 1024
"""Inputs larger than this (bytes of JSON) are evaluated in a worker thread, off the event loop."""

LOOP_BUDGET = 0.010
"""Seconds a decision may hold the event loop. Evaluation cost does not follow input size (a
policy can be slow on a small input), so a decision made on the loop is cut off at this
deadline and, when the configured ``opa.timeout`` is longer, evaluated again in a worker thread
with the rest of it: the loop is never blocked for longer, and only slow decisions pay twice."""

LIST_ON_LOOP = 8
"""A discovery filter with more candidates than this is evaluated in a worker thread at once."""

_MAX_BODY = 2**31 - 1  # the C ABI's int length

_CALL_PATH = b"gateway_runtime/main/call"
_LIST_PATH = b"gateway_runtime/main/list"

_lock = threading.Lock()
_library: _Library | None = None


class _Library:
    """The loaded shared library with its C signatures (one per process)."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)  # CDLL (not PyDLL): the GIL is released during every call
        vp, cp, ci, cll = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_longlong
        lib.opa_restrict.argtypes, lib.opa_restrict.restype = [cp, ci], vp
        lib.opa_new.argtypes, lib.opa_new.restype = [cp, ci, cp, cp], vp
        lib.opa_ready.argtypes, lib.opa_ready.restype = [cll], ci
        lib.opa_decide.argtypes = [cll, cp, cp, ci, ci, ctypes.POINTER(ci)]
        lib.opa_decide.restype = vp
        lib.opa_stop.argtypes, lib.opa_stop.restype = [cll, ci], None
        lib.opa_free.argtypes, lib.opa_free.restype = [vp], None
        self._lib = lib
        self.path = path

    def _take(self, ptr: int | None, length: int | None = None) -> Any:
        """Decode and free a JSON buffer the library returned (None for a NULL pointer).

        Every buffer is NUL-terminated; ``length``, when the call gives one, is used instead.
        """
        if not ptr:
            return None
        try:
            raw = ctypes.string_at(ptr, length) if length is not None else ctypes.string_at(ptr)
        finally:
            self._lib.opa_free(ptr)
        return orjson.loads(raw)

    def restrict(self, capabilities: bytes) -> None:
        problem = self._take(self._lib.opa_restrict(capabilities, len(capabilities)))
        if problem is not None:
            raise ConfigError(f"the embedded OPA engine refused the capabilities: {problem['error']['message']}")

    def new(self, document: bytes, instance_id: str, log_path: str) -> int:
        answer = self._take(self._lib.opa_new(document, len(document), instance_id.encode(), log_path.encode()))
        if "error" in answer:
            raise PolicyUnavailable(f"the embedded OPA engine did not start: {answer['error']['message']}")
        return int(answer["handle"])

    def ready(self, handle: int) -> bool:
        return bool(self._lib.opa_ready(handle) == 1)

    def decide(self, handle: int, path: bytes, body: bytes, timeout_ms: int) -> Any:
        if len(body) > _MAX_BODY:  # ctypes would wrap the length silently
            return {"error": {"code": "invalid_input", "message": f"input of {len(body)} bytes is too large"}}
        timeout_ms = max(1, min(timeout_ms, 2**31 - 1))
        length = ctypes.c_int(0)
        ptr = self._lib.opa_decide(handle, path, body, len(body), timeout_ms, ctypes.byref(length))
        try:
            answer = self._take(ptr, length.value)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):  # fail closed on anything but the documented shape
            return {"error": {"code": "internal_error", "message": "the library's answer is not a JSON object"}}
        return answer

    def stop(self, handle: int, timeout_ms: int) -> None:
        self._lib.opa_stop(handle, timeout_ms)


def load_library(path: str) -> _Library:
    """Load the embedded engine once per process and restrict its builtins.

    Args:
        path: The shared library (``Config.opa.embedded_lib``).

    Raises:
        ConfigError: It cannot be loaded, or refused the restricted capabilities.
    """
    global _library
    with _lock:
        if _library is None:
            try:
                lib = _Library(path)
            except (OSError, AttributeError) as exc:
                raise ConfigError(f"cannot load the embedded OPA engine {path!r}: {exc} (run `make tools`)") from exc
            lib.restrict(load_capabilities())
            _library = lib
        elif _library.path != path:
            raise ConfigError(f"the embedded OPA engine is already loaded from {_library.path!r}")
        return _library


class EmbeddedOpa:
    """One in-process OPA instance, with the sidecar's lifecycle (:class:`~gateway.policy.sidecar.OpaSidecar`).

    ``run()`` starts it and keeps it until cancelled; it registers each start under a fresh
    :attr:`instance_id` (``<dataplane id>/<uuid>``, label ``gateway_instance``) like the
    sidecar, so ``GET /v1/projection`` lists it. A start that fails (an unreadable
    verification key) is retried with backoff; meanwhile every call is denied
    (``policy_unavailable``).
    """

    def __init__(self, config: Config, on_start: Callable[[str], None] | None = None) -> None:
        self._config = config
        self._on_start = on_start
        self._lib = load_library(config.opa.embedded_lib)
        self.instance_id = ""
        self.handle: int | None = None
        self._active = False
        self.restarts = 0

    def _document(self) -> bytes:
        """Write the OPA token (mode 0600) and return this start's configuration document.

        Raises:
            gateway.policy.bundle_signing.SigningKeyError: A verification key cannot be read or parsed.
        """
        self.instance_id = f"{self._config.data_plane.id}/{uuid.uuid4()}"
        work = Path(self._config.opa.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        token_file = work / OPA_TOKEN_FILE
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self._config.control_plane.opa_token.reveal())
        keys = verification_keys(self._config)
        if not keys:
            log.error("no bundle verification key: the embedded OPA engine will refuse every bundle")
        document = opa_config(self._config, str(token_file), self.instance_id, keys)
        document["decision_logs"]["console"] = False
        return orjson.dumps(document)

    def bundle_active(self) -> bool:
        """True once this instance has activated a bundle (before that, no decision is asked)."""
        if self._active:
            return True
        if self.handle is not None and self._lib.ready(self.handle):
            self._active = True
            log.info("embedded opa %s activated its bundle", self.instance_id)
        return self._active

    def decide_raw(self, path: bytes, body: bytes, timeout: float | None = None) -> Any:
        """Evaluate ``data.<path>`` for a JSON input (blocking); the library's answer.

        Args:
            timeout: Seconds (default ``opa.timeout``); past it the answer is the error
                ``{"code": "timeout"}``.

        Raises:
            PolicyUnavailable: No instance, or its bundle is not active yet.
        """
        handle = self.handle
        if handle is None or not self.bundle_active():
            raise PolicyUnavailable("the embedded OPA engine has not activated its bundle yet")
        seconds = self._config.opa.timeout if timeout is None else timeout
        return self._lib.decide(handle, path, body, int(seconds * 1000))

    @property
    def timeout(self) -> float:
        """Seconds one decision may take (``opa.timeout``)."""
        return self._config.opa.timeout

    def start(self) -> None:
        """Start an instance; :meth:`bundle_active` tells when it has a bundle.

        Blocking: OPA's plugin manager reports each plugin's state to the status plugin while
        it starts, which may wait for a status upload to the control plane. Never call it on
        an event loop that serves the control plane (:meth:`run` runs :meth:`_launch` in a
        worker thread). Decisions do not wait on the network: a decision-log event is queued
        without blocking (OPA drops the oldest when its buffer is full, as the sidecar does)
        and uploaded by OPA's own goroutine.

        Raises:
            gateway.policy.bundle_signing.SigningKeyError: A verification key cannot be read or parsed.
            PolicyUnavailable: The library refused the configuration.
        """
        self._launch(self._announce())

    def _announce(self) -> bytes:
        """This start's configuration document, with the instance registered (``on_start``)."""
        document = self._document()
        if self._on_start is not None:
            self._on_start(self.instance_id)
        return document

    def _launch(self, document: bytes) -> None:
        log_path = str(Path(self._config.opa.work_dir) / "opa.log")
        self.handle = self._lib.new(document, self.instance_id, log_path)
        log.info("embedded opa %s started (%s)", self.instance_id, self._lib.path)

    async def run(self) -> None:
        """Start the instance and keep it until cancelled; then stop it (flushing decision logs)."""
        backoff = 0.2
        try:
            while self.handle is None:
                try:
                    document = self._announce()  # on the loop: on_start touches the projection sync
                    # Off the event loop: starting the plugins waits on OPA's status plugin, whose
                    # report goes to the control plane — served by this very loop when both planes
                    # share the process (it deadlocked, now and then, when this ran on the loop).
                    await anyio.to_thread.run_sync(self._launch, document)
                except Exception as exc:  # noqa: BLE001 - any failure to start is retried (fail closed meanwhile)
                    log.error("cannot start the embedded opa: %s; retrying in %.1fs", exc, backoff)
                    self.restarts += 1
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            while not self.bundle_active():
                await anyio.sleep(0.01)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        """Stop the instance, flushing its decision logs for up to 5 s (blocking; idempotent)."""
        handle, self.handle = self.handle, None
        self._active = False
        if handle is not None:
            self._lib.stop(handle, 5000)


class EmbeddedPolicyEngine:
    """:class:`~gateway.policy.opa.PolicyEngine` backed by the in-process OPA.

    The answers have the Data API's shape (``{"result": ..., "decision_id": ...}``), parsed by
    the same functions as the sidecar's, so both engines accept exactly the same decisions.
    """

    def __init__(self, opa: EmbeddedOpa) -> None:
        self._opa = opa

    async def _ask(self, path: bytes, input_doc: dict[str, Any], *, slow: bool = False) -> Any:
        body = orjson.dumps(input_doc)
        full = self._opa.timeout
        if slow or len(body) > THREAD_THRESHOLD:
            answer = await anyio.to_thread.run_sync(self._opa.decide_raw, path, body)
        else:
            budget = min(LOOP_BUDGET, full)
            answer = self._opa.decide_raw(path, body, budget)
            if full > budget and (answer.get("error") or {}).get("code") == "timeout":
                answer = await anyio.to_thread.run_sync(self._opa.decide_raw, path, body, full - budget)
        error = answer.get("error")
        if error is None:
            return answer
        if error.get("code") == "opa_undefined_error":  # the Data API's 200 without "result"
            return {"decision_id": answer.get("decision_id")}
        raise PolicyUnavailable(f"the embedded OPA engine failed: {error.get('code')}: {error.get('message')}")

    async def decide(self, input_doc: dict[str, Any]) -> Decision:
        """Ask ``data.gateway_runtime.main.call`` for one request.

        Raises:
            PolicyUnavailable: Not ready, timed out (``opa.timeout``) or an engine error.
            PolicyDecisionInvalid: Undefined or malformed decision.
        """
        return parse_call_result(await self._ask(_CALL_PATH, input_doc))

    async def visible(self, input_doc: dict[str, Any]) -> ListDecision:
        """Filter ``input_doc["candidates"]`` in one query (``data.gateway_runtime.main.list``).

        Raises:
            PolicyUnavailable: Not ready, timed out or an engine error.
            PolicyDecisionInvalid: Malformed result.
        """
        # One evaluation of the decision per candidate: past a few, straight to a worker thread
        # (cut off at the loop budget, a long list would be evaluated twice).
        slow = len(input_doc.get("candidates") or ()) > LIST_ON_LOOP
        return parse_list_result(await self._ask(_LIST_PATH, input_doc, slow=slow))


class EmbeddedHealth:
    """``/readyz``'s OPA probe for the embedded engine (the interface of :class:`~gateway.policy.health.OpaHealth`)."""

    def __init__(self, opa: EmbeddedOpa) -> None:
        self._opa = opa

    async def bundles_ready(self) -> bool:
        """True once the in-process OPA has activated its bundle."""
        return self._opa.bundle_active()

    def close(self) -> None:
        """Nothing to close (the instance is stopped by :meth:`EmbeddedOpa.run`)."""
