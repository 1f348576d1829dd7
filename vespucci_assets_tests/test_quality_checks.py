"""Every session-quality check holds on good data and fails on deliberately broken data.

Each test builds real tables from a hand-built stream (capture store -> DuckDB), asserts
the check passes, breaks the tables the way a bug would, and asserts the check fails
and names what it found.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from vespucci_assets import quality
from vespucci_assets.sessionize import ACTION, TIME, SessionSettings
from vespucci_assets_tests.support import BASE_DAY, Pipeline, at, message, project

D0 = BASE_DAY
DAYS = [D0]
OPENED, BACKGROUNDED = "Application Opened", "Application Backgrounded"
SETTINGS = SessionSettings(timeout_s=30 * 60)


def app_visit(device: str, start: str, prefix: str) -> list[dict]:
    """Opened, two screens ten minutes apart, Backgrounded."""
    t0 = at(start)
    return [
        message(OPENED, t0, device=device, message_id=f"{prefix}-open"),
        message("screen:Home", t0 + timedelta(minutes=1), device=device, message_id=f"{prefix}-home"),
        message("screen:Cart", t0 + timedelta(minutes=11), device=device, message_id=f"{prefix}-cart"),
        message(BACKGROUNDED, t0 + timedelta(minutes=12), device=device, message_id=f"{prefix}-bg"),
    ]


GOOD_STREAM = app_visit("dev-1", "09:00", "a") + app_visit("dev-1", "14:00", "b") + app_visit("dev-2", "10:00", "c")


@pytest.fixture
def good(tmp_path):
    """Makes pipelines holding GOOD_STREAM built with a tracking method; tests capture more and rebuild."""
    opened: list[Pipeline] = []

    def make(method: str = "action") -> Pipeline:
        pipe = Pipeline(tmp_path / f"p{len(opened)}")
        opened.append(pipe)
        pipe.capture("acme", GOOD_STREAM, received_at=at("20:00"))
        pipe.build(project(method), DAYS)
        return pipe

    yield make
    for pipe in opened:
        pipe.close()


@pytest.fixture
def built(good):
    return good("action")


def assert_fails(outcome: quality.CheckOutcome, fragment: str) -> None:
    assert not outcome.passed, outcome
    assert fragment in outcome.summary


def session_id_of(pipe: Pipeline, method: str, first_member: str) -> str:
    return pipe.rows(
        "SELECT session_id FROM session_events WHERE tracking_method = $m AND message_id = $id", {"m": method, "id": first_member}
    )[0][0]


def test_unique_message_ids(built):
    assert quality.unique_message_ids(built.conn, "acme", DAYS).passed
    built.conn.execute(
        "INSERT INTO events SELECT * REPLACE (event_date + 3 AS event_date) FROM events WHERE message_id = 'a-home'"
    )
    outcome = quality.unique_message_ids(built.conn, "acme", DAYS)
    assert_fails(outcome, "1 messageIds stored more than once")
    assert outcome.examples[0][0] == "a-home"


def test_quarantine_rate(good):
    pipe = good("action")
    assert quality.quarantine_rate(pipe.conn, "acme", DAYS).passed
    # Two messages without any id: quarantined, 2 of 14 messages = 14 %.
    pipe.capture("acme", [{"type": "track", "event": "x", "timestamp": "2026-11-20T10:00:00Z"}] * 2, received_at=at("20:00"))
    pipe.build(project("action"), DAYS)
    outcome = quality.quarantine_rate(pipe.conn, "acme", DAYS)
    assert_fails(outcome, "2 quarantined of 14 messages")
    assert outcome.figure == pytest.approx(2 / 14)


def test_members_conserved(built):
    assert quality.members_conserved(built.conn, "acme", DAYS).passed
    built.conn.execute("DELETE FROM session_events WHERE tracking_method = 'time' AND message_id = 'b-cart'")
    outcome = quality.members_conserved(built.conn, "acme", DAYS)
    assert_fails(outcome, "1 members not in exactly one session")
    assert outcome.examples[0][0] == "b-cart"


def test_members_conserved_counts_orphans_for_action(built):
    built.conn.execute("DELETE FROM orphan_events")
    built.conn.execute("DELETE FROM session_events WHERE tracking_method = 'action' AND message_id = 'c-bg'")
    assert_fails(quality.members_conserved(built.conn, "acme", DAYS), "1 members")


def test_no_member_in_two_sessions(built):
    assert quality.no_member_in_two_sessions(built.conn, "acme", DAYS).passed
    other = session_id_of(built, ACTION, "b-open")
    built.conn.execute(
        "INSERT INTO session_events SELECT * REPLACE ($other AS session_id, 99 AS seq) "
        "FROM session_events WHERE tracking_method = 'action' AND message_id = 'a-home'",
        {"other": other},
    )
    assert_fails(quality.no_member_in_two_sessions(built.conn, "acme", DAYS), "1 members in two sessions")


@pytest.mark.parametrize("method", [TIME, ACTION])
def test_no_overlapping_sessions(built, method):
    assert quality.no_overlapping_sessions(built.conn, "acme", DAYS, method).passed
    table = quality._session_table(method)
    built.conn.execute(f"UPDATE {table} SET ended_at = ended_at + INTERVAL 6 HOUR WHERE session_id = $s",
                       {"s": session_id_of(built, method, "a-open")})
    assert_fails(quality.no_overlapping_sessions(built.conn, "acme", DAYS, method), "1 sessions overlapping")


@pytest.mark.parametrize("method", [TIME, ACTION])
def test_session_bounds(built, method):
    settings = SessionSettings()
    assert quality.session_bounds(built.conn, "acme", DAYS, method, settings).passed
    table = quality._session_table(method)
    built.conn.execute(f"UPDATE {table} SET ended_at = started_at - INTERVAL 1 SECOND WHERE session_id = $s",
                       {"s": session_id_of(built, method, "a-open")})
    built.conn.execute(f"UPDATE {table} SET ended_at = started_at + INTERVAL 25 HOUR WHERE session_id = $s",
                       {"s": session_id_of(built, method, "c-open")})
    outcome = quality.session_bounds(built.conn, "acme", DAYS, method, settings)
    assert_fails(outcome, "2 sessions outside")


@pytest.mark.parametrize("method", [TIME, ACTION])
def test_event_count_matches_members(built, method):
    assert quality.event_count_matches_members(built.conn, "acme", DAYS, method).passed
    built.conn.execute(f"UPDATE {quality._session_table(method)} SET event_count = event_count + 1 WHERE session_id = $s",
                       {"s": session_id_of(built, method, "b-open")})
    outcome = quality.event_count_matches_members(built.conn, "acme", DAYS, method)
    assert_fails(outcome, "1 sessions whose event_count differs")
    assert outcome.examples[0][1:] == (5, 4)


def test_time_gap_rules(built):
    assert quality.time_gap_rules(built.conn, "acme", DAYS, SETTINGS).passed
    # The tables were cut with a 30 min timeout; a 5 min one sees gaps of 10 min inside sessions...
    tight = quality.time_gap_rules(built.conn, "acme", DAYS, SessionSettings(timeout_s=5 * 60))
    assert_fails(tight, "3 time-based gap rule violations")
    assert {row[-1] for row in tight.examples} == {"gap inside session over timeout"}
    # ...and a 6 h one sees a new session after a gap within the timeout (09:12 -> 14:00).
    loose = quality.time_gap_rules(built.conn, "acme", DAYS, SessionSettings(timeout_s=6 * 3600))
    assert_fails(loose, "1 time-based gap rule violations")
    assert loose.examples[0][-1] == "new session after a gap within timeout"


def test_action_session_shape(built):
    assert quality.action_session_shape(built.conn, "acme", DAYS).passed
    sid = session_id_of(built, ACTION, "a-open")
    built.conn.execute(
        "UPDATE session_events SET seq = CASE message_id WHEN 'a-bg' THEN 1 WHEN 'a-open' THEN 4 ELSE seq END "
        "WHERE tracking_method = 'action' AND session_id = $s",
        {"s": sid},
    )
    outcome = quality.action_session_shape(built.conn, "acme", DAYS)
    assert_fails(outcome, "1 action sessions of the wrong shape")
    assert outcome.examples[0] == (sid, 1, BACKGROUNDED)


def test_orphan_rate_and_method_fit(good):
    pipe = good("action")
    assert quality.orphan_rate_and_method_fit(pipe.conn, "acme", DAYS).passed
    # A web-like stream (no lifecycle events) on an action project: every member is an orphan.
    pages = [message("page:Docs", at("15:00") + timedelta(minutes=k), device="web-1", message_id=f"p{k}") for k in range(40)]
    pipe.capture("acme", pages, received_at=at("20:00"))
    pipe.build(project("action"), DAYS)
    outcome = quality.orphan_rate_and_method_fit(pipe.conn, "acme", DAYS)
    assert_fails(outcome, "consider --tracking-method time")
    assert outcome.figure == pytest.approx(40 / 52)


def test_time_project_with_lifecycle_stream_is_advised_to_use_action(good):
    pipe = good("time")
    assert_fails(quality.orphan_rate_and_method_fit(pipe.conn, "acme", DAYS), "consider --tracking-method action")


def test_long_activity_devices(good):
    pipe = good("time")
    assert quality.long_activity_devices(pipe.conn, "acme", DAYS).passed
    # A kiosk screen every 20 minutes from 00:00 for 26 hours never pauses for the timeout.
    kiosk = [message("screen:Menu", at("00:00") + timedelta(minutes=20 * k), device="kiosk", message_id=f"k{k}")
             for k in range(26 * 3)]
    pipe.capture("acme", kiosk, received_at=at("20:00", 1))
    pipe.build(project("time"), DAYS)
    outcome = quality.long_activity_devices(pipe.conn, "acme", DAYS)
    assert_fails(outcome, "1 devices active for more than the max duration")
    assert ("time", "kiosk") in outcome.examples
