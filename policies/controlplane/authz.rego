# METADATA
# title: Control-plane authorization
# description: >-
#   Who may do what on the admin API. The control plane asks its own OPA for
#   data.gateway.controlplane.authz.decision before serving every admin request,
#   and again with the resource for approvals (four-eyes). Input: actor (subject,
#   issuer, roles, bootstrap), request (method, path, action) and, for approvals,
#   resource (kind, id, author). Result: {"allow": bool, "reasons": [string]}.
#   Versioned with the gateway and tested in rego_tests/controlplane.
# schemas:
#   - input: schema.controlplane_authz_input
package gateway.controlplane.authz

# METADATA
# description: >-
#   Actions each role grants. "*.read" style names are exact action names; the
#   bootstrap admin token holds every role.
grants := {
	"admin": {
		"scope.read", "settings.read", "settings.write", "roles.read", "roles.write",
		"credentials.read", "credentials.write", "api_keys.read", "api_keys.write",
		"servers.read", "policies.read", "projection.read", "audit.read", "audit.export",
		"audit.verify", "audit.retention",
	},
	"policy_author": {"scope.read", "policies.read", "policies.upload", "policies.test", "policies.replay"},
	"approver": {
		"scope.read", "policies.read", "policies.approve", "policies.replay",
		"servers.read", "servers.approve", "projection.read",
	},
	"registry_editor": {"scope.read", "servers.read", "servers.register", "credentials.read", "credentials.bind"},
	"auditor": {"scope.read", "audit.read", "audit.export", "audit.verify", "policies.read", "servers.read"},
	"operator": {"scope.read", "projection.read", "servers.read"},
}

# METADATA
# description: Approval actions, held to four-eyes (the approver is not the author).
approvals := {"policies.approve", "servers.approve"}

# METADATA
# description: True when one of the actor's roles grants the requested action.
granted if {
	some role in input.actor.roles
	input.request.action in grants[role]
}

# METADATA
# description: True when an approval's resource was authored by the actor itself.
self_approval if {
	input.request.action in approvals
	input.resource.author == input.actor.name
	not input.actor.bootstrap
}

# METADATA
# description: Why the request is refused (empty when it is allowed).
reasons contains msg if {
	not granted
	msg := sprintf("none of the roles %v grants %s", [sort_roles, input.request.action])
}

reasons contains msg if {
	self_approval
	msg := sprintf(
		"four_eyes: %s %s was authored by %s, who cannot approve it",
		[input.resource.kind, input.resource.id, input.actor.name],
	)
}

# METADATA
# description: The actor's roles, sorted (for messages).
sort_roles := sort([r | some r in input.actor.roles])

# METADATA
# description: The decision the control plane enforces.
# entrypoint: true
decision := {"allow": count(reasons) == 0, "reasons": sort([r | some r in reasons])}
