# METADATA
# title: Policy library
# description: |
#   Data-driven rules that add refusals (and, for tools, grants) to the sample
#   policy. Each rule package under gateway.library reads its configuration from
#   the policy version's data (data.json at the top of the upload, mounted at
#   data.gateway), under data.gateway.rules; with no configuration it denies
#   nothing. gateway.decision denies when the deny set of any package under
#   gateway.library is not empty (its categories become the reasons) and adds the
#   grants packages give. This package holds the helpers the rule packages share.
package gateway.library

# METADATA
# description: True when the caller holds at least one of roles (an array or set of role names).
holds_any(roles) if {
	some role in roles
	role in input.subject.roles
}

# METADATA
# description: |
#   True when entry names this request's tool: entry.server (a glob, default "*")
#   matches the server's name and one of entry.tools (globs) the tool's name.
#   Globs have no delimiters: "*" matches any run of characters.
tool_matches(entry) if {
	glob.match(object.get(entry, "server", "*"), null, input.server.name)
	some pattern in entry.tools
	glob.match(pattern, null, input.tool.name)
}
