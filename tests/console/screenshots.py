"""Screenshots of the console's main pages for docs/console.md (not part of ``make test``).

Starts a whole local stack (control and data plane, OPA sidecar, the sample upstream, the sample
policy), seeds audit data and a pending policy version and server, signs in with the bootstrap
token in headless Chromium and saves ``docs/console/*.png``::

    DATABASE_URL=$(cat .run/database_url) .venv/bin/python -m tests.console.screenshots [out_dir]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

from playwright.sync_api import sync_playwright  # noqa: E402

from gateway.devtools.stack import LocalStack, sample_policy_modules  # noqa: E402
from tests.console.conftest import (  # noqa: E402
    ADMIN_AUDIENCE,
    ADMIN_ISSUER,
    CHROMIUM,
    INTERNAL_TOKEN,
    OPA_TOKEN,
    Console,
    seed,
    sign_in,
)
from tests.support import pg  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MAX_HEIGHT = 1400
"""Pixels: long pages are cut (the docs show the top of each)."""
PAGES = [
    ("signin", "/console/signin", None),
    ("home", "/console/", None),
    ("servers", "/console/servers", None),
    ("server", "/console/servers/demo", None),
    ("policies", "/console/policies", None),
    ("policy", "/console/policies/{pending}", None),
    ("diff", "/console/policies/{active}/diff/{pending}", None),
    ("projection", "/console/projection", "#projection #desired"),
    ("audit", "/console/audit?subject=mallory&allowed=false", None),
    ("record", "/console/audit/decisions/console-dec-006", None),
    ("stats", "/console/stats", "body[data-charts=drawn]"),
    ("verify", "/console/verify?run=1", "#verify-message"),
]


def main(out: Path) -> None:
    from gateway.devtools.idp import DevIdentityProvider

    out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="console-shots-") as tmp,
        pg.throwaway_database(pg.admin_url_from_env_or_script()) as database_url,
    ):
        run_dir = Path(tmp)
        idp = DevIdentityProvider.create(run_dir / "admin-idp", ADMIN_ISSUER)
        stack = LocalStack.create(
            run_dir, database_url=database_url, opa_bin=os.environ.get("OPA_BIN", ".tools/bin/opa")
        )
        stack.extra_env.update(
            {
                "GATEWAY_INTERNAL_TOKEN": INTERNAL_TOKEN,
                "GATEWAY_OPA_TOKEN": OPA_TOKEN,
                "GATEWAY_ADMIN_JWT_ISSUER": ADMIN_ISSUER,
                "GATEWAY_ADMIN_JWT_AUDIENCE": ADMIN_AUDIENCE,
                "GATEWAY_ADMIN_JWKS_URL": idp.jwks_url,
            }
        )
        with stack:
            stack.start_upstream()
            stack.start_gateway()
            stack.register_and_approve_server("demo", stack.upstream_url, "the sample upstream")
            modules = sample_policy_modules()
            active = stack.upload_and_approve_policy(modules)
            stack.wait_projection_active()
            console = Console(stack, idp, stack.control_url)
            first = next(iter(sorted(modules)))
            changed = {**modules, first: modules[first] + "\n# reviewed: deny delete_record to contractors\n"}
            pat = console.jwt("pat", ["policy_author"])
            pending = console.api("POST", "/v1/policies", pat, json={"modules": changed}).json()["version"]
            console.api(
                "POST",
                "/v1/servers",
                json={"name": "tickets", "transport": "streamable_http", "url": "http://127.0.0.1:9/mcp"},
            )
            seed(console)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
                page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
                page.goto(f"{console.base}/console/signin")
                page.screenshot(path=str(out / "signin.png"))
                sign_in(page, console.base, stack.admin_token)
                for name, path, ready in PAGES[1:]:
                    page.goto(console.base + path.format(active=active, pending=pending))
                    if ready:
                        page.wait_for_selector(ready)
                    height = min(int(page.evaluate("document.documentElement.scrollHeight")), MAX_HEIGHT)
                    clip = {"x": 0, "y": 0, "width": 1280, "height": height}
                    page.screenshot(path=str(out / f"{name}.png"), full_page=True, clip=clip)  # type: ignore[arg-type]
                    print(out / f"{name}.png")
                browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "console")
