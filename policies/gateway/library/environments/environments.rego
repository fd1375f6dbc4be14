# METADATA
# title: Library - tools by environment
# description: |
#   Stricter tool rules per deployment environment (input.environment, the
#   gateway's GATEWAY_ENVIRONMENT). Reads data.gateway.rules.environments:
#     {"<environment>": {"destructive_roles": [...], "write_roles": [...],
#                        "refused_tools": [{"server": glob, "tools": [glob, ...]}]}}
#   destructive_roles: tools annotated destructiveHint true only for these roles;
#   write_roles: tools not annotated readOnlyHint true only for these roles;
#   refused_tools: these tools for nobody. Each is optional; environments not
#   named are not affected. Judges tools/list and tools/call alike.
package gateway.library.environments

import data.gateway.actions
import data.gateway.library

# METADATA
# description: Denies a destructive tool in this environment to a caller holding none of destructive_roles.
# custom:
#   category: destructive_tool_refused_in_environment
deny contains rego.metadata.rule().custom.category if {
	actions.concern == "tools"
	roles := data.gateway.rules.environments[input.environment].destructive_roles
	input.tool.annotations.destructiveHint == true
	not library.holds_any(roles)
}

# METADATA
# description: Denies a tool not annotated read-only in this environment to a caller holding none of write_roles.
# custom:
#   category: write_tool_refused_in_environment
deny contains rego.metadata.rule().custom.category if {
	actions.concern == "tools"
	roles := data.gateway.rules.environments[input.environment].write_roles
	not _read_only
	not library.holds_any(roles)
}

# METADATA
# description: Denies a tool this environment's refused_tools names, to everyone.
# custom:
#   category: tool_refused_in_environment
deny contains rego.metadata.rule().custom.category if {
	actions.concern == "tools"
	some entry in data.gateway.rules.environments[input.environment].refused_tools
	library.tool_matches(entry)
}

_read_only if input.tool.annotations.readOnlyHint == true
