package gateway.session_test

import data.gateway.session

test_allow_a_recognised_role if {
	every role in ["admin", "operator", "viewer"] {
		session.grants == {"granted_to_recognised_role"} with input as {"action": "ping", "subject": {"roles": [role]}}
		count(session.deny) == 0 with input as {"action": "ping", "subject": {"roles": [role]}}
	}
}

test_deny_unrecognised_role if {
	count(session.grants) == 0 with input as {"action": "ping", "subject": {"roles": ["guest"]}}
	session.deny == {"no_recognised_role"} with input as {"action": "ping", "subject": {"roles": ["guest"]}}
}
