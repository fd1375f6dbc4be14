package gateway.library.annotations_test

import data.gateway.library.annotations

rules := {"annotations": {"open_world_roles": ["operator"], "non_idempotent_roles": ["admin"]}}

closed_idempotent := {"openWorldHint": false, "idempotentHint": true}

test_allow_nothing_without_configuration if {
	count(annotations.deny) == 0 with input as _list(["viewer"], {})
}

test_deny_open_world_tool_to_other_roles if {
	annotations.deny == {"open_world_tool_requires_role"} with input as _list(["viewer"], {"openWorldHint": true, "idempotentHint": true})
		with data.gateway.rules as rules
}

test_deny_unannotated_tool_is_open_world_and_not_idempotent if {
	annotations.deny == {
		"non_idempotent_tool_requires_role",
		"open_world_tool_requires_role",
	} with input as _list(["viewer"], {})
		with data.gateway.rules as rules
}

test_allow_open_world_tool_to_its_roles if {
	count(annotations.deny) == 0 with input as _list(["operator", "admin"], {})
		with data.gateway.rules as rules
}

test_allow_closed_idempotent_tool if {
	count(annotations.deny) == 0 with input as _list(["viewer"], closed_idempotent)
		with data.gateway.rules as rules
}

test_deny_only_tools if {
	count(annotations.deny) == 0 with input as object.union(_list(["viewer"], {}), {"action": "prompts/get"})
		with data.gateway.rules as rules
}

_list(roles, annotations) := {
	"action": "tools/list",
	"subject": {"roles": roles},
	"server": {"name": "demo"},
	"tool": {"name": "fetch", "annotations": annotations},
}
