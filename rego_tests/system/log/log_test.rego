package system.log_test

import data.fixtures
import data.system.log

test_deny_tool_arguments_and_claims_are_erased if {
	log.mask == {"/input/arguments", "/input/subject/claims"} with input as _event(fixtures.tool_call_viewer_read_only)
}

test_deny_discovery_arguments_and_claims_are_erased if {
	log.mask == {"/input/arguments", "/input/subject/claims"} with input as _event(fixtures.tool_list_viewer)
}

test_allow_subject_identity_is_kept if {
	every pointer in log.mask {
		not pointer in {"/input/subject", "/input/subject/sub", "/input/subject/roles", "/input/subject/scopes"}
	} with input as _event(fixtures.tool_call_viewer_read_only)
}

_event(doc) := {"path": "gateway_runtime/main/call", "input": doc, "result": {"revision": "p3-pv2"}}
