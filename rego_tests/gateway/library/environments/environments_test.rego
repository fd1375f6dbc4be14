package gateway.library.environments_test

import data.gateway.library.environments

rules := {"environments": {
	"prod": {
		"destructive_roles": ["admin"],
		"write_roles": ["admin", "operator"],
		"refused_tools": [{"server": "demo", "tools": ["debug_*"]}],
	},
	"staging": {},
}}

test_allow_nothing_without_configuration if {
	count(environments.deny) == 0 with input as _call("prod", ["viewer"], "delete_record", {"destructiveHint": true})
}

test_deny_destructive_tool_in_prod_to_operator if {
	environments.deny == {"destructive_tool_refused_in_environment"} with input as _call("prod", ["operator"], "delete_record", {"destructiveHint": true})
		with data.gateway.rules as rules
}

test_allow_destructive_tool_in_prod_to_admin if {
	count(environments.deny) == 0 with input as _call("prod", ["admin"], "delete_record", {"destructiveHint": true})
		with data.gateway.rules as rules
}

test_deny_write_tool_in_prod_to_viewer if {
	environments.deny == {"write_tool_refused_in_environment"} with input as _call("prod", ["viewer"], "create_ticket", {"readOnlyHint": false})
		with data.gateway.rules as rules
}

test_allow_read_only_tool_in_prod if {
	count(environments.deny) == 0 with input as _call("prod", ["viewer"], "echo", {"readOnlyHint": true})
		with data.gateway.rules as rules
}

test_deny_refused_tool_in_prod_to_everyone if {
	environments.deny == {"tool_refused_in_environment"} with input as _call("prod", ["admin"], "debug_dump", {"readOnlyHint": true})
		with data.gateway.rules as rules
}

test_allow_every_tool_in_other_environments if {
	count(environments.deny) == 0 with input as _call("staging", ["viewer"], "debug_dump", {"destructiveHint": true})
		with data.gateway.rules as rules
	count(environments.deny) == 0 with input as _call("dev", ["viewer"], "debug_dump", {"destructiveHint": true})
		with data.gateway.rules as rules
}

test_allow_non_tool_actions if {
	count(environments.deny) == 0 with input as object.union(
		_call("prod", ["viewer"], "debug_dump", {"destructiveHint": true}),
		{"action": "resources/read"},
	)
		with data.gateway.rules as rules
}

_call(environment, roles, tool, annotations) := {
	"environment": environment,
	"action": "tools/call",
	"subject": {"roles": roles},
	"server": {"name": "demo"},
	"tool": {"name": tool, "annotations": annotations},
}
