"""Property-based tests (hypothesis) of SPEC §4-§7 sessionization on random multi-day streams.

Each example is a clustered random stream of a few devices over 3-4 days (lifecycle events,
screens, pages, tracks, pushes, identifies; gaps of exactly the timeout and 1 µs / 1 s
either side of it; equal timestamps; later receivedAt copies for the tie-break), with a
small timeout (5-30 min) and max duration (1-3 h) so max-duration cuts are common. It is
captured into a fresh store and DuckDB file, built with `build_all` over all its days,
and the tables are checked against the rules:

- per method, no member is in two sessions; time-based puts every member in exactly one;
- a session's members are a contiguous run of its device's members in SPEC §4 order, seq 1..n,
  so sessions of one device never overlap;
- time-based: every gap inside a session is at most the timeout, the session spans at most
  the max duration, and between consecutive sessions of a device the gap is greater than
  the timeout unless the max duration cut it (then the next member is more than the max
  after the session's first member); end_reason follows;
- action-based: every session starts with Opened (or Installed/Updated then Opened) unless it
  continues a span cut by the max duration; Opened is never later in a session; Backgrounded
  is only ever last (and then end_reason is 'backgrounded');
- conservation: every member of a day is in exactly one action session or an orphan, never
  both, and the orphans are exactly the members outside Opened..Backgrounded spans;
- auto: the recorded choice and `chosen_sessions` follow the 80 % coverage rule.

Long activity (SPEC §7): a run of activity reaching from day D-1 into D+1 (a time chain with
no gap over the timeout, or an action span) is "cut from the first member seen in the window
and flagged": a window then sees only part of it, so membership rules cannot hold for it.
Devices with such a run are left out of the membership checks (`Model.long_devices`); the
generator makes them rare.
"""

from __future__ import annotations

import tempfile
from collections import Counter, defaultdict
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vespucci_assets.pipeline import session_settings
from vespucci_assets.reporting import build_method_sessions
from vespucci_assets.sessionize import build_session_events
from vespucci_assets_tests.random_streams import (
    BACKGROUNDED,
    INSTALLED,
    OPENED,
    PRE_OPEN,
    UPDATED,
    Case,
    DrawChooser,
    build_model,
    device_key,
    event_name,
    generate_case,
    newest_in_window,
    ts_of,
)
from vespucci_assets_tests.support import Pipeline, orphans, project, session_rows

METHOD_TABLES = {"time": "sessions_time_based", "action": "sessions_action_based"}


@st.composite
def cases(draw) -> Case:
    return generate_case(DrawChooser(draw))


def build(case: Case, root: Path) -> Pipeline:
    pipeline = Pipeline(root)
    pipeline.capture("acme", case.messages)
    pipeline.build(project(case.tracking_method, case.timeout_minutes, case.max_hours), case.days)
    return pipeline


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
def test_sessions_follow_the_rules_on_random_streams(case: Case):
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = build(case, Path(tmp))
        try:
            check_rules(case, pipeline)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- stream ---\n{case.describe()}") from None
        finally:
            pipeline.close()


def check_rules(case: Case, pipeline: Pipeline) -> None:
    model = build_model(case.messages, case.timeout)
    conn = pipeline.conn
    sessions = {method: session_rows(conn, method) for method in METHOD_TABLES}
    considered = {mid for mid, m in model.members.items() if device_key(m) not in model.long_devices}

    for method, rows in sessions.items():
        _check_tables_agree(conn, method, rows)
        seen = Counter(mid for row in rows for mid in row["members"])
        assert set(seen) <= set(model.members), f"{method}: non-members in sessions: {sorted(set(seen) - set(model.members))}"
        twice = sorted(mid for mid, n in seen.items() if n > 1 and mid in considered)
        assert not twice, f"{method}: members in two sessions: {twice}"
        for row in rows:
            _check_contiguous(method, row, model)
        if method == "time":
            missing = sorted(considered - set(seen))
            assert not missing, f"time: members in no time-based session: {missing}"

    by_device = defaultdict(lambda: defaultdict(list))
    for method, rows in sessions.items():
        for row in rows:
            by_device[method][row["device_key"]].append(row)
    for method in METHOD_TABLES:
        for device, rows in by_device[method].items():
            if device in model.long_devices:
                continue
            rows.sort(key=lambda r: model.position[r["members"][0]])
            for prev, nxt in zip(rows, rows[1:]):
                assert model.position[prev["members"][-1]] < model.position[nxt["members"][0]], (
                    f"{method}: sessions {prev['members']} and {nxt['members']} of {device} overlap"
                )
                assert prev["ended_at"] <= nxt["started_at"], f"{method}: {prev['members']} ends after {nxt['members']} starts"
            check = _check_time_device if method == "time" else _check_action_device
            check(case, model, rows)

    _check_conservation(conn, model, sessions["action"], considered)
    if not model.long_devices:
        _check_auto_choice(case, conn, model)
    _record_coverage(case, model, sessions)


def _record_coverage(case: Case, model, sessions: dict[str, list[dict]]) -> None:
    """What the example exercised (see --hypothesis-show-statistics)."""
    for method, rows in sessions.items():
        for reason in sorted({row["end_reason"] for row in rows}):
            event(f"{method} end_reason {reason}")
        if any(row["session_date"] != row["ended_at"].date() for row in rows):
            event(f"{method} session crossing midnight")
    if any(row["is_continuation"] for row in sessions["action"]):
        event("action continuation session")
    gaps = {ts_of(b) - ts_of(a) for items in model.by_device.values() for a, b in zip(items, items[1:])}
    if case.timeout in gaps:
        event("gap exactly the timeout")
    if any(row["ended_at"] - row["started_at"] == case.max_duration for rows in sessions.values() for row in rows):
        event("member exactly the max duration after its session's first")
    if timedelta(0) in gaps:
        event("equal timestamps")
    if any(m["receivedAt"] != m["timestamp"] for m in case.messages):
        event("later receivedAt")
    if any(row["members"][0] in model.span_starts and event_name(model.members[row["members"][0]]) != OPENED
           for row in sessions["action"]):
        event("Installed/Updated then Opened")
    if model.long_devices:
        event("long-activity device (left out of membership checks)")


def _check_tables_agree(conn, method: str, rows: list[dict]) -> None:
    """Every session row has members with seq 1..n and vice versa; columns match the members."""
    table = METHOD_TABLES[method]
    table_ids = [r[0] for r in conn.execute(f"SELECT session_id FROM {table}").fetchall()]
    assert len(table_ids) == len(set(table_ids)), f"{table}: duplicate session_id"
    seqs = dict(
        conn.execute(
            "SELECT session_id, list(seq ORDER BY seq) FROM session_events WHERE tracking_method = $m GROUP BY ALL",
            {"m": method},
        ).fetchall()
    )
    assert set(table_ids) == set(seqs), f"{method}: sessions table and session_events disagree on session ids"
    for session_id, seq in seqs.items():
        assert seq == list(range(1, len(seq) + 1)), f"{method}: session {session_id} has seq {seq}"
    for row in rows:
        assert row["event_count"] == len(row["members"]), f"{method}: event_count of {row['members']}"
        assert row["session_date"] == row["started_at"].date(), f"{method}: session_date of {row['members']}"


def _check_contiguous(method: str, row: dict, model) -> None:
    """A session is a run of consecutive members of one device, in SPEC §4 order."""
    members = row["members"]
    devices = {device_key(model.members[mid]) for mid in members}
    assert devices == {row["device_key"]}, f"{method}: session {members} spans devices {devices}"
    if row["device_key"] in model.long_devices:
        return
    positions = [model.position[mid] for mid in members]
    assert positions == list(range(positions[0], positions[0] + len(positions))), (
        f"{method}: session {members} is not a run of consecutive members in SPEC §4 order (positions {positions})"
    )
    first, last = model.members[members[0]], model.members[members[-1]]
    assert row["started_at"] == ts_of(first).replace(tzinfo=None) and row["ended_at"] == ts_of(last).replace(tzinfo=None), (
        f"{method}: started_at/ended_at of {members}"
    )


def _check_time_device(case: Case, model, rows: list[dict]) -> None:
    for i, row in enumerate(rows):
        items = [model.members[mid] for mid in row["members"]]
        for a, b in zip(items, items[1:]):
            assert ts_of(b) - ts_of(a) <= case.timeout, (
                f"time: gap {ts_of(b) - ts_of(a)} > timeout inside session {row['members']} ({a['messageId']} -> {b['messageId']})"
            )
        assert ts_of(items[-1]) - ts_of(items[0]) <= case.max_duration, f"time: session {row['members']} longer than the max duration"
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        cut = False
        if nxt is not None:
            following = model.members[nxt["members"][0]]
            gap = ts_of(following) - ts_of(items[-1])
            cut = gap <= case.timeout
            if cut:
                assert ts_of(following) - ts_of(items[0]) > case.max_duration, (
                    f"time: gap {gap} <= timeout between {row['members']} and {nxt['members']} without a max-duration cut"
                )
        newest = newest_in_window(case.messages, row["session_date"])
        if cut:
            expected = "max_duration"
        elif newest - ts_of(items[-1]) <= case.timeout:
            expected = "open"
        else:
            expected = "inactivity"
        assert row["end_reason"] == expected, f"time: session {row['members']} end_reason {row['end_reason']!r}, expected {expected!r}"


def _check_action_device(case: Case, model, rows: list[dict]) -> None:
    device_items = model.by_device[device_key(model.members[rows[0]["members"][0]])]
    for i, row in enumerate(rows):
        items = [model.members[mid] for mid in row["members"]]
        names = [event_name(m) for m in items]
        starts_with_open = names[0] == OPENED or (
            names[0] in (INSTALLED, UPDATED) and len(names) > 1 and names[1] == OPENED and ts_of(items[1]) - ts_of(items[0]) <= PRE_OPEN
        )
        prev = rows[i - 1] if i > 0 else None
        if not starts_with_open:
            assert prev is not None and prev["end_reason"] == "max_duration", (
                f"action: session {row['members']} starts with {names[0] or items[0]['type']!r}, "
                f"not Opened, and does not continue a span cut by the max duration (previous: {prev and prev['members']})"
            )
            assert model.position[prev["members"][-1]] + 1 == model.position[row["members"][0]], (
                f"action: continuation {row['members']} does not follow its cut session {prev['members']}"
            )
            assert ts_of(items[0]) - ts_of(model.members[prev["members"][0]]) > case.max_duration, (
                f"action: {row['members']} split from {prev['members']} before the max duration"
            )
            assert row["is_continuation"], f"action: continuation {row['members']} not flagged is_continuation"
        opened_at = [k for k, name in enumerate(names) if name == OPENED]
        allowed = [0] if names[0] == OPENED else [1] if starts_with_open else []
        assert opened_at in ([], allowed), f"action: Application Opened inside session {row['members']} at positions {opened_at}"
        backgrounded_at = [k for k, name in enumerate(names) if name == BACKGROUNDED]
        assert backgrounded_at in ([], [len(names) - 1]), (
            f"action: Application Backgrounded not last in session {row['members']} (positions {backgrounded_at})"
        )
        assert ts_of(items[-1]) - ts_of(items[0]) <= case.max_duration, f"action: session {row['members']} longer than the max duration"
        # end_reason
        last_pos = model.position[items[-1]["messageId"]]
        following = device_items[last_pos + 1] if last_pos + 1 < len(device_items) else None
        in_window = following is not None and (ts_of(following).date() - row["session_date"]).days <= 1
        if backgrounded_at:
            expected = "backgrounded"
        elif following is not None and model.span_of[following["messageId"]] == model.span_of[items[-1]["messageId"]]:
            expected = "max_duration"
        elif in_window:
            expected = "next_open"
        else:
            expected = "no_end"
        assert row["end_reason"] == expected, f"action: session {row['members']} end_reason {row['end_reason']!r}, expected {expected!r}"


def _check_conservation(conn, model, action_rows: list[dict], considered: set[str]) -> None:
    orphan_ids = orphans(conn)
    assert len(orphan_ids) == len(set(orphan_ids)), "orphan_events has duplicates"
    in_session = Counter(mid for row in action_rows for mid in row["members"])
    orphan_set = set(orphan_ids)
    for mid in sorted(considered):
        assert (in_session[mid] == 1) != (mid in orphan_set), (
            f"conservation: member {mid} is in {in_session[mid]} action session(s) and "
            f"{'is' if mid in orphan_set else 'is not'} an orphan"
        )
    expected_orphans = {mid for mid in considered if model.span_of[mid] is None}
    assert orphan_set & considered == expected_orphans, (
        f"orphans: unexpected {sorted(orphan_set & considered - expected_orphans)}, "
        f"missing {sorted(expected_orphans - orphan_set)}"
    )


def _check_auto_choice(case: Case, conn, model) -> None:
    choices = {
        day: (members, in_spans, chosen)
        for day, members, in_spans, chosen in conn.execute(
            "SELECT session_date, members, members_in_spans, chosen_method FROM session_method_choice"
        ).fetchall()
    }
    for day in case.days:
        day_members = [mid for mid, m in model.members.items() if ts_of(m).date() == day]
        in_spans = sum(1 for mid in day_members if model.span_of[mid] is not None)
        if case.tracking_method == "auto":
            expected = "action" if day_members and in_spans >= 0.8 * len(day_members) else "time"
        else:
            expected = case.tracking_method
        assert choices[day] == (len(day_members), in_spans, expected), f"method choice for {day}: {choices[day]}"
        chosen = conn.execute(
            "SELECT session_id, tracking_method FROM chosen_sessions WHERE session_date = $d ORDER BY ALL", {"d": day}
        ).fetchall()
        method_rows = conn.execute(
            f"SELECT session_id, tracking_method FROM {METHOD_TABLES[expected]} WHERE session_date = $d ORDER BY ALL", {"d": day}
        ).fetchall()
        assert chosen == method_rows, f"chosen_sessions for {day} are not the {expected}-based sessions"


PARTITION_TABLES = {
    "session_events": "session_date, tracking_method, session_id, seq",
    "orphan_events": "event_date, message_id",
    "session_method_choice": "session_date",
    "sessions_time_based": "session_date, session_id",
    "sessions_action_based": "session_date, session_id",
}


def partition_rows(pipeline: Pipeline) -> dict[str, list[tuple]]:
    return {table: pipeline.rows(f"SELECT * FROM {table} ORDER BY {order}") for table, order in PARTITION_TABLES.items()}


@settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases(), order=st.permutations(range(4)))
def test_a_ranged_build_equals_each_day_built_alone_and_every_window_computed_alone(case: Case, order: list[int]):
    """SPEC §7: a partition is a function of its window, however many days one build covers (long runs included).

    Three builds of the same stream must agree: all days at once, each day alone in a
    random order, and all days with every (day, device) computed from its own window
    (the reference for the whole-range shortcut).
    """
    settings_ = project(case.tracking_method, case.timeout_minutes, case.max_hours)
    with tempfile.TemporaryDirectory() as tmp:
        ranged = build(case, Path(tmp) / "ranged")
        alone = Pipeline(Path(tmp) / "alone")
        windowed = build(case, Path(tmp) / "windowed")
        try:
            alone.capture("acme", case.messages)
            for index in order:
                if index < len(case.days):
                    alone.build(settings_, [case.days[index]])
            build_session_events(windowed.conn, "acme", case.days, session_settings(settings_), every_window=True)
            for method in METHOD_TABLES:
                build_method_sessions(windowed.conn, "acme", case.days, method)
            got = partition_rows(ranged)
            for name, other in (("each day alone", alone), ("every window alone", windowed)):
                expected = partition_rows(other)
                for table in PARTITION_TABLES:
                    assert got[table] == expected[table], f"{table} differs from {name}\n--- stream ---\n{case.describe()}"
        finally:
            for pipeline in (ranged, alone, windowed):
                pipeline.close()
