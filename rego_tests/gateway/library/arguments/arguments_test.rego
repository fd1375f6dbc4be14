package gateway.library.arguments_test

import data.gateway.library.arguments

rules := {"arguments": [
	{"server": "demo", "tools": ["search_docs"], "argument": "limit", "max": 10, "exempt_roles": ["admin"]},
	{"tools": ["run_sql"], "argument": "query", "pattern": "(?i)\\b(drop|truncate)\\b"},
	{"tools": ["run_sql"], "argument": "database", "values": ["prod", "billing"]},
	{"tools": ["deploy"], "argument": ["target", "region"], "required_pattern": "^eu-[a-z]+-[0-9]$"},
]}

test_allow_nothing_without_configuration if {
	count(arguments.deny) == 0 with input as _call(["viewer"], "search_docs", {"limit": 99})
}

test_allow_number_within_maximum if {
	count(arguments.deny) == 0 with input as _call(["viewer"], "search_docs", {"limit": 10}) with data.gateway.rules as rules
}

test_deny_number_above_maximum if {
	arguments.deny == {"argument_above_maximum"} with input as _call(["viewer"], "search_docs", {"limit": 11})
		with data.gateway.rules as rules
}

test_allow_above_maximum_for_exempt_role if {
	count(arguments.deny) == 0 with input as _call(["admin"], "search_docs", {"limit": 11}) with data.gateway.rules as rules
}

test_allow_absent_or_non_number_argument if {
	count(arguments.deny) == 0 with input as _call(["viewer"], "search_docs", {}) with data.gateway.rules as rules
	count(arguments.deny) == 0 with input as _call(["viewer"], "search_docs", {"limit": "11"})
		with data.gateway.rules as rules
}

test_deny_string_matching_refused_pattern if {
	arguments.deny == {"argument_matches_refused_pattern"} with input as _call(["admin"], "run_sql", {"query": "Drop TABLE users"})
		with data.gateway.rules as rules
}

test_allow_string_not_matching_refused_pattern if {
	count(arguments.deny) == 0 with input as _call(["admin"], "run_sql", {"query": "select dropped from t"})
		with data.gateway.rules as rules
}

test_deny_refused_value if {
	arguments.deny == {"argument_value_refused"} with input as _call(["admin"], "run_sql", {"database": "billing"})
		with data.gateway.rules as rules
}

test_allow_other_value if {
	count(arguments.deny) == 0 with input as _call(["admin"], "run_sql", {"database": "staging"})
		with data.gateway.rules as rules
}

test_allow_nested_argument_matching_required_pattern if {
	count(arguments.deny) == 0 with input as _call(["admin"], "deploy", {"target": {"region": "eu-west-1"}})
		with data.gateway.rules as rules
}

test_deny_nested_argument_not_matching_required_pattern if {
	arguments.deny == {"argument_does_not_match_pattern"} with input as _call(["admin"], "deploy", {"target": {"region": "us-east-1"}})
		with data.gateway.rules as rules
	arguments.deny == {"argument_does_not_match_pattern"} with input as _call(["admin"], "deploy", {"target": {}})
		with data.gateway.rules as rules
}

test_allow_listing_has_no_arguments if {
	count(arguments.deny) == 0 with input as object.union(_call(["viewer"], "search_docs", {"limit": 99}), {"action": "tools/list"})
		with data.gateway.rules as rules
}

_call(roles, tool, args) := {
	"action": "tools/call",
	"subject": {"roles": roles},
	"server": {"name": "demo"},
	"tool": {"name": tool, "annotations": {}},
	"arguments": args,
}
