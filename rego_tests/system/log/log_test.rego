package system.log_test

import data.fixtures
import data.system.log

test_deny_tool_arguments_and_claims_are_erased if {
	log.mask == _erased with input as _event(fixtures.tool_call_viewer_read_only)
}

test_deny_discovery_arguments_and_claims_are_erased if {
	log.mask == _erased with input as _event(fixtures.tool_list_viewer)
}

test_deny_prompt_arguments_are_erased if {
	"/input/prompt/arguments" in log.mask with input as _event(fixtures.prompt_get_viewer)
	log.mask == _erased with input as _event(fixtures.prompt_get_viewer)
}

test_deny_completion_values_are_erased if {
	"/input/arguments" in log.mask with input as _event(fixtures.completion_resource_viewer)
}

test_allow_prompt_and_resource_identity_is_kept if {
	every pointer in log.mask {
		not pointer in {"/input/prompt", "/input/prompt/name", "/input/resource", "/input/resource/uri", "/input/server"}
	} with input as _event(fixtures.prompt_get_viewer)
}

test_allow_subject_identity_is_kept if {
	every pointer in log.mask {
		not pointer in {"/input/subject", "/input/subject/sub", "/input/subject/roles", "/input/subject/scopes"}
	} with input as _event(fixtures.tool_call_viewer_read_only)
}

_erased := {"/input/arguments", "/input/prompt/arguments", "/input/subject/claims"}

_event(doc) := {"path": "gateway_runtime/main/call", "input": doc, "result": {"revision": "p3-pv2"}}
