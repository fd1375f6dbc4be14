"""The data plane's view of ``stdio`` and ``legacy_sse`` servers in a routing table (pure, no I/O)."""

from __future__ import annotations

from typing import Any

from gateway.dataplane.projection import compile_projection
from gateway.mcp.stdio import StdioLaunch

TOOL = {"name": "t", "inputSchema": {"type": "object"}}


def _table(*servers: dict[str, Any]) -> dict[str, Any]:
    return {"version": 3, "policy_version": 1, "revision": "p3-pv1", "servers": list(servers)}


def _stdio(name: str, **overrides: Any) -> dict[str, Any]:
    entry = {
        "name": name,
        "transport": "stdio",
        "url": None,
        "description": "",
        "tools": [TOOL],
        "command": "/usr/bin/tool",
        "args": ["--serve"],
        "cwd": None,
        "env": {"API_KEY": "k"},
        "trusted": True,
    }
    return entry | overrides


def test_a_trusted_stdio_server_is_served_under_its_launch_address() -> None:
    projection = compile_projection(_table(_stdio("local")))
    server = projection.servers["local"]
    launch = StdioLaunch("/usr/bin/tool", ("--serve",), None, (("API_KEY", "k"),))
    assert server.launch == launch and server.url == launch.address() and server.url.startswith("stdio:")
    assert server.address.launch == launch and server.address.transport == "stdio"
    assert projection.resolve(None, "local__t") is not None


def test_an_untrusted_or_malformed_stdio_server_is_never_served() -> None:
    table = _table(
        _stdio("untrusted", trusted=False),
        _stdio("unmarked", trusted=None),
        _stdio("nocommand", command=""),
        _stdio("badargs", args="--serve"),
        {"name": "old", "transport": "legacy_sse", "url": "http://h/sse", "description": "", "tools": [TOOL]},
    )
    projection = compile_projection(table)
    assert set(projection.servers) == {"old"}
    assert projection.servers["old"].launch is None and projection.servers["old"].url == "http://h/sse"
    assert set(projection.aggregated) == {"old__t"}
