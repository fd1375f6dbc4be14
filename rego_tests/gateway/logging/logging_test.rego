package gateway.logging_test

import data.gateway.logging

test_allow_each_recognised_role if {
	logging.grants == {"granted_by_role_operator"} with input as _input(["operator"])
	logging.grants == {"granted_by_role_admin"} with input as _input(["admin"])
	logging.grants == {"granted_by_role_viewer"} with input as _input(["viewer"])
	count(logging.deny) == 0 with input as _input(["viewer"])
}

test_allow_every_holding_role_is_named if {
	logging.grants == {
		"granted_by_role_admin",
		"granted_by_role_operator",
		"granted_by_role_viewer",
	} with input as _input(["viewer", "operator", "admin"])
}

test_deny_unrecognised_role if {
	count(logging.grants) == 0 with input as _input(["guest"])
	logging.deny == {"no_recognised_role"} with input as _input(["guest"])
}

_input(roles) := {"subject": {"roles": roles}, "arguments": {"level": "debug"}}
