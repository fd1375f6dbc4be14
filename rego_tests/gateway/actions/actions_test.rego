package gateway.actions_test

import data.gateway.actions

test_allow_tools_call if {
	count(actions.deny) == 0 with input as {"action": "tools/call"}
	actions.concern == "tools" with input as {"action": "tools/call"}
}

test_allow_tools_list if {
	count(actions.deny) == 0 with input as {"action": "tools/list"}
}

test_allow_every_governed_method_has_its_concern if {
	expected := {
		"tools/list": "tools",
		"tools/call": "tools",
		"resources/list": "resources",
		"resources/templates/list": "resources",
		"resources/read": "resources",
		"resources/subscribe": "resources",
		"resources/unsubscribe": "resources",
		"prompts/list": "prompts",
		"prompts/get": "prompts",
		"logging/setLevel": "logging",
		"ping": "session",
		"sampling/createMessage": "client_requests",
		"elicitation/create": "client_requests",
		"roots/list": "client_requests",
	}
	every action, concern in expected {
		actions.concern == concern with input as {"action": action}
		count(actions.deny) == 0 with input as {"action": action}
	}
}

test_allow_supported_names_every_governed_method if {
	actions.supported == {
		"tools/list", "tools/call",
		"resources/list", "resources/templates/list", "resources/read",
		"resources/subscribe", "resources/unsubscribe",
		"prompts/list", "prompts/get",
		"completion/complete", "logging/setLevel", "ping",
		"sampling/createMessage", "elicitation/create", "roots/list",
	}
}

test_allow_completion_of_a_resource_template_is_a_resource_concern if {
	doc := {"action": "completion/complete", "resource": {"uri": "demo://weather/{city}", "server": "demo"}}
	actions.concern == "resources" with input as doc
	count(actions.deny) == 0 with input as doc
}

test_allow_completion_of_a_prompt_is_a_prompt_concern if {
	doc := {"action": "completion/complete", "prompt": {"name": "p", "arguments": {}}}
	actions.concern == "prompts" with input as doc
}

test_deny_completion_naming_nothing if {
	actions.deny == {"unsupported_action"} with input as {"action": "completion/complete"}
}

test_deny_completion_naming_both_a_prompt_and_a_resource if {
	doc := {
		"action": "completion/complete",
		"prompt": {"name": "p", "arguments": {}},
		"resource": {"uri": "u", "server": "demo"},
	}
	actions.deny == {"unsupported_action"} with input as doc
}

test_deny_other_action if {
	actions.deny == {"unsupported_action"} with input as {"action": "tasks/list"}
	actions.deny == {"unsupported_action"} with input as {"action": "tasks/get"}
}

test_deny_missing_action if {
	actions.deny == {"unsupported_action"} with input as {}
}

test_deny_action_in_other_case if {
	actions.deny == {"unsupported_action"} with input as {"action": "Tools/Call"}
}
