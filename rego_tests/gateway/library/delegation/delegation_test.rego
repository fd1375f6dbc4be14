package gateway.library.delegation_test

import data.gateway.library.delegation

rules := {"delegation": {"max_depth": 1, "servers": {"payments": 0}}}

agent := {"sub": "research-agent"}

orchestrator := {"sub": "orchestrator"}

test_allow_nothing_without_configuration if {
	count(delegation.deny) == 0 with input as _request("demo", [agent, orchestrator, agent])
}

test_allow_chain_within_limit if {
	count(delegation.deny) == 0 with input as _request("demo", []) with data.gateway.rules as rules
	count(delegation.deny) == 0 with input as _request("demo", [agent]) with data.gateway.rules as rules
}

test_deny_chain_deeper_than_limit if {
	delegation.deny == {"delegation_depth_exceeded"} with input as _request("demo", [agent, orchestrator])
		with data.gateway.rules as rules
}

test_deny_server_limit_replaces_max_depth if {
	delegation.deny == {"delegation_depth_exceeded"} with input as _request("payments", [agent])
		with data.gateway.rules as rules
	count(delegation.deny) == 0 with input as _request("payments", []) with data.gateway.rules as rules
}

test_deny_request_without_server_uses_max_depth if {
	delegation.deny == {"delegation_depth_exceeded"} with input as {
		"action": "logging/setLevel",
		"subject": {"roles": ["viewer"], "delegation": [agent, orchestrator]},
	}
		with data.gateway.rules as rules
}

_request(server, chain) := {
	"action": "tools/call",
	"subject": {"roles": ["viewer"], "delegation": chain},
	"server": {"name": server},
	"tool": {"name": "echo", "annotations": {}},
}
