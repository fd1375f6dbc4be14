# METADATA
# title: Library - delegation depth
# description: |
#   Limits how deep a chain of agents may act for a user. The depth is
#   count(input.subject.delegation): 0 for a user (or an API key) acting itself, 1
#   for an agent acting for a user, 2 for an agent acting for that agent, and so
#   on. Reads data.gateway.rules.delegation:
#     {"max_depth": n, "servers": {"<server>": n}}
#   A per-server limit replaces max_depth for that server's tools, resources and
#   prompts. Applies to every action.
package gateway.library.delegation

# METADATA
# description: Denies a request whose delegation chain is deeper than the limit.
# custom:
#   category: delegation_depth_exceeded
deny contains rego.metadata.rule().custom.category if {
	count(input.subject.delegation) > _limit
}

_limit := limit if {
	limit := data.gateway.rules.delegation.servers[input.server.name]
} else := data.gateway.rules.delegation.max_depth
