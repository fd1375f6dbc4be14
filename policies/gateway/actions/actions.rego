# METADATA
# title: Governed actions
# description: Which MCP methods this policy decides on; anything else is denied.
package gateway.actions

# METADATA
# description: The MCP methods this policy decides on.
supported := {"tools/list", "tools/call"}

# METADATA
# description: Denies any action other than tools/list and tools/call.
# custom:
#   category: unsupported_action
deny contains rego.metadata.rule().custom.category if {
	# Not `not input.action in supported`: OPA hoists input.action out of the
	# negation, so a missing action would make this rule undefined (opa#8387).
	not _supported
}

_supported if input.action in supported
