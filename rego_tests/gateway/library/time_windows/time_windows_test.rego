package gateway.library.time_windows_test

import data.gateway.library.time_windows

rules := {"time_windows": [
	{"roles": ["operator"], "days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"], "from": "08:00", "until": "18:30", "zone": "Europe/Paris"},
	{"roles": ["oncall"], "from": "22:00", "until": "06:00"},
]}

# 2026-11-30 is a Monday; Paris is UTC+1 in winter.
monday_0900_utc := time.parse_rfc3339_ns("2026-11-30T09:00:00Z")

monday_1800_utc := time.parse_rfc3339_ns("2026-11-30T18:00:00Z")

monday_2300_utc := time.parse_rfc3339_ns("2026-11-30T23:00:00Z")

tuesday_0500_utc := time.parse_rfc3339_ns("2026-12-01T05:00:00Z")

saturday_0900_utc := time.parse_rfc3339_ns("2026-12-05T09:00:00Z")

test_allow_nothing_without_configuration if {
	count(time_windows.deny) == 0 with input as _as(["operator"]) with time.now_ns as saturday_0900_utc
}

test_allow_inside_the_window if {
	count(time_windows.deny) == 0 with input as _as(["operator"])
		with data.gateway.rules as rules
		with time.now_ns as monday_0900_utc
}

test_deny_after_the_window_in_its_zone if {
	# 18:00 UTC is 19:00 in Paris
	time_windows.deny == {"outside_time_window"} with input as _as(["operator"])
		with data.gateway.rules as rules
		with time.now_ns as monday_1800_utc
}

test_deny_at_the_end_of_the_window_but_not_at_its_start if {
	# 17:30 UTC is 18:30 in Paris: "until" is exclusive, "from" inclusive
	time_windows.deny == {"outside_time_window"} with input as _as(["operator"])
		with data.gateway.rules as rules
		with time.now_ns as time.parse_rfc3339_ns("2026-11-30T17:30:00Z")
	count(time_windows.deny) == 0 with input as _as(["operator"])
		with data.gateway.rules as rules
		with time.now_ns as time.parse_rfc3339_ns("2026-11-30T07:00:00Z")
}

test_deny_on_a_day_outside_the_window if {
	time_windows.deny == {"outside_time_window"} with input as _as(["operator"])
		with data.gateway.rules as rules
		with time.now_ns as saturday_0900_utc
}

test_allow_overnight_window_both_sides_of_midnight if {
	count(time_windows.deny) == 0 with input as _as(["oncall"])
		with data.gateway.rules as rules
		with time.now_ns as monday_2300_utc
	count(time_windows.deny) == 0 with input as _as(["oncall"])
		with data.gateway.rules as rules
		with time.now_ns as tuesday_0500_utc
}

test_deny_outside_overnight_window if {
	time_windows.deny == {"outside_time_window"} with input as _as(["oncall"])
		with data.gateway.rules as rules
		with time.now_ns as monday_0900_utc
}

test_allow_any_open_window_of_the_callers_roles if {
	count(time_windows.deny) == 0 with input as _as(["operator", "oncall"])
		with data.gateway.rules as rules
		with time.now_ns as monday_2300_utc
}

test_allow_roles_no_window_names if {
	count(time_windows.deny) == 0 with input as _as(["viewer"])
		with data.gateway.rules as rules
		with time.now_ns as saturday_0900_utc
}

_as(roles) := {"action": "ping", "subject": {"roles": roles}}
