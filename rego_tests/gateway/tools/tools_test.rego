package gateway.tools_test

import data.gateway.tools

test_allow_admin_destructive_tool if {
	tools.grants == {"granted_by_role_admin"} with input as _input(["admin"], {"destructiveHint": true})
	count(tools.deny) == 0 with input as _input(["admin"], {"destructiveHint": true})
}

test_allow_operator_write_tool if {
	tools.grants == {"granted_by_role_operator"} with input as _input(["operator"], {"readOnlyHint": false})
	count(tools.deny) == 0 with input as _input(["operator"], {"readOnlyHint": false})
}

test_allow_operator_tool_without_annotations if {
	tools.grants == {"granted_by_role_operator"} with input as _input(["operator"], {})
}

test_allow_operator_tool_with_non_boolean_destructive_hint if {
	tools.grants == {"granted_by_role_operator"} with input as _input(["operator"], {"destructiveHint": "true"})
}

test_allow_viewer_read_only_tool if {
	tools.grants == {"granted_by_role_viewer"} with input as _input(["viewer"], {"readOnlyHint": true})
	count(tools.deny) == 0 with input as _input(["viewer"], {"readOnlyHint": true})
}

test_allow_every_holding_role_is_named if {
	roles := ["viewer", "operator", "admin"]
	tools.grants == {
		"granted_by_role_admin",
		"granted_by_role_operator",
		"granted_by_role_viewer",
	} with input as _input(roles, {"readOnlyHint": true})
}

test_deny_viewer_tool_without_read_only_hint if {
	count(tools.grants) == 0 with input as _input(["viewer"], {})
	tools.deny == {"tool_not_read_only"} with input as _input(["viewer"], {})
}

test_deny_viewer_tool_with_non_boolean_read_only_hint if {
	tools.deny == {"tool_not_read_only"} with input as _input(["viewer"], {"readOnlyHint": "true"})
}

test_deny_operator_destructive_tool if {
	count(tools.grants) == 0 with input as _input(["operator"], {"destructiveHint": true})
	tools.deny == {"destructive_tool_requires_admin"} with input as _input(["operator"], {"destructiveHint": true})
}

test_deny_viewer_and_operator_destructive_write_tool if {
	tools.deny == {
		"destructive_tool_requires_admin",
		"tool_not_read_only",
	} with input as _input(["viewer", "operator"], {"destructiveHint": true})
}

test_deny_unrecognised_role if {
	count(tools.grants) == 0 with input as _input(["guest", "Admin"], {"readOnlyHint": true})
	tools.deny == {"no_recognised_role"} with input as _input(["guest", "Admin"], {"readOnlyHint": true})
}

test_deny_no_roles if {
	tools.deny == {"no_recognised_role"} with input as _input([], {"readOnlyHint": true})
}

test_deny_recognised_role_denies_only_when_nothing_grants if {
	# operator grants a write tool, so the viewer's refusal is not reported
	count(tools.deny) == 0 with input as _input(["viewer", "operator"], {"readOnlyHint": false})
}

_input(roles, annotations) := {
	"subject": {"roles": roles},
	"tool": {"name": "some_tool", "annotations": annotations},
}
