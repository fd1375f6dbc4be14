# METADATA
# title: Resource access by role
# description: |
#   Which MCP resources a caller may list and read (and complete template
#   arguments of), from the caller's roles and the resource URI. The same rules
#   serve resources/list, resources/templates/list, resources/read and
#   completion/complete: a resource is listed exactly when it may be read.
package gateway.resources

import data.gateway.roles

# METADATA
# description: Admins may read any resource.
# custom:
#   category: granted_by_role_admin
grants contains rego.metadata.rule().custom.category if {
	"admin" in input.subject.roles
}

# METADATA
# description: Operators may read any resource.
# custom:
#   category: granted_by_role_operator
grants contains rego.metadata.rule().custom.category if {
	"operator" in input.subject.roles
}

# METADATA
# description: Viewers may read any resource that is not internal (and only a request that names one).
# custom:
#   category: granted_by_role_viewer
grants contains rego.metadata.rule().custom.category if {
	"viewer" in input.subject.roles
	is_string(input.resource.uri)
	not restricted
}

# METADATA
# description: |
#   True for a resource whose URI (or URI template) has a path segment
#   "internal", e.g. demo://internal/payroll or file:///srv/internal/{name}.
restricted if regex.match(`(^|/)internal(/|$)`, input.resource.uri)

# METADATA
# description: Denies callers holding none of the recognised roles.
# custom:
#   category: no_recognised_role
deny contains rego.metadata.rule().custom.category if {
	not roles.held
}

# METADATA
# description: Denies a viewer an internal resource, when no other role grants it.
# custom:
#   category: internal_resource_requires_operator
deny contains rego.metadata.rule().custom.category if {
	count(grants) == 0
	"viewer" in input.subject.roles
}
