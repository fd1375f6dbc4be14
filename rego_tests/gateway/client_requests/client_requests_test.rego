package gateway.client_requests_test

import data.gateway.client_requests

test_sampling_only_for_admins_and_operators if {
	client_requests.grants == {"granted_by_role_admin"} with input as _input("sampling/createMessage", ["admin"])
	client_requests.grants == {"granted_by_role_operator"} with input as _input("sampling/createMessage", ["operator"])
	count(client_requests.deny) == 0 with input as _input("sampling/createMessage", ["operator"])
	count(client_requests.grants) == 0 with input as _input("sampling/createMessage", ["viewer"])
	client_requests.deny == {"sampling_not_allowed_for_role"} with input as _input("sampling/createMessage", ["viewer"])
}

test_elicitation_and_roots_for_every_recognised_role if {
	every action in ["elicitation/create", "roots/list"] {
		client_requests.grants == {"granted_by_role_viewer"} with input as _input(action, ["viewer"])
		client_requests.grants == {"granted_by_role_operator"} with input as _input(action, ["operator"])
		client_requests.grants == {"granted_by_role_admin"} with input as _input(action, ["admin"])
		count(client_requests.deny) == 0 with input as _input(action, ["viewer"])
	}
}

test_deny_unrecognised_role if {
	every action in ["sampling/createMessage", "elicitation/create", "roots/list"] {
		count(client_requests.grants) == 0 with input as _input(action, ["guest"])
		client_requests.deny == {"no_recognised_role"} with input as _input(action, ["guest"])
	}
}

_input(action, roles) := {"action": action, "subject": {"roles": roles}, "arguments": {}}
