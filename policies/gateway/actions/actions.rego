# METADATA
# title: Governed actions
# description: |
#   Which MCP methods this policy decides on, and which concern package judges
#   each of them; anything else is denied.
package gateway.actions

# METADATA
# description: The concern package that judges each MCP method (completion/complete is judged by what it completes).
concerns := {
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

# METADATA
# description: The MCP methods this policy decides on.
supported := object.keys(concerns) | {"completion/complete"}

# METADATA
# description: |
#   The concern of this request: tools, resources, prompts, logging, session (ping) or client_requests
#   (an upstream's request of the caller's client). A completion
#   is judged like a read of the resource template or a get of the prompt it completes.
concern := concerns[input.action]

concern := "resources" if {
	input.action == "completion/complete"
	input.resource
	not input.prompt
}

concern := "prompts" if {
	input.action == "completion/complete"
	input.prompt
	not input.resource
}

# METADATA
# description: Denies any action this policy does not decide on, and a request that names no concern.
# custom:
#   category: unsupported_action
deny contains rego.metadata.rule().custom.category if {
	# Not `not input.action in supported`: OPA hoists input.action out of the
	# negation, so a missing action would make this rule undefined (opa#8387).
	not _concerned
}

_concerned if concern
