# METADATA
# title: Library - tools by annotation
# description: |
#   Refusals from a tool's MCP annotations, beyond the sample policy's
#   readOnlyHint (viewers) and destructiveHint (operators) rules in gateway.tools.
#   Reads data.gateway.rules.annotations:
#     {"open_world_roles": [...]}     tools that may reach outside systems
#                                     (openWorldHint true, or absent: the MCP default)
#                                     only for these roles;
#     {"non_idempotent_roles": [...]} tools not annotated idempotentHint true
#                                     only for these roles.
#   Annotations are hints from the upstream server: trust them as far as you
#   trust the server. Judges tools/list and tools/call alike.
package gateway.library.annotations

import data.gateway.actions
import data.gateway.library

# METADATA
# description: Denies an open-world tool to a caller holding none of open_world_roles.
# custom:
#   category: open_world_tool_requires_role
deny contains rego.metadata.rule().custom.category if {
	actions.concern == "tools"
	roles := data.gateway.rules.annotations.open_world_roles
	object.get(input.tool.annotations, "openWorldHint", true) == true
	not library.holds_any(roles)
}

# METADATA
# description: Denies a tool not annotated idempotent to a caller holding none of non_idempotent_roles.
# custom:
#   category: non_idempotent_tool_requires_role
deny contains rego.metadata.rule().custom.category if {
	actions.concern == "tools"
	roles := data.gateway.rules.annotations.non_idempotent_roles
	not _idempotent
	not library.holds_any(roles)
}

_idempotent if input.tool.annotations.idempotentHint == true
