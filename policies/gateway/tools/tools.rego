# METADATA
# title: Tool access by role
# description: |
#   Which MCP tools a caller may list and call, from the caller's roles and the
#   tool's MCP annotations. The same rules serve tools/list and tools/call.
package gateway.tools

import data.gateway.roles

# METADATA
# description: Admins may use any tool.
# custom:
#   category: granted_by_role_admin
grants contains rego.metadata.rule().custom.category if {
	"admin" in input.subject.roles
}

# METADATA
# description: Operators may use any tool not annotated as destructive.
# custom:
#   category: granted_by_role_operator
grants contains rego.metadata.rule().custom.category if {
	"operator" in input.subject.roles
	not _destructive
}

# METADATA
# description: Viewers may use only tools annotated as read-only.
# custom:
#   category: granted_by_role_viewer
grants contains rego.metadata.rule().custom.category if {
	"viewer" in input.subject.roles
	_read_only
}

# METADATA
# description: Denies callers holding none of the recognised roles.
# custom:
#   category: no_recognised_role
deny contains rego.metadata.rule().custom.category if {
	not roles.held
}

# METADATA
# description: Denies a viewer a tool that is not annotated read-only, when no other role grants it.
# custom:
#   category: tool_not_read_only
deny contains rego.metadata.rule().custom.category if {
	count(grants) == 0
	"viewer" in input.subject.roles
}

# METADATA
# description: Denies an operator a destructive tool, when no other role grants it.
# custom:
#   category: destructive_tool_requires_admin
deny contains rego.metadata.rule().custom.category if {
	count(grants) == 0
	"operator" in input.subject.roles
}

_read_only if input.tool.annotations.readOnlyHint == true

_destructive if input.tool.annotations.destructiveHint == true
