package gateway.library_test

import data.gateway.library

test_allow_holds_any_role if {
	library.holds_any(["operator", "admin"]) with input as {"subject": {"roles": ["viewer", "admin"]}}
}

test_deny_holds_none_of_the_roles if {
	not library.holds_any(["operator", "admin"]) with input as {"subject": {"roles": ["viewer"]}}
	not library.holds_any([]) with input as {"subject": {"roles": ["viewer"]}}
}

test_allow_tool_matches_server_and_tool_globs if {
	library.tool_matches({"server": "de*", "tools": ["echo", "get_*"]}) with input as _tool("demo", "get_weather")
	library.tool_matches({"tools": ["*"]}) with input as _tool("demo", "a.b/c")
}

test_deny_tool_matches_other_server_or_tool if {
	not library.tool_matches({"server": "github", "tools": ["*"]}) with input as _tool("demo", "echo")
	not library.tool_matches({"tools": ["get_*"]}) with input as _tool("demo", "echo")
}

_tool(server, tool) := {"server": {"name": server}, "tool": {"name": tool}}
