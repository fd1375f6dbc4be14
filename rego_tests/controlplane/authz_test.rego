package gateway.controlplane.authz_test

import data.gateway.controlplane.authz

actor(roles) := {"subject": "alice", "issuer": "https://idp", "name": "alice@https://idp", "roles": roles, "bootstrap": false}

req(action) := {"method": "POST", "path": "/v1/x", "action": action}

test_a_role_grants_its_actions if {
	authz.decision.allow with input as {"actor": actor(["policy_author"]), "request": req("policies.upload")}
	authz.decision.allow with input as {"actor": actor(["auditor"]), "request": req("audit.read")}
	authz.decision.allow with input as {"actor": actor(["auditor"]), "request": req("audit.export")}
	authz.decision.allow with input as {"actor": actor(["auditor"]), "request": req("audit.verify")}
	authz.decision.allow with input as {"actor": actor(["operator"]), "request": req("projection.read")}
	authz.decision.allow with input as {"actor": actor(["registry_editor"]), "request": req("servers.register")}
	authz.decision.allow with input as {"actor": actor(["admin"]), "request": req("roles.write")}
}

test_a_role_does_not_grant_another_roles_actions if {
	d := authz.decision with input as {"actor": actor(["policy_author"]), "request": req("policies.approve")}
	not d.allow
	d.reasons == [`none of the roles ["policy_author"] grants policies.approve`]
	not authz.decision.allow with input as {"actor": actor(["auditor"]), "request": req("policies.upload")}
	not authz.decision.allow with input as {"actor": actor(["operator"]), "request": req("audit.read")}
	not authz.decision.allow with input as {"actor": actor(["operator"]), "request": req("audit.export")}
	not authz.decision.allow with input as {"actor": actor(["auditor"]), "request": req("audit.retention")}
	not authz.decision.allow with input as {"actor": actor(["admin"]), "request": req("policies.approve")}
}

test_no_roles_no_access if {
	not authz.decision.allow with input as {"actor": actor([]), "request": req("scope.read")}
}

test_an_unknown_action_is_refused if {
	not authz.decision.allow with input as {"actor": actor(["admin"]), "request": req("unknown")}
}

test_an_approver_approves_what_someone_else_wrote if {
	authz.decision.allow with input as {
		"actor": actor(["approver"]),
		"request": req("policies.approve"),
		"resource": {"kind": "policy_version", "id": "7", "author": "bob@https://idp"},
	}
}

test_self_approval_is_refused_with_the_four_eyes_reason if {
	d := authz.decision with input as {
		"actor": actor(["approver", "policy_author"]),
		"request": req("policies.approve"),
		"resource": {"kind": "policy_version", "id": "7", "author": "alice@https://idp"},
	}
	not d.allow
	d.reasons == ["four_eyes: policy_version 7 was authored by alice@https://idp, who cannot approve it"]
	not authz.decision.allow with input as {
		"actor": actor(["approver"]),
		"request": req("servers.approve"),
		"resource": {"kind": "server", "id": "github", "author": "alice@https://idp"},
	}
	d2 := authz.decision with input as {
		"actor": actor(["approver"]),
		"request": req("servers.approve"),
		"resource": {"kind": "api_source", "id": "petstore", "author": "alice@https://idp"},
	}
	d2.reasons == ["four_eyes: api_source petstore was authored by alice@https://idp, who cannot approve it"]
}

test_the_bootstrap_token_is_exempt_from_four_eyes if {
	authz.decision.allow with input as {
		"actor": {
			"subject": "admin", "issuer": "urn:gateway:bootstrap-token", "name": "admin",
			"roles": ["approver"], "bootstrap": true,
		},
		"request": req("policies.approve"),
		"resource": {"kind": "policy_version", "id": "7", "author": "admin"},
	}
}
