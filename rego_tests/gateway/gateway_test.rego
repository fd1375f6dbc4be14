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
	} with input as _with_action(_with_roles(fixtures.tool_call_viewer_read_only, ["admin"]), "tasks/list")
}

test_deny_unsupported_action_reported_alone if {
	gateway.decision == {
		"allow": false,
		"reasons": ["unsupported_action"],
		"obligations": {},
	} with input as _with_action(fixtures.tool_call_viewer_write, "tasks/get")
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

test_allow_resource_read_viewer if {
	gateway.decision == {
		"allow": true,
		"reasons": ["granted_by_role_viewer"],
		"obligations": {},
	} with input as fixtures.resource_read_viewer
}

test_deny_resource_read_viewer_internal if {
	gateway.decision == {
		"allow": false,
		"reasons": ["internal_resource_requires_operator"],
		"obligations": {},
	} with input as _with_uri(fixtures.resource_read_viewer, "demo://internal/payroll")
}

test_allow_resource_read_operator_internal if {
	gateway.decision == {
		"allow": true,
		"reasons": ["granted_by_role_operator"],
		"obligations": {},
	} with input as _with_roles(_with_uri(fixtures.resource_read_viewer, "demo://internal/payroll"), ["operator"])
}

test_deny_resource_read_without_a_resource if {
	# the read-only tool that grants the viewer a tools/call grants nothing for another concern
	gateway.decision.allow == false with input as _with_action(
		_with_roles(fixtures.tool_call_viewer_read_only, ["viewer"]),
		"resources/read",
	)
}

test_allow_prompt_get_viewer if {
	gateway.decision == {
		"allow": true,
		"reasons": ["granted_by_role_viewer"],
		"obligations": {},
	} with input as fixtures.prompt_get_viewer
}

test_deny_prompt_get_unrecognised_role if {
	gateway.decision == {
		"allow": false,
		"reasons": ["no_recognised_role"],
		"obligations": {},
	} with input as _with_roles(fixtures.prompt_get_viewer, ["guest"])
}

test_allow_completion_follows_the_resource_rule if {
	gateway.decision == {
		"allow": true,
		"reasons": ["granted_by_role_viewer"],
		"obligations": {},
	} with input as fixtures.completion_resource_viewer
	gateway.decision == {
		"allow": false,
		"reasons": ["internal_resource_requires_operator"],
		"obligations": {},
	} with input as _with_uri(fixtures.completion_resource_viewer, "demo://internal/{id}")
}

test_allow_completion_follows_the_prompt_rule if {
	completion := json.patch(fixtures.prompt_get_viewer, [{"op": "replace", "path": "/action", "value": "completion/complete"}])
	gateway.decision.allow with input as completion
	not gateway.decision.allow with input as _with_roles(completion, ["guest"])
}

test_allow_logging_set_level_operator if {
	gateway.decision == {
		"allow": true,
		"reasons": ["granted_by_role_operator"],
		"obligations": {},
	} with input as fixtures.logging_set_level_operator
}

test_allow_logging_set_level_viewer if {
	# clients such as the MCP Inspector set a level right after initialize
	gateway.decision.allow with input as _with_roles(fixtures.logging_set_level_operator, ["viewer"])
}

test_deny_logging_set_level_unrecognised_role if {
	gateway.decision == {
		"allow": false,
		"reasons": ["no_recognised_role"],
		"obligations": {},
	} with input as _with_roles(fixtures.logging_set_level_operator, ["guest"])
}

test_allow_sampling_operator if {
	gateway.decision == {
		"allow": true,
		"reasons": ["granted_by_role_operator"],
		"obligations": {},
	} with input as fixtures.sampling_operator
}

test_deny_sampling_viewer if {
	gateway.decision == {
		"allow": false,
		"reasons": ["sampling_not_allowed_for_role"],
		"obligations": {},
	} with input as _with_roles(fixtures.sampling_operator, ["viewer"])
}

test_allow_elicitation_viewer if {
	elicit := json.patch(fixtures.sampling_operator, [
		{"op": "replace", "path": "/action", "value": "elicitation/create"},
		{"op": "replace", "path": "/arguments", "value": {"mode": "form"}},
	])
	gateway.decision.allow with input as _with_roles(elicit, ["viewer"])
	not gateway.decision.allow with input as _with_roles(elicit, ["guest"])
}

test_allow_resources_list_matches_resources_read if {
	every uri in ["demo://docs/readme", "demo://internal/payroll"] {
		read := gateway.decision with input as _with_uri(fixtures.resource_read_viewer, uri)
		listed := gateway.decision with input as _with_action(_with_uri(fixtures.resource_read_viewer, uri), "resources/list")
		read == listed
	}
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

_with_uri(doc, uri) := json.patch(doc, [{"op": "replace", "path": "/resource/uri", "value": uri}])

test_allow_resources_subscribe_matches_resources_read if {
	every uri in ["demo://docs/readme", "demo://internal/payroll"] {
		read := gateway.decision with input as _with_uri(fixtures.resource_read_viewer, uri)
		every action in ["resources/subscribe", "resources/unsubscribe"] {
			subscribed := gateway.decision with input as _with_action(_with_uri(fixtures.resource_read_viewer, uri), action)
			read == subscribed
		}
	}
	not gateway.decision.allow with input as _with_action(_with_uri(fixtures.resource_read_viewer, "demo://internal/payroll"), "resources/subscribe")
}

test_allow_ping_for_a_recognised_role if {
	ping := json.patch(fixtures.logging_set_level_operator, [
		{"op": "replace", "path": "/action", "value": "ping"},
		{"op": "replace", "path": "/arguments", "value": {}},
	])
	gateway.decision == {"allow": true, "reasons": ["granted_to_recognised_role"], "obligations": {}} with input as ping
	gateway.decision == {"allow": false, "reasons": ["no_recognised_role"], "obligations": {}} with input as _with_roles(ping, ["guest"])
}

# The policy library (gateway.library.*), configured through data.gateway.rules.

_library_rules := {
	"tool_grants": [{"roles": ["deployer"], "server": "demo", "tools": ["create_ticket"]}],
	"tool_restrictions": [{"server": "demo", "tools": ["get_weather"], "roles": ["operator", "admin"]}],
	"delegation": {"max_depth": 1},
}

test_allow_library_without_configuration_changes_nothing if {
	empty := {
		"tool_grants": [], "tool_restrictions": [], "server_tools": {}, "annotations": {},
		"arguments": [], "time_windows": [], "environments": {}, "delegation": {},
	}
	every name in _call_fixtures {
		without := gateway.decision with input as fixtures[name]
		without == gateway.decision with input as fixtures[name] with data.gateway.rules as empty
	}
	gateway.decision.allow with input as fixtures.tool_call_delegated_agent with data.gateway.rules as empty
}

test_deny_library_refusal_overrides_a_grant if {
	gateway.decision == {
		"allow": false,
		"reasons": ["tool_restricted_to_roles"],
		"obligations": {},
	} with input as fixtures.tool_call_viewer_read_only
		with data.gateway.rules as _library_rules
}

test_deny_library_refusals_join_the_concern_refusals if {
	gateway.decision == {
		"allow": false,
		"reasons": ["delegation_depth_exceeded", "tool_not_read_only", "tool_restricted_to_roles"],
		"obligations": {},
	} with input as _with_annotations(fixtures.tool_call_delegated_agent, {})
		with data.gateway.rules as _library_rules
}

test_deny_library_refusal_of_other_concerns if {
	delegated_ping := object.union(fixtures.tool_call_delegated_agent, {"action": "ping"})
	gateway.decision == {
		"allow": false,
		"reasons": ["delegation_depth_exceeded"],
		"obligations": {},
	} with input as delegated_ping
		with data.gateway.rules as _library_rules
}

test_allow_library_grant_to_an_unrecognised_role if {
	gateway.decision == {
		"allow": true,
		"reasons": ["granted_by_tool_grant"],
		"obligations": {},
	} with input as _with_roles(fixtures.tool_call_viewer_write, ["deployer"])
		with data.gateway.rules as _library_rules
}

test_allow_unsupported_action_reasons_stay_first if {
	gateway.decision == {
		"allow": false,
		"reasons": ["unsupported_action"],
		"obligations": {},
	} with input as _with_action(fixtures.tool_call_delegated_agent, "tools/unknown")
		with data.gateway.rules as _library_rules
}
