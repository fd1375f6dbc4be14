package gateway.library.tool_access_test

import data.gateway.library.tool_access

rules := {
	"tool_grants": [{"roles": ["deployer"], "server": "ci", "tools": ["deploy*"]}],
	"tool_restrictions": [{"server": "demo", "tools": ["search_docs"], "roles": ["operator", "admin"]}],
	"server_tools": {"github": ["list_*", "get_issue"]},
}

test_allow_nothing_without_configuration if {
	count(tool_access.grants) == 0 with input as _call(["viewer"], "demo", "search_docs")
	count(tool_access.deny) == 0 with input as _call(["viewer"], "demo", "search_docs")
}

test_allow_grant_to_an_unrecognised_role if {
	tool_access.grants == {"granted_by_tool_grant"} with input as _call(["deployer"], "ci", "deploy_prod")
		with data.gateway.rules as rules
}

test_deny_grant_needs_role_server_and_tool if {
	count(tool_access.grants) == 0 with input as _call(["viewer"], "ci", "deploy_prod") with data.gateway.rules as rules
	count(tool_access.grants) == 0 with input as _call(["deployer"], "demo", "deploy_prod")
		with data.gateway.rules as rules
	count(tool_access.grants) == 0 with input as _call(["deployer"], "ci", "rollback") with data.gateway.rules as rules
}

test_deny_grant_only_for_tools if {
	count(tool_access.grants) == 0 with input as object.union(_call(["deployer"], "ci", "deploy"), {"action": "ping"})
		with data.gateway.rules as rules
}

test_deny_restricted_tool_to_other_roles if {
	tool_access.deny == {"tool_restricted_to_roles"} with input as _call(["viewer"], "demo", "search_docs")
		with data.gateway.rules as rules
}

test_deny_restriction_without_roles_to_everyone if {
	tool_access.deny == {"tool_restricted_to_roles"} with input as _call(["admin"], "demo", "echo")
		with data.gateway.rules as {"tool_restrictions": [{"tools": ["echo"]}]}
}

test_allow_restricted_tool_to_its_roles if {
	count(tool_access.deny) == 0 with input as _call(["viewer", "operator"], "demo", "search_docs")
		with data.gateway.rules as rules
}

test_allow_restriction_of_another_server if {
	count(tool_access.deny) == 0 with input as _call(["viewer"], "other", "search_docs") with data.gateway.rules as rules
}

test_allow_tool_on_server_allow_list if {
	count(tool_access.deny) == 0 with input as _call(["viewer"], "github", "list_repos") with data.gateway.rules as rules
	count(tool_access.deny) == 0 with input as _call(["viewer"], "github", "get_issue") with data.gateway.rules as rules
}

test_deny_tool_missing_from_server_allow_list if {
	tool_access.deny == {"tool_not_allowed_on_server"} with input as _call(["admin"], "github", "delete_repo")
		with data.gateway.rules as rules
}

test_allow_server_without_allow_list if {
	count(tool_access.deny) == 0 with input as _call(["admin"], "ci", "delete_repo") with data.gateway.rules as rules
}

_call(roles, server, tool) := {
	"action": "tools/call",
	"subject": {"roles": roles},
	"server": {"name": server},
	"tool": {"name": tool, "annotations": {}},
}
