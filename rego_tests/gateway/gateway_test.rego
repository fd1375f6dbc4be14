package gateway_test

import data.fixtures
import data.gateway

test_allow_tool_call_viewer_read_only if {
	gateway.decision == {
		"allow": true,
		"reasons": ["granted_by_role_viewer"],
		"obligations": {},
	} with input as fixtures.tool_call_viewer_read_only
}

test_deny_tool_call_viewer_write if {
	gateway.decision == {
		"allow": false,
		"reasons": ["tool_not_read_only"],
		"obligations": {},
	} with input as fixtures.tool_call_viewer_write
}

test_deny_tool_call_operator_destructive if {
	gateway.decision == {
		"allow": false,
		"reasons": ["destructive_tool_requires_admin"],
		"obligations": {},
	} with input as fixtures.tool_call_operator_destructive
}

test_allow_tool_call_operator_write if {
	gateway.decision == {
		"allow": true,
		"reasons": ["granted_by_role_operator"],
		"obligations": {},
	} with input as _with_roles(fixtures.tool_call_viewer_write, ["operator"])
}

test_allow_tool_call_admin_destructive if {
	gateway.decision == {
		"allow": true,
		"reasons": ["granted_by_role_admin"],
		"obligations": {},
	} with input as _with_roles(fixtures.tool_call_operator_destructive, ["admin"])
}

test_allow_tool_call_reasons_sorted_across_roles if {
	gateway.decision == {
		"allow": true,
		"reasons": ["granted_by_role_admin", "granted_by_role_operator", "granted_by_role_viewer"],
		"obligations": {},
	} with input as _with_roles(fixtures.tool_call_viewer_read_only, ["viewer", "operator", "admin"])
}

test_deny_tool_call_reasons_sorted_across_roles if {
	gateway.decision == {
		"allow": false,
		"reasons": ["destructive_tool_requires_admin", "tool_not_read_only"],
		"obligations": {},
	} with input as _with_roles(fixtures.tool_call_operator_destructive, ["viewer", "operator"])
}

test_deny_tool_call_no_recognised_role if {
	gateway.decision == {
		"allow": false,
		"reasons": ["no_recognised_role"],
		"obligations": {},
	} with input as _with_roles(fixtures.tool_call_viewer_read_only, ["guest"])
}

test_deny_tool_call_no_roles if {
	gateway.decision == {
		"allow": false,
		"reasons": ["no_recognised_role"],
		"obligations": {},
	} with input as _with_roles(fixtures.tool_call_viewer_read_only, [])
}

test_deny_tool_call_viewer_empty_annotations if {
	gateway.decision == {
		"allow": false,
		"reasons": ["tool_not_read_only"],
		"obligations": {},
	} with input as _with_annotations(fixtures.tool_call_viewer_read_only, {})
}

test_deny_unsupported_action_even_for_admin if {
	gateway.decision == {
		"allow": false,
		"reasons": ["unsupported_action"],
		"obligations": {},
	} with input as _with_action(_with_roles(fixtures.tool_call_viewer_read_only, ["admin"]), "resources/read")
}

test_deny_unsupported_action_reported_alone if {
	gateway.decision == {
		"allow": false,
		"reasons": ["unsupported_action"],
		"obligations": {},
	} with input as _with_action(fixtures.tool_call_viewer_write, "prompts/get")
}

test_allow_tools_list_matches_tools_call if {
	every name in _call_fixtures {
		call := gateway.decision with input as fixtures[name]
		listed := gateway.decision with input as _with_action(fixtures[name], "tools/list")
		call == listed
	}
}

test_deny_empty_input if {
	gateway.decision == {
		"allow": false,
		"reasons": ["unsupported_action"],
		"obligations": {},
	} with input as {}
}

_call_fixtures := {
	"tool_call_viewer_read_only",
	"tool_call_viewer_write",
	"tool_call_operator_destructive",
}

_with_roles(doc, roles) := json.patch(doc, [{"op": "replace", "path": "/subject/roles", "value": roles}])

_with_annotations(doc, annotations) := json.patch(
	doc,
	[{"op": "replace", "path": "/tool/annotations", "value": annotations}],
)

_with_action(doc, action) := object.union(doc, {"action": action})
