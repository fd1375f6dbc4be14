# METADATA
# title: Prompt access by role
# description: |
#   Which MCP prompts a caller may list and get (and complete arguments of). The
#   same rules serve prompts/list, prompts/get and completion/complete: a prompt
#   is listed exactly when it may be got. Every recognised role may use every
#   approved prompt.
package gateway.prompts

import data.gateway.roles

# METADATA
# description: Admins may use any prompt.
# custom:
#   category: granted_by_role_admin
grants contains rego.metadata.rule().custom.category if {
	"admin" in input.subject.roles
}

# METADATA
# description: Operators may use any prompt.
# custom:
#   category: granted_by_role_operator
grants contains rego.metadata.rule().custom.category if {
	"operator" in input.subject.roles
}

# METADATA
# description: Viewers may use any prompt.
# custom:
#   category: granted_by_role_viewer
grants contains rego.metadata.rule().custom.category if {
	"viewer" in input.subject.roles
}

# METADATA
# description: Denies callers holding none of the recognised roles.
# custom:
#   category: no_recognised_role
deny contains rego.metadata.rule().custom.category if {
	not roles.held
}
