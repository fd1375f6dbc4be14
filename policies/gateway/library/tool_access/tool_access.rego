# METADATA
# title: Library - tools by role, tool and server
# description: |
#   Who may use which tool of which server, beyond the roles of gateway.tools.
#   Reads data.gateway.rules:
#     tool_grants:       [{"roles": [...], "server": glob, "tools": [glob, ...]}]
#                        grants the tools to callers holding one of roles (any role
#                        name, also ones gateway.roles does not recognise);
#     tool_restrictions: [{"roles": [...], "server": glob, "tools": [glob, ...]}]
#                        refuses the tools to callers holding none of roles;
#     server_tools:      {"<server>": [glob, ...]}
#                        a server's allow list: its other tools are refused.
#   "server" defaults to "*". Judges tools/list and tools/call alike.
package gateway.library.tool_access

import data.gateway.actions
import data.gateway.library

# METADATA
# description: Grants a tool to the roles of a matching tool_grants entry.
# custom:
#   category: granted_by_tool_grant
grants contains rego.metadata.rule().custom.category if {
	actions.concern == "tools"
	some entry in data.gateway.rules.tool_grants
	library.tool_matches(entry)
	library.holds_any(entry.roles)
}

# METADATA
# description: Denies a tool of a matching tool_restrictions entry to a caller holding none of its roles.
# custom:
#   category: tool_restricted_to_roles
deny contains rego.metadata.rule().custom.category if {
	actions.concern == "tools"
	some entry in data.gateway.rules.tool_restrictions
	library.tool_matches(entry)
	not library.holds_any(object.get(entry, "roles", []))
}

# METADATA
# description: Denies a tool that its server's server_tools allow list does not name.
# custom:
#   category: tool_not_allowed_on_server
deny contains rego.metadata.rule().custom.category if {
	actions.concern == "tools"
	allowed := data.gateway.rules.server_tools[input.server.name]
	not _listed(allowed)
}

_listed(patterns) if {
	some pattern in patterns
	glob.match(pattern, null, input.tool.name)
}
