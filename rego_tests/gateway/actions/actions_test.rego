package gateway.actions_test

import data.gateway.actions

test_allow_tools_call if {
	count(actions.deny) == 0 with input as {"action": "tools/call"}
}

test_allow_tools_list if {
	count(actions.deny) == 0 with input as {"action": "tools/list"}
}

test_deny_other_action if {
	actions.deny == {"unsupported_action"} with input as {"action": "resources/read"}
}

test_deny_missing_action if {
	actions.deny == {"unsupported_action"} with input as {}
}

test_deny_action_in_other_case if {
	actions.deny == {"unsupported_action"} with input as {"action": "Tools/Call"}
}
