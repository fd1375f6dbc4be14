"""Schemathesis against a real control plane (``gateway serve --plane control``, real PostgreSQL, real opa).

Every request generated from ``GET /v1/openapi.json``'s document (positive and
negative examples) must get: no 5xx, a documented status code, the documented
content type, and a body matching the documented schema. ``make test`` runs
:data:`EXAMPLES` examples per operation (default 6); ``make fuzz`` sets
``GATEWAY_FUZZ_EXAMPLES`` higher.

``POST /v1/servers/{name}/approve`` (and its dry run ``GET /v1/servers/{name}/drift``)
makes the control plane connect to the
server's registered URL, and registered URLs are whatever the fuzzer posts to
``POST /v1/servers``. So approval is fuzzed against a second control plane whose
database holds one server only, registered here with a closed loopback port, and
where nothing else is fuzzed: no generated request can make it connect anywhere
outside loopback. The long-polled internal GETs (bundle, projection feed) are
left to tests/controlplane/test_opa.py: each held request would cost up to the
long-poll timeout.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.controlplane.openapi import openapi_document
from tests.support import pg
from tests.support.ports import free_port
from tests.support.procs import ManagedProcess

pytestmark = [pytest.mark.db, pytest.mark.integration]

EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "6"))
"""Examples per operation (``make fuzz`` raises it)."""
ADMIN_TOKEN = "fuzz-admin-token"
INTERNAL_TOKEN = "fuzz-internal-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
INTERNAL = {"Authorization": f"Bearer {INTERNAL_TOKEN}"}
OPA_TOKEN = "fuzz-opa-token"
OPA = {"Authorization": f"Bearer {OPA_TOKEN}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

schema = schemathesis.openapi.from_dict(openapi_document())
schema.config.generation.update(max_examples=EXAMPLES)
admin_api = schema.exclude(tag="internal").exclude(operation_id=["approveServer", "getServerDrift"])
internal_posts = schema.include(tag="internal", method="POST")
approve_server = schema.include(operation_id=["approveServer", "getServerDrift"])


def _control_plane(pg_admin_url: str, opa_bin: Path, log_dir: Path, name: str) -> Iterator[tuple[str, ManagedProcess]]:
    with pg.throwaway_database(pg_admin_url) as database_url:
        port = free_port()
        env = {
            "DATABASE_URL": database_url,
            "GATEWAY_CONTROL_HOST": "127.0.0.1",
            "GATEWAY_CONTROL_PORT": str(port),
            "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
            "GATEWAY_INTERNAL_TOKEN": INTERNAL_TOKEN,
            "GATEWAY_OPA_TOKEN": OPA_TOKEN,
            "GATEWAY_RUN_DIR": str(log_dir / f"{name}-run"),
            "OPA_BIN": str(opa_bin),
            # The credentials routes need a KEK (without one they answer 503, a server error here).
            "GATEWAY_CREDENTIALS_KEK": base64.b64encode(os.urandom(32)).decode(),
        }
        argv = [sys.executable, "-m", "gateway", "serve", "--plane", "control"]
        proc = ManagedProcess(name, argv, log_dir=log_dir / "fuzz", env=env).start()
        try:
            base = f"http://127.0.0.1:{port}"
            proc.wait_http(f"{base}/v1/control-plane/scope", timeout=30, headers=ADMIN)
            yield base, proc
            assert proc.is_running(), f"the control plane exited during fuzzing (log: {proc.log_path})"
        finally:
            proc.stop()


@pytest.fixture(scope="module")
def control_plane(pg_admin_url: str, opa_bin: Path, log_dir: Path) -> Iterator[str]:
    for base, _ in _control_plane(pg_admin_url, opa_bin, log_dir, "fuzz-control-plane"):
        yield base


@pytest.fixture(scope="module")
def isolated_control_plane(pg_admin_url: str, opa_bin: Path, log_dir: Path) -> Iterator[str]:
    """A control plane whose only server points at a closed loopback port."""
    for base, _ in _control_plane(pg_admin_url, opa_bin, log_dir, "fuzz-approve-plane"):
        closed = f"http://127.0.0.1:{free_port()}/mcp"
        body = {"name": "loop", "transport": "streamable_http", "url": closed}
        r = httpx.post(f"{base}/v1/servers", json=body, headers=ADMIN)
        assert r.status_code == 201, r.text
        yield base


@admin_api.parametrize()
def test_admin_api_answers_generated_requests_as_described(case: schemathesis.Case, control_plane: str) -> None:
    case.call_and_validate(base_url=control_plane, headers=ADMIN, checks=CHECKS)


@internal_posts.parametrize()
def test_internal_ingest_answers_generated_requests_as_described(case: schemathesis.Case, control_plane: str) -> None:
    headers = OPA if case.path.startswith("/v1/opa/") else INTERNAL  # each token opens only its own paths
    case.call_and_validate(base_url=control_plane, headers=headers, checks=CHECKS)


@approve_server.parametrize()
def test_server_approval_answers_generated_requests_as_described(
    case: schemathesis.Case, isolated_control_plane: str
) -> None:
    case.call_and_validate(base_url=isolated_control_plane, headers=ADMIN, checks=CHECKS)
