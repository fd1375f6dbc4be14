# METADATA
# title: Gateway runtime (reserved)
# description: |
#   Added by the control plane to every bundle; policy authors never write it.
#   The data plane queries only these two documents. Both are always defined,
#   so OPA never answers {} for them; a missing or malformed data.gateway.decision
#   surfaces as an absent decision key (call) or an empty allow-list (list),
#   both of which the gateway treats as deny.
package gateway_runtime.main

# METADATA
# title: Tool-call decision
# description: |
#   POST /v1/data/gateway_runtime/main/call with the decision input.
#   {"revision": <projection revision or "unknown">, "decision": data.gateway.decision};
#   the decision key is absent when data.gateway.decision is undefined.
# entrypoint: true
# schemas:
#   - input: schema.decision_input
call := object.union({"revision": revision}, _decision_entry)

# METADATA
# title: Discovery
# description: |
#   POST /v1/data/gateway_runtime/main/list, one query per tools/list,
#   resources/list, resources/templates/list or prompts/list, with the discovery
#   input. {"revision": ..., "allowed": [key]}: the sorted keys of the candidates
#   whose decision, evaluated with that candidate's server and its tool, resource
#   or prompt (the member the action lists) in the input, has allow exactly true.
# entrypoint: true
# schemas:
#   - input: schema.discovery_input
list := {"revision": revision, "allowed": sort(_allowed_keys)}

# METADATA
# description: The projection revision shipped in the bundle's data, or "unknown".
default revision := "unknown"

revision := data.gateway_runtime.projection.revision if is_string(data.gateway_runtime.projection.revision)

default _decision_entry := {}

_decision_entry := {"decision": decision} if {
	decision := data.gateway.decision
}

# METADATA
# description: |
#   The candidate member each list action judges. A candidate without it (or
#   without a server) is not listed; another action lists nothing.
listed_member := {
	"tools/list": "tool",
	"resources/list": "resource",
	"resources/templates/list": "resource",
	"prompts/list": "prompt",
}

# METADATA
# description: Keys of the candidates data.gateway.decision allows; a non-boolean allow does not list.
# schemas:
#   - input: schema.discovery_input
_allowed_keys contains candidate.key if {
	member := listed_member[input.action]
	base := object.remove(input, {"candidates"})
	some candidate in input.candidates
	candidate_input := object.union(base, {"server": candidate.server, member: candidate[member]})

	# One OPA query per tools/list: the user's decision is re-evaluated per candidate.
	# regal ignore:with-outside-test-context
	data.gateway.decision.allow == true with input as candidate_input
}
