"""Control-plane probes (gateway.controlplane.health): no token, and readiness follows PostgreSQL."""

from __future__ import annotations

import pytest

from gateway.config import Config
from tests.controlplane.helpers import asgi_controlplane

pytestmark = [pytest.mark.anyio, pytest.mark.db]


async def test_probes_answer_without_a_token_and_readiness_follows_the_database(cp_config: Config) -> None:
    anonymous = {"Authorization": ""}
    async with asgi_controlplane(cp_config) as (admin, _, state):
        live = await admin.get("/healthz", headers=anonymous)
        ready = await admin.get("/readyz", headers=anonymous)
        post = await admin.post("/readyz", headers=anonymous)
        await state["cp_pool"].close()  # PostgreSQL gone, as far as this process can tell
        down = await admin.get("/readyz", headers=anonymous)
        still_live = await admin.get("/healthz", headers=anonymous)

    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert post.status_code == 401  # only GET/HEAD of a probe is public
    assert (down.status_code, down.json()) == (503, {"status": "not_ready", "reasons": ["database_unavailable"]})
    assert still_live.status_code == 200
