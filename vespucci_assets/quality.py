"""Session quality checks as plain SQL over the warehouse (no Dagster here).

Each check looks at one project's days and returns a `CheckOutcome`: whether it holds,
the figure it measured, and a few example rows when it does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Callable

from vespucci_assets.sessionize import ACTION, TIME, SessionSettings
from vespucci_assets.sql_utils import set_target_days

MAX_QUARANTINE_RATE = 0.01
MAX_ORPHAN_RATE = 0.2
EXAMPLES = 5
DAYS = "(SELECT target_date FROM target_days)"
NEIGHBOURING_DAYS = "(SELECT min(target_date) - 1 FROM target_days) AND (SELECT max(target_date) + 1 FROM target_days)"

# Check names, as the Dagster UI shows them.
UNIQUE_MESSAGE_IDS = "unique_message_ids"
QUARANTINE_RATE = "quarantine_rate"
MEMBERS_CONSERVED = "members_conserved"
NO_MEMBER_IN_TWO_SESSIONS = "no_member_in_two_sessions"
ORPHAN_RATE_AND_METHOD_FIT = "orphan_rate_and_method_fit"
LONG_ACTIVITY_DEVICES = "long_activity_devices"
TIME_GAP_RULES = "time_gap_rules"
ACTION_SESSION_SHAPE = "action_session_shape"
NO_OVERLAPPING_SESSIONS = "no_overlapping_sessions"
SESSION_BOUNDS = "session_bounds"
EVENT_COUNT_MATCHES_MEMBERS = "event_count_matches_members"


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    figure: float
    summary: str
    examples: list[tuple] = field(default_factory=list)


def _scalar(conn, sql: str, params: dict):
    return conn.execute(sql, params).fetchone()[0]


def _violations(conn, sql: str, params: dict, what: str) -> CheckOutcome:
    rows = conn.execute(sql, params).fetchall()
    return CheckOutcome(not rows, len(rows), f"{len(rows)} {what}" if rows else f"no {what}", rows[:EXAMPLES])


def unique_message_ids(conn, project_id: str, days: list[date]) -> CheckOutcome:
    set_target_days(conn, days)
    return _violations(
        conn,
        f"""
        SELECT a.message_id, min(b.event_date) AS first_day, max(b.event_date) AS last_day
        FROM events a JOIN events b ON b.project_id = a.project_id AND b.message_id = a.message_id
        WHERE a.project_id = $p AND a.event_date IN {DAYS}
        GROUP BY a.message_id HAVING count(*) > 1
        """,
        {"p": project_id},
        "messageIds stored more than once",
    )


def quarantine_rate(conn, project_id: str, days: list[date]) -> CheckOutcome:
    set_target_days(conn, days)
    quarantined = _scalar(conn, f"SELECT count(*) FROM quarantined_events WHERE project_id = $p AND received_date IN {DAYS}", {"p": project_id})
    accepted = _scalar(conn, f"SELECT count(*) FROM events WHERE project_id = $p AND event_date IN {DAYS}", {"p": project_id})
    rate = quarantined / (quarantined + accepted) if quarantined + accepted else 0.0
    return CheckOutcome(rate <= MAX_QUARANTINE_RATE, rate, f"{quarantined} quarantined of {quarantined + accepted} messages ({rate:.2%})")


def members_conserved(conn, project_id: str, days: list[date]) -> CheckOutcome:
    """Every member of a day is in exactly one time session, and in one action session or an orphan.

    A member of day D belongs to a session owned by D-1 or D, so D-1's sessions must be current.
    """
    set_target_days(conn, days)
    return _violations(
        conn,
        f"""
        WITH members AS (
            SELECT message_id, event_date FROM events
            WHERE project_id = $p AND is_member AND event_date IN {DAYS}
        ),
        placed AS (
            SELECT m.message_id, m.event_date,
                   count(*) FILTER (WHERE se.tracking_method = 'time') AS time_sessions,
                   count(*) FILTER (WHERE se.tracking_method = 'action') AS action_sessions
            FROM members m LEFT JOIN session_events se
              ON se.project_id = $p AND se.event_date = m.event_date AND se.message_id = m.message_id
            GROUP BY ALL
        )
        SELECT p.message_id, p.event_date, p.time_sessions, p.action_sessions, o.message_id IS NOT NULL AS orphan
        FROM placed p LEFT JOIN orphan_events o
          ON o.project_id = $p AND o.event_date = p.event_date AND o.message_id = p.message_id
        WHERE p.time_sessions <> 1 OR p.action_sessions + CASE WHEN o.message_id IS NULL THEN 0 ELSE 1 END <> 1
        """,
        {"p": project_id},
        "members not in exactly one session per method (orphans counted for action)",
    )


def no_member_in_two_sessions(conn, project_id: str, days: list[date]) -> CheckOutcome:
    """A session of day D holds members of D and D+1, so a second session holding one starts on D-1..D+1.

    Repeats are found by counting alone, and only they get their session ids looked up:
    carrying the ids through the count over every row made the check 4x slower.
    """
    set_target_days(conn, days)
    return _violations(
        conn,
        f"""
        WITH nearby AS (
            SELECT tracking_method, message_id, session_id, session_date FROM session_events
            WHERE project_id = $p AND session_date BETWEEN {NEIGHBOURING_DAYS}
        ),
        repeated AS (
            SELECT n.tracking_method, n.message_id
            FROM nearby AS n LEFT JOIN target_days AS t ON t.target_date = n.session_date
            GROUP BY n.tracking_method, n.message_id
            HAVING count(*) > 1 AND count(t.target_date) > 0
        )
        SELECT tracking_method, message_id, min(n.session_id) AS one_session, max(n.session_id) AS other_session
        FROM nearby AS n JOIN repeated USING (tracking_method, message_id)
        GROUP BY tracking_method, message_id
        """,
        {"p": project_id},
        "members in two sessions",
    )


def _session_table(method: str) -> str:
    return {TIME: "sessions_time_based", ACTION: "sessions_action_based"}[method]


def no_overlapping_sessions(conn, project_id: str, days: list[date], method: str) -> CheckOutcome:
    set_target_days(conn, days)
    return _violations(
        conn,
        f"""
        SELECT device_key, session_id, started_at, ended_at, next_started_at
        FROM (
            SELECT *, lead(started_at) OVER (PARTITION BY device_key ORDER BY started_at, session_id) AS next_started_at
            FROM {_session_table(method)}
            WHERE project_id = $p AND session_date BETWEEN {NEIGHBOURING_DAYS}
        )
        WHERE session_date IN {DAYS} AND next_started_at <= ended_at
        """,
        {"p": project_id},
        "sessions overlapping the device's next session",
    )


def session_bounds(conn, project_id: str, days: list[date], method: str, settings: SessionSettings) -> CheckOutcome:
    set_target_days(conn, days)
    return _violations(
        conn,
        f"""
        SELECT session_id, started_at, ended_at FROM {_session_table(method)}
        WHERE project_id = $p AND session_date IN {DAYS}
          AND NOT (started_at <= ended_at AND epoch_us(ended_at) - epoch_us(started_at) <= $max_us
                   AND CAST(started_at AS DATE) = session_date)
        """,
        {"p": project_id, "max_us": settings.max_us},
        "sessions outside started_at <= ended_at <= started_at + max duration",
    )


def event_count_matches_members(conn, project_id: str, days: list[date], method: str) -> CheckOutcome:
    set_target_days(conn, days)
    return _violations(
        conn,
        f"""
        SELECT s.session_id, s.event_count, count(se.message_id) AS members
        FROM {_session_table(method)} s
        LEFT JOIN session_events se
          ON se.project_id = s.project_id AND se.session_date = s.session_date
         AND se.tracking_method = $m AND se.session_id = s.session_id
        WHERE s.project_id = $p AND s.session_date IN {DAYS}
        GROUP BY ALL HAVING s.event_count <> count(se.message_id)
        """,
        {"p": project_id, "m": method},
        "sessions whose event_count differs from their session_events rows",
    )


def time_gap_rules(conn, project_id: str, days: list[date], settings: SessionSettings) -> CheckOutcome:
    """Inside a session no gap exceeds the timeout; between sessions every gap does, unless cut by max duration."""
    set_target_days(conn, days)
    return _violations(
        conn,
        f"""
        WITH ordered AS (
            SELECT se.session_id, s.device_key, se.seq, se.timestamp, s.is_continuation, s.long_activity,
                   lag(se.timestamp) OVER w AS previous_timestamp,
                   lag(se.session_id) OVER w AS previous_session
            FROM session_events se
            JOIN session_summaries s
              ON s.project_id = se.project_id AND s.tracking_method = se.tracking_method
             AND s.session_date = se.session_date AND s.session_id = se.session_id
            WHERE se.project_id = $p AND se.tracking_method = 'time'
              AND se.session_date BETWEEN (SELECT min(target_date) - 2 FROM target_days) AND (SELECT max(target_date) FROM target_days)
            -- Sessions of a device do not overlap (checked apart), so at equal timestamps the earlier session's members come first.
            WINDOW w AS (PARTITION BY s.device_key ORDER BY se.timestamp, s.started_at, se.seq)
        )
        SELECT session_id, device_key, previous_timestamp, timestamp,
               CASE WHEN previous_session = session_id THEN 'gap inside session over timeout'
                    ELSE 'new session after a gap within timeout' END AS problem
        FROM ordered
        WHERE previous_timestamp IS NOT NULL AND CAST(timestamp AS DATE) IN {DAYS}
          AND ((previous_session = session_id AND epoch_us(timestamp) - epoch_us(previous_timestamp) > $timeout_us)
            OR (previous_session <> session_id AND epoch_us(timestamp) - epoch_us(previous_timestamp) <= $timeout_us
                AND seq = 1 AND NOT is_continuation AND NOT long_activity))
        """,
        {"p": project_id, "timeout_us": settings.timeout_us},
        "time-based gap rule violations",
    )


def action_session_shape(conn, project_id: str, days: list[date]) -> CheckOutcome:
    """Starts with Opened (or Installed/Updated then Opened) unless a continuation; Backgrounded only last."""
    set_target_days(conn, days)
    return _violations(
        conn,
        f"""
        WITH lifecycle AS (
            SELECT event_date, message_id, event FROM events
            WHERE project_id = $p AND type = 'track' AND lifecycle_rank <> 2  -- Installed, Updated, Opened, Backgrounded
              AND event_date BETWEEN (SELECT min(target_date) FROM target_days) AND (SELECT max(target_date) + 1 FROM target_days)
        ),
        members AS (
            SELECT se.session_id, se.seq, s.is_continuation, coalesce(l.event, '') AS event,
                   max(se.seq) OVER (PARTITION BY se.session_id) AS last_seq,
                   lead(coalesce(l.event, '')) OVER (PARTITION BY se.session_id ORDER BY se.seq) AS next_event
            FROM session_events se
            JOIN session_summaries s
              ON s.project_id = se.project_id AND s.tracking_method = se.tracking_method
             AND s.session_date = se.session_date AND s.session_id = se.session_id
            LEFT JOIN lifecycle l ON l.event_date = se.event_date AND l.message_id = se.message_id
            WHERE se.project_id = $p AND se.tracking_method = 'action' AND se.session_date IN {DAYS}
        )
        SELECT session_id, seq, event FROM members
        WHERE (seq = 1 AND NOT is_continuation AND NOT (
                   event = 'Application Opened'
                   OR (event IN ('Application Installed', 'Application Updated') AND next_event = 'Application Opened')))
           OR (event = 'Application Backgrounded' AND seq <> last_seq)
        """,
        {"p": project_id},
        "action sessions of the wrong shape",
    )


def orphan_rate_and_method_fit(conn, project_id: str, days: list[date]) -> CheckOutcome:
    """WARN: many orphans, or the configured method fits the stream worse than the other."""
    set_target_days(conn, days)
    members, orphans, in_spans, configured = conn.execute(
        f"""
        SELECT coalesce(sum(members), 0), coalesce(sum(members - members_in_spans), 0),
               coalesce(sum(members_in_spans), 0), max(configured_method)
        FROM session_method_choice WHERE project_id = $p AND session_date IN {DAYS}
        """,
        {"p": project_id},
    ).fetchone()
    if not members:
        return CheckOutcome(True, 0.0, "no members")
    coverage = in_spans / members
    orphan_rate = orphans / members
    advice = ""
    if configured == ACTION and coverage < 0.8:
        advice = f"; only {coverage:.0%} of members are inside Opened..Backgrounded spans: consider --tracking-method time"
    elif configured == TIME and coverage >= 0.8:
        advice = f"; {coverage:.0%} of members are inside Opened..Backgrounded spans: consider --tracking-method action"
    passed = (configured != ACTION or orphan_rate <= MAX_ORPHAN_RATE) and not advice
    return CheckOutcome(passed, orphan_rate, f"orphan rate {orphan_rate:.1%}, action coverage {coverage:.1%}{advice}")


def long_activity_devices(conn, project_id: str, days: list[date]) -> CheckOutcome:
    set_target_days(conn, days)
    return _violations(
        conn,
        f"""
        SELECT DISTINCT tracking_method, device_key FROM session_summaries
        WHERE project_id = $p AND session_date IN {DAYS} AND long_activity
        """,
        {"p": project_id},
        "devices active for more than the max duration without a gap (cut from the first member in the window)",
    )


@dataclass(frozen=True)
class PartitionCheck:
    """One check of one asset's partitions: `measure(conn, project_id, days, settings)`."""

    asset: str
    name: str
    measure: Callable[[object, str, list[date], SessionSettings], CheckOutcome]
    blocking: bool
    description: str
    # A rate is each day's own figure; a violations check that passes over a range passes on each of its days.
    rate: bool = False


def _per_method(method: str) -> list[PartitionCheck]:
    asset = "sessions_time_based" if method == TIME else "sessions_action_based"
    return [
        PartitionCheck(asset, NO_OVERLAPPING_SESSIONS, lambda c, p, d, s: no_overlapping_sessions(c, p, d, method),
                       True, "Sessions of one device never overlap."),
        PartitionCheck(asset, SESSION_BOUNDS, lambda c, p, d, s: session_bounds(c, p, d, method, s),
                       True, "started_at <= ended_at <= started_at + max duration, owned by its start day."),
        PartitionCheck(asset, EVENT_COUNT_MATCHES_MEMBERS, lambda c, p, d, s: event_count_matches_members(c, p, d, method),
                       True, "event_count equals the session's rows in session_events."),
    ]


PARTITION_CHECKS = [
    PartitionCheck("events", UNIQUE_MESSAGE_IDS, lambda c, p, d, s: unique_message_ids(c, p, d),
                   True, "One row per (project, messageId) across all days."),
    PartitionCheck("quarantined_events", QUARANTINE_RATE, lambda c, p, d, s: quarantine_rate(c, p, d),
                   False, f"At most {MAX_QUARANTINE_RATE:.0%} of the day's messages quarantined.", rate=True),
    PartitionCheck("session_events", MEMBERS_CONSERVED, lambda c, p, d, s: members_conserved(c, p, d),
                   True, "members = time-session members = action-session members + orphans."),
    PartitionCheck("session_events", NO_MEMBER_IN_TWO_SESSIONS, lambda c, p, d, s: no_member_in_two_sessions(c, p, d),
                   True, "No member belongs to two sessions of one method."),
    PartitionCheck("session_events", ORPHAN_RATE_AND_METHOD_FIT, lambda c, p, d, s: orphan_rate_and_method_fit(c, p, d),
                   False, "Orphan rate and whether the other tracking method fits the stream better.", rate=True),
    PartitionCheck("session_events", LONG_ACTIVITY_DEVICES, lambda c, p, d, s: long_activity_devices(c, p, d),
                   False, "Devices active for more than the max duration with no gap over the timeout."),
    PartitionCheck("sessions_time_based", TIME_GAP_RULES, lambda c, p, d, s: time_gap_rules(c, p, d, s),
                   True, "Gaps inside a session <= timeout; between sessions > timeout unless cut."),
    PartitionCheck("sessions_action_based", ACTION_SESSION_SHAPE, lambda c, p, d, s: action_session_shape(c, p, d),
                   True, "Starts with Opened (or Installed/Updated then Opened) unless continued; Backgrounded only last."),
    *_per_method(TIME),
    *_per_method(ACTION),
]


def run_partition_checks(
    conn, project_id: str, days: list[date], settings: SessionSettings, only: PartitionCheck | None = None
) -> dict[tuple[str, str, date], CheckOutcome]:
    """Every partition check (or `only` one) on every day: keyed by (asset, check name, day)."""
    outcomes = {}
    for check in [only] if only else PARTITION_CHECKS:
        whole_range = None if check.rate else check.measure(conn, project_id, days, settings)
        for day in days:
            passed_range = whole_range is not None and whole_range.passed
            outcomes[(check.asset, check.name, day)] = (
                whole_range if passed_range else check.measure(conn, project_id, [day], settings)
            )
    return outcomes
