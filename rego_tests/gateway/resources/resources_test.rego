package gateway.resources_test

import data.gateway.resources

test_allow_viewer_public_resource if {
	resources.grants == {"granted_by_role_viewer"} with input as _input(["viewer"], "demo://docs/readme")
	count(resources.deny) == 0 with input as _input(["viewer"], "demo://docs/readme")
}

test_allow_operator_and_admin_internal_resource if {
	resources.grants == {"granted_by_role_operator"} with input as _input(["operator"], "demo://internal/payroll")
	resources.grants == {"granted_by_role_admin"} with input as _input(["admin"], "demo://internal/payroll")
	count(resources.deny) == 0 with input as _input(["operator"], "demo://internal/payroll")
}

test_deny_viewer_internal_resource if {
	count(resources.grants) == 0 with input as _input(["viewer"], "demo://internal/payroll")
	resources.deny == {"internal_resource_requires_operator"} with input as _input(["viewer"], "demo://internal/payroll")
}

test_deny_viewer_internal_template_and_deeper_segment if {
	every uri in ["demo://internal/{id}", "file:///srv/internal/notes.txt", "internal", "x/internal"] {
		resources.deny == {"internal_resource_requires_operator"} with input as _input(["viewer"], uri)
	}
}

test_allow_viewer_uri_merely_containing_internal if {
	every uri in ["demo://docs/internalise", "demo://internals/x", "demo://docs/my-internal"] {
		resources.grants == {"granted_by_role_viewer"} with input as _input(["viewer"], uri)
	}
}

test_allow_every_holding_role_is_named if {
	resources.grants == {
		"granted_by_role_admin",
		"granted_by_role_operator",
		"granted_by_role_viewer",
	} with input as _input(["viewer", "operator", "admin"], "demo://docs/readme")
}

test_deny_operator_grant_hides_viewer_refusal if {
	count(resources.deny) == 0 with input as _input(["viewer", "operator"], "demo://internal/payroll")
}

test_deny_viewer_request_naming_no_resource if {
	count(resources.grants) == 0 with input as {"subject": {"roles": ["viewer"]}}
	resources.deny == {"internal_resource_requires_operator"} with input as {"subject": {"roles": ["viewer"]}}
}

test_deny_unrecognised_role if {
	count(resources.grants) == 0 with input as _input(["guest"], "demo://docs/readme")
	resources.deny == {"no_recognised_role"} with input as _input(["guest"], "demo://docs/readme")
}

_input(roles, uri) := {"subject": {"roles": roles}, "resource": {"uri": uri, "server": "demo"}}
