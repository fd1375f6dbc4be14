# METADATA
# title: Roles
# description: The roles this policy recognises, shared by every concern package.
package gateway.roles

# METADATA
# description: The roles this policy recognises.
recognised := {"admin", "operator", "viewer"}

# METADATA
# description: True when the caller holds at least one recognised role.
held if {
	some role in input.subject.roles
	role in recognised
}
