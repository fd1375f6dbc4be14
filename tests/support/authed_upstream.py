"""An MCP upstream that requires credentials, and says which identity it saw (real SDK server).

``--require`` (repeatable, all must hold):

* ``bearer-jwt``: ``Authorization: Bearer <JWT>`` verified with the keys of ``--jwks-url``
  (fetched again on an unknown ``kid``), RS256/ES256/EdDSA, ``exp`` and ``sub`` required,
  ``aud`` must contain ``--audience``, ``iss`` must be ``--issuer`` when given;
* ``header:<Name>``: the header is present;
* ``query:<param>``: the query parameter is present (on every request, the legacy SSE
  message endpoint included);
* ``env:<VAR>``: the server's environment has the variable; checked at start: when it is
  missing the process writes an error to stderr and exits with status 2 (every transport);
* ``none``: nothing (the default).

A ``header``, ``query`` or ``env`` requirement may end in ``=sha256:<hex>``: then the value's
SHA-256 must also match (the secret itself is never on the command line).

HTTP transports answer a request that fails a requirement with **401** (``WWW-Authenticate:
Bearer``, and ``resource_metadata`` when ``--issuer`` is given, RFC 9728), before the MCP
server sees it. Paths under ``/_`` and ``/.well-known/`` need no credential.

Tools: ``whoami()`` answers JSON of the identity of the request it arrived on::

    {"sub", "client_id", "aud", "act", "scope": from the verified JWT (else null),
     "header", "query", "env": first 12 hex digits of the SHA-256 of the value of the first
     required header / query parameter / variable (else null),
     "authorization": the same digest of any Authorization header (else null)}

``echo(text)`` answers ``text``. ``GET /_seen`` lists the identity of every accepted HTTP
request (in order, each with ``method`` and ``path``); ``GET /_rejected`` ``{"count",
"reasons"}``; ``POST /_revoke`` ``{"all"?: bool}`` makes every ``Authorization`` value
accepted so far fail from then on (as if the authorization server had revoked those
tokens), or with ``"all": true`` every request fail (a misconfigured upstream); ``POST
/_reset`` clears the lists and the revocations. ``GET /.well-known/oauth-protected-resource``
(RFC 9728) names ``--issuer`` as the authorization server when it is given.

No value of a credential is ever logged (uvicorn's access log, which would show query
strings, is off); answers carry digests only.

    python tests/support/authed_upstream.py --port N [--transport streamable-http|sse|stdio]
        [--require bearer-jwt|header:<Name>|query:<param>|env:<VAR>|none ...]
        [--jwks-url URL] [--audience AUD] [--issuer ISS]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import anyio
import httpx
import jwt
import mcp_types as types
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

READ_ONLY = types.ToolAnnotations(read_only_hint=True)
IDENTITY_KEY = "authed_upstream.identity"
ALGORITHMS = ["RS256", "ES256", "EdDSA"]


def digest(value: str) -> str:
    """First 12 hex digits of SHA-256 (what the server shows instead of a value)."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Requirement:
    kind: str  # bearer-jwt | header | query | env | none
    name: str = ""
    sha256: str | None = None

    @classmethod
    def parse(cls, text: str) -> Requirement:
        if text in ("bearer-jwt", "none"):
            return cls(text)
        kind, sep, rest = text.partition(":")
        if not sep or kind not in ("header", "query", "env") or not rest:
            raise argparse.ArgumentTypeError(
                "--require takes bearer-jwt, header:<Name>, query:<param>, env:<VAR> or none"
            )
        name, eq, expected = rest.partition("=")
        if eq:
            if not expected.startswith("sha256:") or len(expected) != 7 + 64:
                raise argparse.ArgumentTypeError("a required value is given as =sha256:<64 hex digits>")
            return cls(kind, name, expected[7:].lower())
        return cls(kind, name)

    def matches(self, value: str) -> bool:
        return self.sha256 is None or hmac.compare_digest(hashlib.sha256(value.encode()).hexdigest(), self.sha256)


class JwtVerifier:
    """Verifies bearer JWTs with a JWKS URL (refetched on an unknown ``kid``)."""

    def __init__(self, jwks_url: str, audience: str | None, issuer: str | None) -> None:
        self.jwks_url, self.audience, self.issuer = jwks_url, audience, issuer
        self._keys: dict[str, Any] = {}
        self._lock = anyio.Lock()

    async def _refresh(self) -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
            data = (await http.get(self.jwks_url)).raise_for_status().json()
        keys = jwt.PyJWKSet.from_dict(data).keys
        self._keys = {k.key_id or "": k for k in keys}

    async def verify(self, token: str) -> dict[str, Any]:
        """Raises ``jwt.PyJWTError`` (or an HTTP error fetching keys) when the token fails."""
        kid = jwt.get_unverified_header(token).get("kid") or ""
        if kid not in self._keys:
            async with self._lock:
                if kid not in self._keys:
                    await self._refresh()
        key = self._keys.get(kid)
        if key is None:
            raise jwt.InvalidKeyError("unknown kid")
        options: dict[str, Any] = {"require": ["exp", "sub"], "verify_aud": self.audience is not None}
        claims: dict[str, Any] = jwt.decode(
            token, key.key, algorithms=ALGORITHMS, audience=self.audience, issuer=self.issuer, options=options
        )
        return claims


class State:
    def __init__(self, requirements: list[Requirement], verifier: JwtVerifier | None, env_identity: str | None) -> None:
        self.requirements = requirements
        self.verifier = verifier
        self.env_identity = env_identity
        self.seen: list[dict[str, Any]] = []
        self.rejected: list[str] = []
        self.revoked: set[str] = set()
        """Digests of ``Authorization`` values refused from now on (``/_revoke``)."""
        self.refuse_all = False

    def blank(self) -> dict[str, Any]:
        return {
            "sub": None,
            "client_id": None,
            "aud": None,
            "act": None,
            "scope": None,
            "header": None,
            "query": None,
            "env": self.env_identity,
            "authorization": None,
        }

    async def identify(self, scope: Scope) -> tuple[dict[str, Any] | None, str]:
        """(identity, "") when every requirement holds, else (None, reason without values)."""
        headers = Headers(scope=scope)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        identity = self.blank()
        if "authorization" in headers:
            identity["authorization"] = digest(headers["authorization"])
        if self.refuse_all:
            return None, "every request refused (/_revoke all)"
        if identity["authorization"] in self.revoked:
            return None, "revoked authorization"
        for req in self.requirements:
            if req.kind == "bearer-jwt":
                auth = headers.get("authorization", "")
                if auth[:7].lower() != "bearer " or not auth[7:].strip():
                    return None, "missing bearer token"
                assert self.verifier is not None
                try:
                    claims = await self.verifier.verify(auth[7:].strip())
                except (jwt.PyJWTError, httpx.HTTPError) as exc:
                    return None, f"invalid bearer token ({type(exc).__name__})"
                for name in ("sub", "client_id", "aud", "act", "scope"):
                    identity[name] = claims.get(name)
            elif req.kind in ("header", "query"):
                source = headers if req.kind == "header" else query
                value = source.get(req.name.lower() if req.kind == "header" else req.name)
                if value is None:
                    return None, f"missing {req.kind} {req.name}"
                if not req.matches(value):
                    return None, f"wrong {req.kind} {req.name}"
                if identity[req.kind] is None:
                    identity[req.kind] = digest(value)
        return identity, ""


class RequireCredentials:
    """ASGI middleware: 401 for an HTTP request failing a requirement; records the rest."""

    def __init__(self, app: ASGIApp, state: State, resource_metadata: str | None) -> None:
        self.app, self.state, self.resource_metadata = app, state, resource_metadata

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(("/_", "/.well-known/")):
            await self.app(scope, receive, send)
            return
        identity, reason = await self.state.identify(scope)
        if identity is None:
            self.state.rejected.append(reason)
            challenge = 'Bearer realm="authed-upstream", error="invalid_token"'
            if self.resource_metadata:
                challenge += f', resource_metadata="{self.resource_metadata}"'
            response = JSONResponse({"error": "unauthorized", "reason": reason}, 401, {"WWW-Authenticate": challenge})
            await response(scope, receive, send)
            return
        scope[IDENTITY_KEY] = identity
        self.state.seen.append({**identity, "method": scope.get("method"), "path": path})
        await self.app(scope, receive, send)


def check_env(requirements: list[Requirement]) -> str | None:
    """The env digest for ``whoami``; exits with status 2 when a required variable is missing or wrong."""
    found: str | None = None
    for req in requirements:
        if req.kind != "env":
            continue
        value = os.environ.get(req.name)
        if value is None:
            print(f"authed-upstream: required environment variable {req.name} is missing", file=sys.stderr, flush=True)
            raise SystemExit(2)
        if not req.matches(value):
            print(f"authed-upstream: environment variable {req.name} has the wrong value", file=sys.stderr, flush=True)
            raise SystemExit(2)
        found = found or digest(value)
    return found


def build_server(state: State) -> MCPServer:
    """The ``authed`` server: ``whoami``, ``echo``, and the ``/_seen`` routes."""
    mcp = MCPServer(name="authed", version="0.1.0", log_level="WARNING")

    @mcp.tool(annotations=READ_ONLY, description="The identity this request arrived with (digests, never values).")
    async def whoami(ctx: Context) -> str:
        request = ctx.request_context.request
        scope = getattr(request, "scope", None)
        identity = scope.get(IDENTITY_KEY) if isinstance(scope, dict) else None
        return json.dumps(identity if identity is not None else state.blank(), sort_keys=True)

    @mcp.tool(annotations=READ_ONLY, description="Answer the text.")
    async def echo(text: str) -> str:
        return text

    @mcp.custom_route("/_seen", methods=["GET"])
    async def seen(request: Request) -> JSONResponse:
        return JSONResponse(state.seen)

    @mcp.custom_route("/_rejected", methods=["GET"])
    async def rejected(request: Request) -> JSONResponse:
        return JSONResponse({"count": len(state.rejected), "reasons": state.rejected})

    @mcp.custom_route("/_revoke", methods=["POST"])
    async def revoke(request: Request) -> JSONResponse:
        body = await request.json() if await request.body() else {}
        if isinstance(body, dict) and body.get("all") is True:
            state.refuse_all = True
        state.revoked.update(s["authorization"] for s in state.seen if s.get("authorization"))
        return JSONResponse({"revoked": len(state.revoked), "all": state.refuse_all})

    @mcp.custom_route("/_reset", methods=["POST"])
    async def reset(request: Request) -> JSONResponse:
        state.seen.clear()
        state.rejected.clear()
        state.revoked.clear()
        state.refuse_all = False
        return JSONResponse({"ok": True})

    return mcp


@dataclass
class RunningUpstream:
    """A started HTTP upstream: ``url`` (``http://127.0.0.1:N``), ``mcp_url`` (``/mcp`` or
    ``/sse``), the process (its log is ``proc.read_log()``)."""

    url: str
    mcp_url: str
    proc: Any

    def seen(self) -> list[dict[str, Any]]:
        with httpx.Client(trust_env=False, timeout=5) as http:
            data: list[dict[str, Any]] = http.get(f"{self.url}/_seen").raise_for_status().json()
        return data

    def rejected(self) -> dict[str, Any]:
        with httpx.Client(trust_env=False, timeout=5) as http:
            data: dict[str, Any] = http.get(f"{self.url}/_rejected").raise_for_status().json()
        return data

    def revoke(self, *, everything: bool = False) -> None:
        """Refuse every ``Authorization`` value accepted so far (``everything``: all requests)."""
        with httpx.Client(trust_env=False, timeout=5) as http:
            http.post(f"{self.url}/_revoke", json={"all": everything}).raise_for_status()

    def reset(self) -> None:
        """Clear the lists and the revocations."""
        with httpx.Client(trust_env=False, timeout=5) as http:
            http.post(f"{self.url}/_reset").raise_for_status()


@contextlib.contextmanager
def start_subprocess(
    log_dir: Path,
    require: Sequence[str] = ("none",),
    *,
    transport: str = "streamable-http",
    jwks_url: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    env: Mapping[str, str] | None = None,
    name: str = "authed-upstream",
    port: int | None = None,
) -> Iterator[RunningUpstream]:
    """Run this module over an HTTP transport on ``port`` (default: a free loopback port)
    until the block ends."""
    from tests.support.ports import free_port
    from tests.support.procs import managed_process

    port = port or free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--port", str(port), "--transport", transport]
    for item in require:
        argv += ["--require", item]
    for flag, value in (("--jwks-url", jwks_url), ("--audience", audience), ("--issuer", issuer)):
        if value:
            argv += [flag, value]
    url = f"http://127.0.0.1:{port}"
    path = "/sse" if transport == "sse" else "/mcp"
    with managed_process(name, argv, log_dir=log_dir, env=env, wait_http=f"{url}/_seen", timeout=30) as proc:
        yield RunningUpstream(url, url + path, proc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MCP upstream requiring credentials (tests)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--transport", default="streamable-http", choices=["streamable-http", "sse", "stdio"])
    parser.add_argument("--require", action="append", type=Requirement.parse, default=[])
    parser.add_argument("--jwks-url", help="JWKS of the authorization server (bearer-jwt)")
    parser.add_argument("--audience", help="audience bearer JWTs must carry")
    parser.add_argument("--issuer", help="issuer bearer JWTs must carry; advertised in RFC 9728 metadata")
    args = parser.parse_args(argv)
    requirements: list[Requirement] = [r for r in args.require if r.kind != "none"]
    kinds = {r.kind for r in requirements}
    if args.transport == "stdio" and kinds - {"env"}:
        parser.error("over stdio only env:<VAR> requirements can be checked")
    if "bearer-jwt" in kinds and not args.jwks_url:
        parser.error("--require bearer-jwt needs --jwks-url")
    env_identity = check_env(requirements)
    verifier = JwtVerifier(args.jwks_url, args.audience, args.issuer) if "bearer-jwt" in kinds else None
    state = State(requirements, verifier, env_identity)
    mcp = build_server(state)
    if args.transport == "stdio":
        mcp.run("stdio")
        return
    base = f"http://127.0.0.1:{args.port}"
    if args.issuer:

        @mcp.custom_route("/.well-known/oauth-protected-resource", methods=["GET"])
        async def protected_resource(request: Request) -> JSONResponse:
            return JSONResponse(
                {"resource": base, "authorization_servers": [args.issuer], "bearer_methods_supported": ["header"]}
            )

    app = mcp.sse_app() if args.transport == "sse" else mcp.streamable_http_app()
    metadata = f"{base}/.well-known/oauth-protected-resource" if args.issuer else None
    wrapped = RequireCredentials(app, state, metadata)
    uvicorn.run(
        wrapped, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, timeout_graceful_shutdown=1
    )


if __name__ == "__main__":
    main()
