# METADATA
# title: Session utilities
# description: |
#   Who may ping the gateway (ping, handshake era): every caller holding a
#   recognised role. The gateway answers a ping itself; no upstream is asked.
package gateway.session

import data.gateway.roles

# METADATA
# description: A caller holding a recognised role may ping.
# custom:
#   category: granted_to_recognised_role
grants contains rego.metadata.rule().custom.category if {
	roles.held
}

# METADATA
# description: Denies callers holding none of the recognised roles.
# custom:
#   category: no_recognised_role
deny contains rego.metadata.rule().custom.category if {
	not roles.held
}
