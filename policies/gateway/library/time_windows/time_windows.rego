# METADATA
# title: Library - time windows by role
# description: |
#   Confines roles to hours and days. Reads data.gateway.rules.time_windows, a list of
#     {"roles": [...], "days": ["Monday", ...], "from": "HH:MM", "until": "HH:MM",
#      "zone": "UTC" or an IANA name such as "Europe/Paris"}
#   A caller holding a role named by any window may act only while one of the
#   windows naming one of its roles is open; callers whose roles no window names
#   are not confined. "days" defaults to every day, "zone" to UTC; a window is open
#   from "from" (inclusive) to "until" (exclusive), across midnight when until is
#   earlier than from. Applies to every action. The clock is OPA's at decision time
#   (time.now_ns); in a decision replay it is the time of the replay.
package gateway.library.time_windows

import data.gateway.library

# METADATA
# description: Denies a confined caller when none of its roles' windows is open.
# custom:
#   category: outside_time_window
deny contains rego.metadata.rule().custom.category if {
	some window in data.gateway.rules.time_windows
	library.holds_any(window.roles)
	not _open_for_caller
}

_open_for_caller if {
	some window in data.gateway.rules.time_windows
	library.holds_any(window.roles)
	_open(window)
}

_open(window) if {
	at := [time.now_ns(), object.get(window, "zone", "UTC")]
	_day_allowed(window, time.weekday(at))
	[hour, minute, _] := time.clock(at)
	_within(_minutes(window.from), _minutes(window.until), (hour * 60) + minute)
}

_day_allowed(window, _) if not window.days

_day_allowed(window, day) if day in window.days

_within(from, until, now) if {
	from <= until
	from <= now
	now < until
}

_within(from, until, now) if {
	from > until
	now >= from
}

_within(from, until, now) if {
	from > until
	now < until
}

_minutes(text) := (to_number(parts[0]) * 60) + to_number(parts[1]) if parts := split(text, ":")
