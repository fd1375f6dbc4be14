# METADATA
# title: Gateway decision (sample policy)
# description: |
#   The policy a platform team uploads as a policy version. It composes the
#   concern packages into the one decision the gateway enforces, for every
#   governed MCP method: tools, resources, prompts, completion, logging and ping, and
#   for the requests upstreams make of the caller's client (sampling, elicitation,
#   roots). The
#   same rules serve discovery and use: a tool, resource or prompt is listed
#   exactly when it may be called, read or got. Every package under
#   gateway.library (the policy library, configured through data.gateway.rules)
#   may add refusals, and grants for tools.
# scope: subpackages
# schemas:
#   - input: schema.decision_input
package gateway

import data.gateway.actions
import data.gateway.client_requests
import data.gateway.logging
import data.gateway.prompts
import data.gateway.resources
import data.gateway.session
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
# description: True only when the action is supported and a rule of its concern grants the request. Always boolean.
default allow := false

allow if {
	count(actions.deny) == 0
	count(_library_deny) == 0
	count(_grants) > 0
}

_reasons := _grants if allow

else := actions.deny if count(actions.deny) > 0

else := _library_deny if count(_grants) > 0

else := _deny | _library_deny

# The refusals of every package under gateway.library: a package added there takes
# part without being named here.
_library_deny contains category if {
	some category in data.gateway.library[_].deny
}

# The grants of the library, for tools only (tool_access.grants).
_library_grants contains category if {
	some category in data.gateway.library[_].grants
}

# The concern package (gateway.actions.concern) that judges this request. Both are
# undefined for an unsupported action, which actions.deny already refuses.
_grants := tools.grants | _library_grants if actions.concern == "tools"

_grants := resources.grants if actions.concern == "resources"

_grants := prompts.grants if actions.concern == "prompts"

_grants := logging.grants if actions.concern == "logging"

_grants := client_requests.grants if actions.concern == "client_requests"

_grants := session.grants if actions.concern == "session"

_deny := tools.deny if actions.concern == "tools"

_deny := resources.deny if actions.concern == "resources"

_deny := prompts.deny if actions.concern == "prompts"

_deny := logging.deny if actions.concern == "logging"

_deny := client_requests.deny if actions.concern == "client_requests"

_deny := session.deny if actions.concern == "session"
