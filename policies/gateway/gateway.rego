# METADATA
# title: Gateway decision (sample policy)
# description: |
#   The policy a platform team uploads as a policy version. It composes the
#   concern packages into the one decision the gateway enforces, for both
#   tools/list (discovery) and tools/call: a tool is listed exactly when it may
#   be called.
# scope: subpackages
# schemas:
#   - input: schema.decision_input
package gateway

import data.gateway.actions
import data.gateway.tools

# METADATA
# title: Decision
# description: |
#   The entrypoint: {"allow": bool, "reasons": [string], "obligations": {}}.
#   On allow, reasons name the granting rules; on deny, the deny categories.
#   Reasons are always a sorted array.
# entrypoint: true
decision := {
	"allow": allow,
	"reasons": sort(_reasons),
	"obligations": {},
}

# METADATA
# description: True only when the action is supported and some tool rule grants the request. Always boolean.
default allow := false

allow if {
	count(actions.deny) == 0
	count(tools.grants) > 0
}

_reasons := tools.grants if allow

else := actions.deny if count(actions.deny) > 0

else := tools.deny
