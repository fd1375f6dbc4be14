# METADATA
# title: Library - tool arguments by value and pattern
# description: |
#   Refuses a tools/call by the value of one of its arguments. Reads
#   data.gateway.rules.arguments, a list of
#     {"server": glob, "tools": [glob, ...], "argument": name or [path, ...],
#      "max": number, "values": [...], "pattern": regex, "required_pattern": regex,
#      "exempt_roles": [...]}
#   "argument" names a top-level argument, or an array path into nested objects;
#   each of max (a number above it is refused), values (any of them is refused),
#   pattern (a string matching it is refused) and required_pattern (a string not
#   matching it is refused) is optional. Callers holding one of exempt_roles are
#   not refused. Only tools/call carries arguments, so listing is not affected.
#   Arguments are erased from decision logs, so these rules change nothing in a
#   decision replay.
package gateway.library.arguments

import data.gateway.library

# METADATA
# description: Denies a number argument above the entry's max.
# custom:
#   category: argument_above_maximum
deny contains rego.metadata.rule().custom.category if {
	some entry in _applicable
	value := _value(entry)
	is_number(value)
	value > entry.max
}

# METADATA
# description: Denies an argument equal to one of the entry's values.
# custom:
#   category: argument_value_refused
deny contains rego.metadata.rule().custom.category if {
	some entry in _applicable
	some refused in entry.values
	_value(entry) == refused
}

# METADATA
# description: Denies a string argument matching the entry's pattern (RE2 syntax, unanchored).
# custom:
#   category: argument_matches_refused_pattern
deny contains rego.metadata.rule().custom.category if {
	some entry in _applicable
	value := _value(entry)
	is_string(value)
	regex.match(entry.pattern, value)
}

# METADATA
# description: Denies an argument that is not a string matching the entry's required_pattern (anchor it with ^...$).
# custom:
#   category: argument_does_not_match_pattern
deny contains rego.metadata.rule().custom.category if {
	some entry in _applicable
	pattern := entry.required_pattern
	not _matches_required(pattern, _value(entry))
}

_applicable contains entry if {
	input.action == "tools/call"
	some entry in data.gateway.rules.arguments
	library.tool_matches(entry)
	not library.holds_any(object.get(entry, "exempt_roles", []))
}

# The argument's value; null when it is absent.
_value(entry) := object.get(input.arguments, entry.argument, null)

_matches_required(pattern, value) if {
	is_string(value)
	regex.match(pattern, value)
}
