package gateway.roles_test

import data.gateway.roles

test_allow_each_recognised_role_is_held if {
	every role in {"admin", "operator", "viewer"} {
		roles.held with input as {"subject": {"roles": ["guest", role]}}
	}
}

test_deny_unrecognised_roles_are_not_held if {
	not roles.held with input as {"subject": {"roles": ["guest", "Admin"]}}
	not roles.held with input as {"subject": {"roles": []}}
	not roles.held with input as {}
}
