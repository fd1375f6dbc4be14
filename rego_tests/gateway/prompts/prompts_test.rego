package gateway.prompts_test

import data.gateway.prompts

test_allow_each_recognised_role if {
	prompts.grants == {"granted_by_role_viewer"} with input as _input(["viewer"])
	prompts.grants == {"granted_by_role_operator"} with input as _input(["operator"])
	prompts.grants == {"granted_by_role_admin"} with input as _input(["admin"])
	count(prompts.deny) == 0 with input as _input(["viewer"])
}

test_allow_every_holding_role_is_named if {
	prompts.grants == {
		"granted_by_role_admin",
		"granted_by_role_operator",
		"granted_by_role_viewer",
	} with input as _input(["viewer", "operator", "admin"])
}

test_deny_unrecognised_role if {
	count(prompts.grants) == 0 with input as _input(["guest"])
	prompts.deny == {"no_recognised_role"} with input as _input(["guest"])
}

_input(roles) := {"subject": {"roles": roles}, "prompt": {"name": "incident_report", "arguments": {}}}
