# METADATA
# title: Logging level
# description: |
#   Who may change the upstream servers' logging level (logging/setLevel): every
#   recognised role. Clients set a level on their own right after initialize (the
#   MCP Inspector sends "debug" whenever logging is advertised) and give up when
#   it is refused, so refusing it to a role locks that role's clients out. The
#   level is in input.arguments.level.
package gateway.logging

import data.gateway.roles

# METADATA
# description: Admins may set the logging level.
# custom:
#   category: granted_by_role_admin
grants contains rego.metadata.rule().custom.category if {
	"admin" in input.subject.roles
}

# METADATA
# description: Operators may set the logging level.
# custom:
#   category: granted_by_role_operator
grants contains rego.metadata.rule().custom.category if {
	"operator" in input.subject.roles
}

# METADATA
# description: Viewers may set the logging level.
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
