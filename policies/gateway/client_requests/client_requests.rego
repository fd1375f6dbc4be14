# METADATA
# title: Requests an upstream makes of the user's client
# description: |
#   While a governed request runs, its upstream server may ask the caller's client
#   something: a completion from the user's model (sampling/createMessage), an
#   answer from the user (elicitation/create) or the client's roots (roots/list).
#   The gateway relays each such request only when this policy allows it. The input
#   names the asking server, and as input.tool the tool whose call it belongs to
#   (when it belongs to a tools/call). input.arguments holds maxTokens and
#   includeContext of a sampling request, mode of an elicitation, never the messages.
#   Sampling spends the user's model and shows it the server's prompt: only admins
#   and operators allow it. Everyone may answer elicitations and list roots.
package gateway.client_requests

import data.gateway.roles

# METADATA
# description: Admins may let an upstream sample through their model, ask them, and list their roots.
# custom:
#   category: granted_by_role_admin
grants contains rego.metadata.rule().custom.category if {
	"admin" in input.subject.roles
}

# METADATA
# description: Operators may let an upstream sample through their model, ask them, and list their roots.
# custom:
#   category: granted_by_role_operator
grants contains rego.metadata.rule().custom.category if {
	"operator" in input.subject.roles
}

# METADATA
# description: Viewers may answer elicitations and list roots, but not lend their model (no sampling).
# custom:
#   category: granted_by_role_viewer
grants contains rego.metadata.rule().custom.category if {
	"viewer" in input.subject.roles
	input.action != "sampling/createMessage"
}

# METADATA
# description: Denies sampling to a caller whose roles do not allow it.
# custom:
#   category: sampling_not_allowed_for_role
deny contains rego.metadata.rule().custom.category if {
	input.action == "sampling/createMessage"
	roles.held
	not _may_sample
}

# METADATA
# description: Denies callers holding none of the recognised roles.
# custom:
#   category: no_recognised_role
deny contains rego.metadata.rule().custom.category if {
	not roles.held
}

_may_sample if "admin" in input.subject.roles

_may_sample if "operator" in input.subject.roles
