package gateway_runtime.main_test

import data.fixtures
import data.gateway_runtime.main

test_allow_call_carries_decision_and_revision if {
	main.call == {
		"revision": "p3-pv2",
		"decision": {"allow": true, "reasons": ["granted_by_role_viewer"], "obligations": {}},
	} with input as fixtures.tool_call_viewer_read_only
		with data.gateway_runtime.projection as _projection
}

test_deny_call_carries_deny_decision if {
	main.call == {
		"revision": "p3-pv2",
		"decision": {"allow": false, "reasons": ["destructive_tool_requires_admin"], "obligations": {}},
	} with input as fixtures.tool_call_operator_destructive
		with data.gateway_runtime.projection as _projection
}

test_deny_call_revision_unknown_without_projection if {
	main.call == {
		"revision": "unknown",
		"decision": {"allow": false, "reasons": ["tool_not_read_only"], "obligations": {}},
	} with input as fixtures.tool_call_viewer_write
}

test_deny_call_revision_unknown_when_not_a_string if {
	main.call.revision == "unknown" with input as fixtures.tool_call_viewer_write
		with data.gateway_runtime.projection as {"revision": 3}
}

test_deny_call_without_policy_has_no_decision_key if {
	main.call == {"revision": "p3-pv2"} with input as fixtures.tool_call_viewer_read_only
		with data.gateway_runtime.projection as _projection
		with data.gateway as {}
}

test_deny_call_passes_malformed_decision_through_verbatim if {
	# Validation is the gateway's job (parse_decision): malformed is deny there.
	main.call == {"revision": "unknown", "decision": "allow"} with input as fixtures.tool_call_viewer_read_only
		with data.gateway.decision as "allow"
}

test_allow_list_viewer_fixture if {
	main.list == {"revision": "p3-pv2", "allowed": ["demo__get_weather"]} with input as fixtures.tool_list_viewer
		with data.gateway_runtime.projection as _projection
}

test_allow_list_operator if {
	main.list == {
		"revision": "unknown",
		"allowed": ["demo__create_ticket", "demo__get_weather"],
	} with input as _with_roles(fixtures.tool_list_viewer, ["operator"])
}

test_allow_list_admin_sorted if {
	main.list == {
		"revision": "unknown",
		"allowed": ["demo__create_ticket", "demo__delete_record", "demo__get_weather"],
	} with input as _with_roles(fixtures.tool_list_viewer, ["admin"])
}

test_allow_list_agrees_with_call if {
	# a tool is listed exactly when the same caller may call it
	every candidate in fixtures.tool_list_viewer.candidates {
		call_input := object.union(
			fixtures.tool_call_viewer_read_only,
			{"server": candidate.server, "tool": candidate.tool},
		)
		allowed := main.call.decision.allow with input as call_input
		listed := candidate.key in main.list.allowed with input as fixtures.tool_list_viewer
		allowed == listed
	}
}

test_deny_list_without_policy_lists_nothing if {
	main.list == {"revision": "unknown", "allowed": []} with input as fixtures.tool_list_viewer
		with data.gateway as {}
}

test_deny_list_non_boolean_allow_lists_nothing if {
	every allow in ["true", 1, {"x": true}, [true], null] {
		main.list.allowed == [] with input as fixtures.tool_list_viewer
			with data.gateway.decision as {"allow": allow, "reasons": [], "obligations": {}}
	}
}

test_allow_list_exactly_true_allow_lists_all if {
	main.list.allowed == [
		"demo__create_ticket",
		"demo__delete_record",
		"demo__get_weather",
	] with input as fixtures.tool_list_viewer
		with data.gateway.decision as {"allow": true, "reasons": [], "obligations": {}}
}

test_deny_list_without_candidates_lists_nothing if {
	without_candidates := object.remove(fixtures.tool_list_viewer, {"candidates"})
	main.list == {"revision": "unknown", "allowed": []} with input as without_candidates
}

test_deny_list_skips_incomplete_candidates if {
	main.list.allowed == ["demo__get_weather"] with input as json.patch(
		_with_roles(fixtures.tool_list_viewer, ["admin"]),
		[
			{"op": "remove", "path": "/candidates/2/tool"},
			{"op": "remove", "path": "/candidates/1/server"},
		],
	)
}

test_allow_list_resources_by_uri if {
	main.list == {
		"revision": "p3-pv2",
		"allowed": ["mcp-gw://demo/demo://docs/readme"],
	} with input as fixtures.resource_list_viewer
		with data.gateway_runtime.projection as _projection
	main.list.allowed == [
		"mcp-gw://demo/demo://docs/readme",
		"mcp-gw://demo/demo://internal/payroll",
	] with input as _with_roles(fixtures.resource_list_viewer, ["operator"])
}

test_allow_list_resource_templates_judges_the_resource if {
	templates := object.union(fixtures.resource_list_viewer, {"action": "resources/templates/list"})
	main.list.allowed == ["mcp-gw://demo/demo://docs/readme"] with input as templates
}

test_allow_list_prompts if {
	main.list.allowed == ["demo__incident_report", "demo__weather_brief"] with input as fixtures.prompt_list_viewer
	main.list.allowed == [] with input as _with_roles(fixtures.prompt_list_viewer, ["guest"])
}

test_allow_list_resources_agrees_with_read if {
	every candidate in fixtures.resource_list_viewer.candidates {
		read_input := object.union(fixtures.resource_read_viewer, {"resource": candidate.resource})
		allowed := main.call.decision.allow with input as read_input
		listed := candidate.key in main.list.allowed with input as fixtures.resource_list_viewer
		allowed == listed
	}
}

test_deny_list_candidate_without_the_listed_member if {
	# a resources/list candidate is judged on its resource; a tool in its place lists nothing
	tools_as_resources := object.union(fixtures.tool_list_viewer, {"action": "resources/list"})
	main.list.allowed == [] with input as _with_roles(tools_as_resources, ["admin"])
}

test_deny_list_for_an_action_that_is_not_a_list if {
	main.list.allowed == [] with input as object.union(
		_with_roles(fixtures.tool_list_viewer, ["admin"]),
		{"action": "tools/call"},
	)
}

_projection := {"version": 3, "policy_version": 2, "revision": "p3-pv2"}

_with_roles(doc, roles) := json.patch(doc, [{"op": "replace", "path": "/subject/roles", "value": roles}])
