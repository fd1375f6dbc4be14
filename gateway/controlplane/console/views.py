"""The console's pages: each one is built from admin API sub-requests (:mod:`.api`) made as the
signed-in actor, so the control plane's policy decides what it shows (a 403 renders the
refusal page) and the trail records every read and change.

Mutations (approvals, rollbacks, sign-out) are POST forms checked against CSRF
(:func:`~gateway.controlplane.console.session.csrf_ok`); each answers with a 303 to the page
that shows the result (post/redirect/get).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.controlplane.console import session as sessions
from gateway.controlplane.console.api import ApiResult, call_api, forward_api
from gateway.controlplane.console.render import allowed_actions, fragment, page, pygments_css
from gateway.controlplane.console.session import SignedIn

__all__ = [
    "approve_policy",
    "approve_server",
    "audit",
    "audit_export",
    "audit_record",
    "home",
    "policies",
    "policy",
    "policy_diff",
    "projection",
    "projection_live",
    "pygments_stylesheet",
    "server",
    "servers",
    "sign_in",
    "sign_in_page",
    "sign_out",
    "stats",
    "verify",
]

AUDIT_FILTERS = ("subject", "allowed", "tool", "server", "reason", "since", "until")
"""The audit search form's fields, passed to ``GET /v1/audit/decisions`` (and stats, export)."""
_LOCAL_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(?::[0-9]{2})?")
_VERSION = re.compile(r"[0-9]{1,18}")
_SERVER = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class _NotSignedIn(Exception):
    pass


async def _me(request: Request) -> SignedIn:
    signed_in = await sessions.current(request)
    if signed_in is None:
        raise _NotSignedIn
    return signed_in


def _to_sign_in(request: Request) -> Response:
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers={"HX-Redirect": "/console/signin"})
    return RedirectResponse("/console/signin", status_code=303)


def _signed_in(view: Callable[[Request, SignedIn], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """The view with the signed-in actor (``me``); without a session, the sign-in page (303, or
    401 with ``HX-Redirect`` for htmx)."""

    @functools.wraps(view)
    async def signed_in_view(request: Request) -> Response:
        try:
            me = await _me(request)
        except _NotSignedIn:
            return _to_sign_in(request)
        return await view(request, me)

    return signed_in_view


async def _failed(request: Request, me: SignedIn, result: ApiResult, what: str) -> Response:
    """The page for a sub-request that did not succeed: the refusal, not found, or the error."""
    if result.status == 401:
        return _to_sign_in(request)
    if result.status == 403:
        return await page(request, "refused.html", me, {"what": what, "message": result.message}, status_code=403)
    if (
        result.status in (404, 405)
        and result.error in ("not_found", "method_not_allowed")
        and result.message
        in (
            "not found",
            "method not allowed",
        )
    ):
        return await page(request, "error.html", me, {"what": what, "message": "not available"}, status_code=404)
    return await page(
        request,
        "error.html",
        me,
        {"what": what, "message": result.message, "status": result.status},
        status_code=result.status if result.status >= 400 else 502,
    )


def _api_time(value: str) -> str:
    """A form's time: ``datetime-local`` values (no zone) are UTC; RFC 3339 passes as is."""
    value = value.strip()
    if _LOCAL_TIME.fullmatch(value):
        return value + (":00Z" if value.count(":") == 1 else "Z")
    return value


def _filters(params: Mapping[str, str]) -> dict[str, str]:
    """The non-empty audit filters of a query string, as the admin API takes them."""
    out: dict[str, str] = {}
    for name in AUDIT_FILTERS:
        value = (params.get(name) or "").strip()
        if value:
            out[name] = _api_time(value) if name in ("since", "until") else value
    return out


# ---------------------------------------------------------------- sign-in


async def sign_in_page(request: Request) -> Response:
    """``GET /console/signin``: the sign-in form (already signed in: the home page)."""
    if await sessions.current(request) is not None:
        return RedirectResponse("/console/", status_code=303)
    return await page(request, "signin.html", None)


async def sign_in(request: Request) -> Response:
    """``POST /console/signin`` ``credential=<admin token or JWT>``: a session and its cookie.

    Refused (same page, 401): a credential no admin identity accepts; 403: a cross-site POST.
    """
    if not sessions.same_origin(request):
        return await page(request, "signin.html", None, {"error": "cross-site sign-in refused"}, status_code=403)
    form = await sessions.read_form(request)
    signed_in = await sessions.sign_in(request, form.get("credential", ""))
    if signed_in is None:
        return await page(request, "signin.html", None, {"error": "that credential was not accepted"}, status_code=401)
    max_age = int((signed_in.session.expires_at - datetime.now(UTC)).total_seconds())
    response = RedirectResponse("/console/", status_code=303)
    response.headers.append("set-cookie", sessions.cookie_header(request, signed_in.session_id, max_age=max_age))
    return response


@_signed_in
async def sign_out(request: Request, me: SignedIn) -> Response:
    """``POST /console/signout`` (CSRF-checked): delete the session and clear the cookie."""
    form = await sessions.read_form(request)
    if not sessions.csrf_ok(request, me, form):
        return await _csrf_refused(request, me)
    await sessions.sign_out(request, me)
    response = RedirectResponse("/console/signin", status_code=303)
    response.headers.append("set-cookie", sessions.cookie_header(request, "", max_age=0))
    return response


async def _csrf_refused(request: Request, me: SignedIn) -> Response:
    return await page(
        request,
        "refused.html",
        me,
        {"what": "this form", "message": "the request failed the CSRF check (reload the page and try again)"},
        status_code=403,
    )


# ---------------------------------------------------------------- home


@_signed_in
async def home(request: Request, me: SignedIn) -> Response:
    """``GET /console/``: who you are (``GET /v1/admin/whoami``) and what you may open."""
    whoami = await call_api(request, me.actor, "GET", "/v1/admin/whoami")
    if not whoami.ok:
        return await _failed(request, me, whoami, "who you are")
    return await page(request, "home.html", me, {"whoami": whoami.body, "session": me.session})


# ---------------------------------------------------------------- servers


@_signed_in
async def servers(request: Request, me: SignedIn) -> Response:
    """``GET /console/servers``: pending and approved servers (``GET /v1/servers``)."""
    result = await call_api(request, me.actor, "GET", "/v1/servers")
    if not result.ok:
        return await _failed(request, me, result, "the servers")
    items = result.body.get("items", []) if isinstance(result.body, dict) else []
    pending = [s for s in items if s.get("status") == "pending_approval"]
    others = [s for s in items if s.get("status") != "pending_approval"]
    return await page(request, "servers.html", me, {"pending": pending, "others": others})


@_signed_in
async def server(request: Request, me: SignedIn) -> Response:
    """``GET /console/servers/{name}``: one server, its pinned tools (schemas, annotations)."""
    name = request.path_params["name"]
    if not _SERVER.fullmatch(name):
        return await page(
            request, "error.html", me, {"what": "the server", "message": "no such server"}, status_code=404
        )
    result = await call_api(request, me.actor, "GET", f"/v1/servers/{name}")
    if not result.ok:
        return await _failed(request, me, result, f"server {name}")
    return await page(request, "server.html", me, {"server": result.body, "done": request.query_params.get("done")})


@_signed_in
async def approve_server(request: Request, me: SignedIn) -> Response:
    """``POST /console/servers/{name}/approve`` ``comment`` (CSRF-checked) ->
    ``POST /v1/servers/{name}/approve``; 303 to the server's page."""
    form = await sessions.read_form(request)
    if not sessions.csrf_ok(request, me, form):
        return await _csrf_refused(request, me)
    name = request.path_params["name"]
    if not _SERVER.fullmatch(name):
        return await page(
            request, "error.html", me, {"what": "the server", "message": "no such server"}, status_code=404
        )
    result = await call_api(
        request, me.actor, "POST", f"/v1/servers/{name}/approve", json={"comment": form.get("comment", "")}
    )
    if not result.ok:
        return await _failed(request, me, result, f"approving server {name}")
    return RedirectResponse(f"/console/servers/{name}?done=approved", status_code=303)


# ---------------------------------------------------------------- policies


def _version(value: str) -> int | None:
    return int(value) if _VERSION.fullmatch(value) and int(value) > 0 else None


@_signed_in
async def policies(request: Request, me: SignedIn) -> Response:
    """``GET /console/policies``: every policy version, newest first (``GET /v1/policies``)."""
    result = await call_api(request, me.actor, "GET", "/v1/policies")
    if not result.ok:
        return await _failed(request, me, result, "the policy versions")
    items = result.body.get("items", []) if isinstance(result.body, dict) else []
    return await page(request, "policies.html", me, {"items": items})


@_signed_in
async def policy(request: Request, me: SignedIn) -> Response:
    """``GET /console/policies/{version}``: modules (highlighted), tests and their results,
    replay results, the approve / roll back form, and links to diffs against other versions."""
    version = _version(request.path_params["version"])
    if version is None:
        return await page(
            request, "error.html", me, {"what": "the version", "message": "no such version"}, status_code=404
        )
    result = await call_api(request, me.actor, "GET", f"/v1/policies/{version}")
    if not result.ok:
        return await _failed(request, me, result, f"policy version {version}")
    listing = await call_api(request, me.actor, "GET", "/v1/policies")
    others = (
        [i["version"] for i in listing.body.get("items", []) if i.get("version") != version]
        if listing.ok and isinstance(listing.body, dict)
        else []
    )
    active = (
        next((i["version"] for i in listing.body.get("items", []) if i.get("status") == "active"), None)
        if listing.ok and isinstance(listing.body, dict)
        else None
    )
    return await page(
        request,
        "policy.html",
        me,
        {"record": result.body, "others": others, "active": active, "done": request.query_params.get("done")},
    )


@_signed_in
async def policy_diff(request: Request, me: SignedIn) -> Response:
    """``GET /console/policies/{a}/diff/{b}`` (or ``/console/policies/{b}/diff?against=a``):
    what changes from ``a`` to ``b`` (``GET /v1/policies/{a}/diff/{b}``)."""
    a = _version(request.path_params.get("a") or request.query_params.get("against", ""))
    b = _version(request.path_params.get("b") or request.path_params.get("version", ""))
    if a is None or b is None:
        return await page(
            request, "error.html", me, {"what": "the diff", "message": "choose two versions"}, status_code=400
        )
    if "version" in request.path_params:  # the version page's form: on to the diff's own address
        return RedirectResponse(f"/console/policies/{a}/diff/{b}", status_code=303)
    result = await call_api(request, me.actor, "GET", f"/v1/policies/{a}/diff/{b}")
    if not result.ok:
        return await _failed(request, me, result, f"the diff of versions {a} and {b}")
    return await page(request, "diff.html", me, {"a": a, "b": b, "diff": result.body})


@_signed_in
async def approve_policy(request: Request, me: SignedIn) -> Response:
    """``POST /console/policies/{version}/approve`` ``comment`` (CSRF-checked) ->
    ``POST /v1/policies/{version}/approve`` (approving an older version rolls back); 303 to it.

    Four-eyes, the gate and the comment rule are the API's: a refusal renders its message.
    """
    form = await sessions.read_form(request)
    if not sessions.csrf_ok(request, me, form):
        return await _csrf_refused(request, me)
    version = _version(request.path_params["version"])
    if version is None:
        return await page(
            request, "error.html", me, {"what": "the version", "message": "no such version"}, status_code=404
        )
    result = await call_api(
        request, me.actor, "POST", f"/v1/policies/{version}/approve", json={"comment": form.get("comment", "")}
    )
    if not result.ok:
        return await _failed(request, me, result, f"approving policy version {version}")
    return RedirectResponse(f"/console/policies/{version}?done=approved", status_code=303)


# ---------------------------------------------------------------- projection


@_signed_in
async def projection(request: Request, me: SignedIn) -> Response:
    """``GET /console/projection``: desired vs active, per data plane and OPA; the table
    refreshes itself every 2 s (htmx polling :func:`projection_live`)."""
    result = await call_api(request, me.actor, "GET", "/v1/projection")
    if not result.ok:
        return await _failed(request, me, result, "the projection status")
    return await page(request, "projection.html", me, {"status": result.body, "now": datetime.now(UTC).isoformat()})


@_signed_in
async def projection_live(request: Request, me: SignedIn) -> Response:
    """``GET /console/projection/live``: the status table alone (an htmx fragment)."""
    result = await call_api(request, me.actor, "GET", "/v1/projection")
    if not result.ok:
        return fragment("_message.html", {"message": result.message}, status_code=200)
    return fragment("_projection.html", {"status": result.body, "now": datetime.now(UTC).isoformat()})


# ---------------------------------------------------------------- audit


@_signed_in
async def audit(request: Request, me: SignedIn) -> Response:
    """``GET /console/audit?subject=&allowed=&tool=&server=&reason=&since=&until=&cursor=``:
    the search form and a page of results (``GET /v1/audit/decisions``)."""
    filters = _filters(request.query_params)
    query = dict(filters)
    cursor = request.query_params.get("cursor")
    if cursor:
        query["cursor"] = cursor
    result = await call_api(request, me.actor, "GET", "/v1/audit/decisions", query)
    if result.status in (401, 403):
        return await _failed(request, me, result, "the audit trail")
    items = result.body.get("items", []) if result.ok and isinstance(result.body, dict) else []
    next_cursor = result.body.get("next_cursor") if result.ok and isinstance(result.body, dict) else None
    form = {name: request.query_params.get(name, "") for name in AUDIT_FILTERS}
    return await page(
        request,
        "audit.html",
        me,
        {
            "items": items,
            "form": form,
            "error": None if result.ok else result.message,
            "next_page": "/console/audit?" + urlencode({**form, "cursor": next_cursor}) if next_cursor else None,
            "export_csv": "/console/audit/export?" + urlencode({**filters, "format": "csv"}),
            "export_ndjson": "/console/audit/export?" + urlencode({**filters, "format": "ndjson"}),
        },
    )


@_signed_in
async def audit_record(request: Request, me: SignedIn) -> Response:
    """``GET /console/audit/decisions/{decision_id}``: the runtime event and OPA's decision log
    side by side, the reasons, and the policy revision linked to that version's source."""
    decision_id = request.path_params["decision_id"]
    result = await call_api(request, me.actor, "GET", "/v1/audit/decisions/" + quote(decision_id, safe=""))
    if not result.ok:
        return await _failed(request, me, result, f"decision {decision_id}")
    record = dict(result.body) if isinstance(result.body, dict) else {}
    opa_log = record.pop("opa_decision_log", None)
    return await page(request, "record.html", me, {"event": record, "opa_log": opa_log})


class _Export(Response):
    """Streams ``GET /v1/audit/export`` to the browser as an attachment (constant memory)."""

    def __init__(self, request: Request, me: SignedIn, query: dict[str, str], filename: str) -> None:
        super().__init__()
        self._request, self._me, self._query, self._filename = request, me, query, filename

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        def on_start(status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
            kept = [(k, v) for k, v in headers if k.lower() != b"content-disposition"]
            if status == 200:
                kept.append((b"content-disposition", f'attachment; filename="{self._filename}"'.encode()))
            return kept

        await forward_api(self._request, self._me.actor, "/v1/audit/export", self._query, send, on_start=on_start)


@_signed_in
async def audit_export(request: Request, me: SignedIn) -> Response:
    """``GET /console/audit/export?format=csv|ndjson&<filters>``: the matching trail as a
    download, streamed from ``GET /v1/audit/export`` (refusal page without ``audit.export``)."""
    fmt = request.query_params.get("format", "csv")
    if fmt not in ("csv", "ndjson"):
        return await page(
            request,
            "error.html",
            me,
            {"what": "the export", "message": "format must be csv or ndjson"},
            status_code=400,
        )
    if "audit.export" not in await allowed_actions(request, me.actor, ("audit.export",)):
        # The sub-request would be refused too (and recorded); the browser gets a page, not a JSON file.
        return await page(
            request,
            "refused.html",
            me,
            {"what": "the export", "message": "none of your roles grants audit.export"},
            status_code=403,
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return _Export(request, me, {**_filters(request.query_params), "format": fmt}, f"audit-{stamp}.{fmt}")


@_signed_in
async def stats(request: Request, me: SignedIn) -> Response:
    """``GET /console/stats?since=&until=&<filters>``: the aggregates as charts
    (``GET /v1/audit/stats``; the numbers travel in a JSON ``<script>`` read by console.js)."""
    filters = _filters(request.query_params)
    result = await call_api(request, me.actor, "GET", "/v1/audit/stats", filters)
    if not result.ok and result.status != 400:
        return await _failed(request, me, result, "the audit stats")
    form = {name: request.query_params.get(name, "") for name in AUDIT_FILTERS}
    return await page(
        request,
        "stats.html",
        me,
        {"stats": result.body if result.ok else None, "error": None if result.ok else result.message, "form": form},
    )


@_signed_in
async def verify(request: Request, me: SignedIn) -> Response:
    """``GET /console/verify?since=&until=&run=1``: verify the hash chain of the trail
    (``GET /v1/audit/verify``) and show the latest signed checkpoint."""
    form = {name: request.query_params.get(name, "") for name in ("since", "until")}
    report: Any = None
    error = None
    if request.query_params.get("run"):
        query = {k: _api_time(v) for k, v in form.items() if v.strip()}
        result = await call_api(request, me.actor, "GET", "/v1/audit/verify", query)
        if result.status in (401, 403) or (result.status == 404 and result.message == "not found"):
            return await _failed(request, me, result, "verifying the audit chain")
        report, error = (result.body, None) if result.ok else (None, result.message)
    return await page(request, "verify.html", me, {"report": report, "error": error, "form": form})


async def pygments_stylesheet(request: Request) -> Response:
    """``GET /console/static/pygments.css``: the highlighting classes' stylesheet."""
    del request
    return PlainTextResponse(pygments_css(), media_type="text/css")
