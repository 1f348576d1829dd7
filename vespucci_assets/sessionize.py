"""Sessionization in DuckDB SQL (SPEC sections 4-8), for one project and a set of days.

Each target day D is defined by the events of D-1, D and D+1 only (its window): the
sessions that start on D, computed from that window, so a day's rows never depend on
which other days are computed with it.

Computing every window on its own would sort every member three times. Instead the
members of all the windows are ordered once and cut into time chains and action spans
over the whole range. A chain or span no longer than the max duration lies inside the
window of its start day, so the whole-range result is that window's result. Only where
the window could see something else (a chain or span longer than the max duration, or
an Installed just before midnight whose Opened falls outside the window) is the
(day, device) recomputed from its own window, with the per-window rules below.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from vespucci_assets.sql_utils import delete_days, set_target_days, sorted_days, transaction
from vespucci_assets.tables import SESSION_EVENTS, SESSION_SUMMARIES

TIME = "time"
ACTION = "action"
METHODS = (TIME, ACTION)
AUTO_ACTION_THRESHOLD = 0.8
PRE_OPEN_WINDOW_US = 5_000_000
DAY_US = 86_400_000_000

ORDER_KEY = "ts_us, lifecycle_rank, received_at, message_id"
# What a session's summary needs of each member, kept narrow: every column is carried through two sorts.
MEMBER_FIELDS = "is_screen, name, user_id, has_anonymous_id"
NARROW_MEMBER_FIELDS_SQL = """type IN ('screen', 'page') AS is_screen, CASE WHEN type IN ('screen', 'page') THEN name END AS name,
       user_id, anonymous_id IS NOT NULL AS has_anonymous_id"""


def _summary_aggregates(order: str) -> str:
    """A session's figures from its members, `order` being their order (see tables.SESSION_SUMMARIES)."""
    return f"""count(*) AS event_count,
           count(*) FILTER (WHERE is_screen) AS screen_count,
           arg_min(name, CASE WHEN is_screen THEN {order} END) AS first_screen,
           arg_max(name, CASE WHEN is_screen THEN {order} END) AS last_screen,
           bool_or(has_anonymous_id) AS has_anonymous_id,
           arg_max(user_id, CASE WHEN user_id IS NOT NULL THEN {order} END) AS last_user_id,
           arg_max(message_id, CASE WHEN user_id IS NOT NULL THEN {order} END) AS last_user_message_id"""


SUMMARY_FIELDS = "event_count, screen_count, first_screen, last_screen, has_anonymous_id, last_user_id, last_user_message_id"


@dataclass(frozen=True)
class SessionSettings:
    timeout_s: int = 30 * 60
    max_duration_s: int = 24 * 3600
    tracking_method: str = "auto"

    @property
    def timeout_us(self) -> int:
        return self.timeout_s * 1_000_000

    @property
    def max_us(self) -> int:
        return self.max_duration_s * 1_000_000


@dataclass(frozen=True)
class SessionEventsStats:
    time_sessions: int
    action_sessions: int
    orphan_events: int
    members: int


def build_session_events(
    conn, project_id: str, days: list[date], settings: SessionSettings, every_window: bool = False
) -> SessionEventsStats:
    """Replace `session_events`, `orphan_events` and `session_method_choice` for these days.

    `every_window` recomputes every (day, device) from its own window: the slow reference
    the whole-range shortcut is tested against.
    """
    days = sorted_days(days)
    set_target_days(conn, days)
    params = {"project_id": project_id}
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE window_days AS "
        "SELECT DISTINCT target_date + o::INTEGER AS event_date FROM target_days, (VALUES (-1), (0), (1)) AS offsets(o)"
    )
    _window_newest(conn, params)
    _window_devices(conn, params)
    _range_members(conn, settings, params)
    _runs(conn)
    _windows_to_recompute(conn, settings, every_window)
    _window_members(conn, params)
    _time_groups(conn, settings)
    _action_groups(conn)
    for method in METHODS:
        _cut_long_groups(conn, method, settings)
        _window_membership(conn, method, settings, params)
    _day_coverage(conn)
    with transaction(conn):
        for table in (SESSION_EVENTS, SESSION_SUMMARIES):
            delete_days(conn, table.name, table.date_column, project_id)
        for table, column in (("orphan_events", "event_date"), ("session_method_choice", "session_date")):
            delete_days(conn, table, column, project_id)
        for method in METHODS:
            _insert_session_events(conn, method, settings, params)
        conn.execute(
            f"""
            INSERT INTO orphan_events
            SELECT $project_id, d.target_date, d.message_id, k.device_key, make_timestamp(d.ts_us), e.event
            FROM {DAY_MEMBERS}
            JOIN window_devices AS k ON k.device_no = d.device_no
            JOIN events AS e ON e.project_id = $project_id AND e.event_date = d.target_date AND e.message_id = d.message_id
            WHERE NOT d.in_span
            """,
            params,
        )
        conn.execute(
            f"""
            INSERT INTO session_method_choice
            SELECT $project_id, t.target_date, coalesce(c.members, 0), coalesce(c.in_spans, 0),
                   c.in_spans / nullif(c.members, 0),
                   $configured,
                   CASE WHEN $configured <> 'auto' THEN $configured
                        WHEN c.in_spans >= {AUTO_ACTION_THRESHOLD} * c.members AND c.members > 0 THEN 'action'
                        ELSE 'time' END
            FROM target_days t
            LEFT JOIN day_coverage c USING (target_date)
            """,
            {**params, "configured": settings.tracking_method},
        )
    counts = conn.execute(
        """
        SELECT
          (SELECT count(*) FROM session_summaries
           WHERE project_id = $project_id AND tracking_method = 'time'
             AND session_date IN (SELECT target_date FROM target_days)),
          (SELECT count(*) FROM session_summaries
           WHERE project_id = $project_id AND tracking_method = 'action'
             AND session_date IN (SELECT target_date FROM target_days)),
          (SELECT coalesce(sum(members - in_spans), 0) FROM day_coverage),
          (SELECT coalesce(sum(members), 0) FROM day_coverage)
        """,
        params,
    ).fetchone()
    return SessionEventsStats(*counts)


def _window_newest(conn, params: dict) -> None:
    """Per target day, the newest timestamp in its window: 'open' sessions are measured against it."""
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE window_newest AS
        WITH day_newest AS (
            SELECT event_date, max(epoch_us(timestamp)) AS newest_us
            FROM events
            WHERE project_id = $project_id
              AND event_date IN (SELECT event_date FROM window_days)
            GROUP BY ALL
        )
        SELECT t.target_date, max(d.newest_us) AS newest_us
        FROM target_days AS t
        JOIN day_newest AS d ON d.event_date BETWEEN t.target_date - 1 AND t.target_date + 1
        GROUP BY ALL
        """,
        params,
    )


def _window_devices(conn, params: dict) -> None:
    """The windows' device keys numbered: every sort, group and join below keys on the integer."""
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE window_devices AS
        SELECT device_key, CAST(row_number() OVER (ORDER BY device_key) AS INTEGER) AS device_no
        FROM (
            SELECT DISTINCT device_key FROM events
            WHERE project_id = $project_id AND is_member AND event_date IN (SELECT event_date FROM window_days)
        ) AS d
        """,
        params,
    )


def _range_members(conn, settings: SessionSettings, params: dict) -> None:
    """Every member of the windows once, in device order, with its time chain and action span.

    A chain or span is named by the `rn` of its first member. One running mark both names a
    member's span and says whether it is inside it: a span's start marks 2 rn + 1 and a
    Backgrounded marks 2 rn on the member after it, so an odd latest mark means no
    Backgrounded came between the span's start and this member. Marks grow with rn, so the
    latest is also the largest; `last_value(... IGNORE NULLS)` finds it without the segment
    tree DuckDB builds for a running max (range_members 8.5 s -> 6.5 s at 10M events);
    engines without IGNORE NULLS take the max (see dialects).
    Only what the summaries need travels with a member (MEMBER_FIELDS; the event day is
    its timestamp's date): the wide rows cost half again as much to sort twice.
    """
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE range_members AS
        WITH members AS (
            SELECT device_no, message_id, {NARROW_MEMBER_FIELDS_SQL}, lifecycle_rank, received_at,
                   epoch_us(timestamp) AS ts_us,
                   type = 'track' AND event = 'Application Opened' AS is_open,
                   type = 'track' AND event = 'Application Backgrounded' AS is_background,
                   type = 'track' AND event IN ('Application Installed', 'Application Updated') AS is_setup
            FROM events JOIN window_devices USING (device_key)
            WHERE project_id = $project_id AND is_member
              AND event_date IN (SELECT event_date FROM window_days)
        ),
        neighbours AS (
            SELECT device_no, message_id, {MEMBER_FIELDS}, ts_us, is_open, is_background,
                   row_number() OVER w AS rn,
                   coalesce(ts_us - lag(ts_us) OVER w > {settings.timeout_us}, true) AS starts_chain,
                   coalesce(is_setup AND lead(is_open) OVER w AND lead(ts_us) OVER w - ts_us <= {PRE_OPEN_WINDOW_US}, false)
                       AS is_pre_open,
                   coalesce(is_open AND lag(is_setup) OVER w AND ts_us - lag(ts_us) OVER w <= {PRE_OPEN_WINDOW_US}, false)
                       AS follows_pre_open,
                   coalesce(lag(is_background) OVER w, false) AS follows_background,
                   coalesce(is_setup AND lead(is_open) OVER w AND lead(ts_us) OVER w - ts_us <= {PRE_OPEN_WINDOW_US}
                            AND CAST(make_timestamp(lead(ts_us) OVER w) AS DATE) > CAST(make_timestamp(ts_us) AS DATE), false)
                       AS pre_open_before_midnight
            FROM members
            WINDOW w AS (PARTITION BY device_no ORDER BY {ORDER_KEY})
        ),
        runs AS (
            SELECT device_no, message_id, {MEMBER_FIELDS}, ts_us, is_background, rn, pre_open_before_midnight,
                   last_value(CASE WHEN starts_chain THEN rn END IGNORE NULLS) OVER w AS time_grp,
                   last_value(CASE WHEN is_pre_open OR (is_open AND NOT follows_pre_open) THEN 2 * rn + 1
                                   WHEN follows_background THEN 2 * rn - 2 END IGNORE NULLS) OVER w AS span_mark
            FROM neighbours
            WINDOW w AS (PARTITION BY device_no ORDER BY rn ROWS UNBOUNDED PRECEDING)
        )
        SELECT device_no, message_id, CAST(make_timestamp(ts_us) AS DATE) AS event_date, {MEMBER_FIELDS}, ts_us,
               is_background, rn, pre_open_before_midnight, time_grp,
               CASE WHEN span_mark % 2 = 1 THEN CAST((span_mark - 1) / 2 AS BIGINT) END AS action_grp,
               coalesce(span_mark % 2 = 1, false) AS in_span
        FROM runs
        """,
        params,
    )


def _runs(conn) -> None:
    """Time chains (gaps within the timeout) and action spans (in-span members of one Opened) over the range."""
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE time_runs AS
        SELECT device_no, time_grp AS grp, min(rn) AS first_rn, min(ts_us) AS first_us, max(ts_us) AS last_us,
               arg_min(message_id, rn) AS first_message_id, {_summary_aggregates("rn")}
        FROM range_members GROUP BY device_no, time_grp
        """
    )
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE action_runs AS
        SELECT *, lead(first_us) OVER (PARTITION BY device_no ORDER BY grp) AS next_start_us
        FROM (
            SELECT device_no, action_grp AS grp, min(rn) AS first_rn, min(ts_us) AS first_us, max(ts_us) AS last_us,
                   arg_min(message_id, rn) AS first_message_id, {_summary_aggregates("rn")},
                   arg_max(is_background, rn) AS last_is_background
            FROM range_members WHERE in_span GROUP BY device_no, action_grp
        )
        """
    )


def _windows_to_recompute(conn, settings: SessionSettings, every_window: bool) -> None:
    """(target day, device) pairs whose window may see other chains or spans than the whole range."""
    if every_window:
        conn.execute(
            """
            CREATE OR REPLACE TEMP TABLE recompute_windows AS
            SELECT DISTINCT t.target_date, m.device_no
            FROM range_members AS m JOIN target_days AS t ON m.event_date BETWEEN t.target_date - 1 AND t.target_date + 1
            """
        )
        return
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE recompute_windows AS
        WITH reaches AS (
            SELECT device_no, CAST(make_timestamp(first_us) AS DATE) - 1 AS from_day,
                   CAST(make_timestamp(last_us) AS DATE) + 1 AS to_day
            FROM (SELECT device_no, first_us, last_us FROM time_runs
                  UNION ALL SELECT device_no, first_us, last_us FROM action_runs)
            WHERE last_us - first_us > {settings.max_us}
            UNION ALL
            SELECT device_no, event_date - 1, event_date - 1 FROM range_members WHERE pre_open_before_midnight
        )
        SELECT DISTINCT t.target_date, r.device_no
        FROM reaches AS r JOIN target_days AS t ON t.target_date BETWEEN r.from_day AND r.to_day
        """
    )


def _insert_session_events(conn, method: str, settings: SessionSettings, params: dict) -> None:
    """Whole-range runs that start on a target day, plus the recomputed windows' sessions: members and summaries."""
    if method == TIME:
        end_reason = f"CASE WHEN n.newest_us - r.last_us <= {settings.timeout_us} THEN 'open' ELSE 'inactivity' END"
        in_run = "m.time_grp = s.grp"
    else:
        end_reason = f"""
            CASE WHEN r.last_is_background THEN 'backgrounded'
                 WHEN r.next_start_us < epoch_us(CAST(t.target_date AS TIMESTAMP)) + {2 * DAY_US} THEN 'next_open'
                 ELSE 'no_end' END"""
        in_run = "m.in_span AND m.action_grp = s.grp"
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {method}_owned AS
        SELECT r.device_no, d.device_key, r.grp, r.first_rn, r.first_us, r.last_us, t.target_date AS session_date,
               md5(concat_ws('|', $project_id, d.device_key, '{method}', r.first_message_id)) AS session_id,
               {end_reason} AS end_reason, false AS is_continuation, false AS long_activity, {SUMMARY_FIELDS}
        FROM {method}_runs AS r
        JOIN target_days AS t ON t.target_date = CAST(make_timestamp(r.first_us) AS DATE)
        JOIN window_newest AS n USING (target_date)
        JOIN window_devices AS d ON d.device_no = r.device_no
        ANTI JOIN recompute_windows AS w ON w.target_date = t.target_date AND w.device_no = r.device_no
        WHERE r.last_us - r.first_us <= {settings.max_us}
        """,
        params,
    )
    conn.execute(
        f"""
        INSERT INTO session_events ({', '.join(SESSION_EVENTS.column_names)})
        SELECT $project_id, s.session_date, '{method}', s.session_id, m.message_id, m.rn - s.first_rn + 1,
               make_timestamp(m.ts_us), m.event_date
        FROM range_members AS m JOIN {method}_owned AS s ON m.device_no = s.device_no AND {in_run}
        UNION ALL
        SELECT $project_id, session_date, '{method}', session_id, message_id, seq, make_timestamp(ts_us), event_date
        FROM {method}_membership
        """,
        params,
    )
    conn.execute(
        f"""
        INSERT INTO session_summaries ({', '.join(SESSION_SUMMARIES.column_names)})
        SELECT $project_id, session_date, '{method}', session_id, device_key, CASE WHEN has_anonymous_id THEN device_key END,
               make_timestamp(first_us), make_timestamp(last_us), event_count, screen_count, first_screen, last_screen,
               end_reason, is_continuation, long_activity, last_user_id, last_user_message_id
        FROM (
            SELECT session_date, session_id, device_key, first_us, last_us, end_reason, is_continuation, long_activity,
                   {SUMMARY_FIELDS}
            FROM {method}_owned
            UNION ALL
            SELECT session_date, session_id, device_key, min(ts_us), max(ts_us), end_reason, is_continuation, long_activity,
                   {_summary_aggregates("seq")}
            FROM {method}_membership JOIN window_devices USING (device_no)
            GROUP BY session_date, session_id, device_key, end_reason, is_continuation, long_activity
        ) AS s
        """,
        params,
    )


# Each target day's members with whether they are inside a foreground span (orphans, method choice).
DAY_MEMBERS = """(
    SELECT m.event_date AS target_date, m.device_no, m.message_id, m.ts_us, m.in_span
    FROM range_members AS m
    JOIN target_days AS t ON t.target_date = m.event_date
    ANTI JOIN recompute_windows AS w ON w.target_date = m.event_date AND w.device_no = m.device_no
    UNION ALL
    SELECT target_date, device_no, message_id, ts_us, in_span
    FROM action_groups WHERE event_date = target_date
) AS d"""


def _day_coverage(conn) -> None:
    """Per target day, its members and how many are inside a foreground span."""
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE day_coverage AS
        SELECT target_date, count(*) AS members, count(*) FILTER (WHERE in_span) AS in_spans
        FROM {DAY_MEMBERS} GROUP BY target_date
        """
    )


def _qualified(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{column}" for column in columns.split(", "))


# --- per-window rules, for the (day, device) pairs in recompute_windows ---------------------------


def _window_members(conn, params: dict) -> None:
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE window_members AS
        SELECT t.target_date, t.device_no, e.message_id, e.event_date, e.type, e.event,
               {NARROW_MEMBER_FIELDS_SQL}, epoch_us(e.timestamp) AS ts_us,
               row_number() OVER (
                   PARTITION BY t.target_date, t.device_no
                   ORDER BY epoch_us(e.timestamp), e.lifecycle_rank, e.received_at, e.message_id
               ) AS rn
        FROM events AS e
        JOIN (SELECT * FROM recompute_windows JOIN window_devices USING (device_no)) AS t ON e.device_key = t.device_key
         AND e.event_date BETWEEN t.target_date - 1 AND t.target_date + 1
        WHERE e.project_id = $project_id AND e.is_member
        """,
        params,
    )


def _time_groups(conn, settings: SessionSettings) -> None:
    """A gap greater than the timeout starts a new chain; a gap equal to it does not."""
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE time_groups AS
        SELECT *, sum(starts_chain) OVER (PARTITION BY target_date, device_no ORDER BY rn ROWS UNBOUNDED PRECEDING) AS grp
        FROM (
            SELECT *,
                   CASE WHEN ts_us - lag(ts_us) OVER w <= {settings.timeout_us} THEN 0 ELSE 1 END AS starts_chain
            FROM window_members
            WINDOW w AS (PARTITION BY target_date, device_no ORDER BY rn)
        )
        """
    )


def _action_groups(conn) -> None:
    """Foreground spans: from an Opened (or the Installed/Updated just before it) to a Backgrounded."""
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE action_groups AS
        WITH flagged AS (
            SELECT *,
                   type = 'track' AND event = 'Application Opened' AS is_open,
                   type = 'track' AND event = 'Application Backgrounded' AS is_background,
                   type = 'track' AND event IN ('Application Installed', 'Application Updated')
                       AND lead(type = 'track' AND event = 'Application Opened') OVER w
                       AND lead(ts_us) OVER w - ts_us <= {PRE_OPEN_WINDOW_US} AS is_pre_open
            FROM window_members
            WINDOW w AS (PARTITION BY target_date, device_no ORDER BY rn)
        ),
        starts AS (
            SELECT *,
                   is_pre_open OR (is_open AND NOT coalesce(lag(is_pre_open) OVER w, false)) AS starts_span
            FROM flagged
            WINDOW w AS (PARTITION BY target_date, device_no ORDER BY rn)
        ),
        marks AS (
            SELECT *,
                   max(CASE WHEN starts_span THEN rn END) OVER (w ROWS UNBOUNDED PRECEDING) AS last_start_rn,
                   max(CASE WHEN is_background THEN rn END) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                       AS last_background_rn,
                   sum(CASE WHEN starts_span THEN 1 ELSE 0 END) OVER (w ROWS UNBOUNDED PRECEDING) AS grp
            FROM starts
            WINDOW w AS (PARTITION BY target_date, device_no ORDER BY rn)
        )
        SELECT *, last_start_rn IS NOT NULL AND coalesce(last_background_rn, 0) < last_start_rn AS in_span
        FROM marks
        """
    )


def _cut_long_groups(conn, method: str, settings: SessionSettings) -> None:
    """Max-duration cut: a member more than the max duration after its session's first member starts a new one.

    Each cut depends on where the previous one fell, so the pieces are found one round at a
    time, every long group at once: a round per piece (a 3-day window holds at most
    3 days / max duration + 1 of them). Only groups longer than the max duration (rare) take part.
    """
    members = f"{method}_groups" + (" WHERE in_span" if method == ACTION else "")
    keys = "target_date, device_no, grp"
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {method}_long_members AS
        SELECT g.target_date, g.device_no, g.grp, g.rn, g.ts_us
        FROM (SELECT * FROM {members}) AS g
        SEMI JOIN (
            SELECT {keys} FROM (SELECT * FROM {members})
            GROUP BY {keys} HAVING max(ts_us) - min(ts_us) > {settings.max_us}
        ) AS long_groups USING ({keys})
        """
    )
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {method}_pieces_0 AS
        SELECT {keys}, 0 AS piece, min(ts_us) AS start_us FROM {method}_long_members GROUP BY {keys}
        """
    )
    rounds = [f"{method}_pieces_0"]
    while conn.execute(f"SELECT count(*) FROM {rounds[-1]}").fetchone()[0]:
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE {method}_pieces_{len(rounds)} AS
            SELECT m.target_date, m.device_no, m.grp, {len(rounds)} AS piece, min(m.ts_us) AS start_us
            FROM {method}_long_members AS m
            JOIN {rounds[-1]} AS p USING ({keys})
            WHERE m.ts_us - p.start_us > {settings.max_us}
            GROUP BY m.target_date, m.device_no, m.grp
            """
        )
        rounds.append(f"{method}_pieces_{len(rounds)}")
    piece_starts = " UNION ALL ".join(f"SELECT * FROM {name}" for name in rounds)
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {method}_cuts AS
        SELECT m.target_date, m.device_no, m.rn, max(p.piece) AS piece
        FROM {method}_long_members AS m
        JOIN ({piece_starts}) AS p USING ({keys})
        WHERE p.start_us <= m.ts_us
        GROUP BY m.target_date, m.device_no, m.rn
        """
    )


def _window_membership(conn, method: str, settings: SessionSettings, params: dict) -> None:
    """Sessions = (group, piece); keep those starting on their window's target day."""
    members = f"{method}_groups" + (" WHERE in_span" if method == ACTION else "")
    if method == TIME:
        end_reason = f"""
            CASE WHEN piece < last_piece THEN 'max_duration'
                 WHEN newest_us - last_ts_us <= {settings.timeout_us} THEN 'open'
                 ELSE 'inactivity' END"""
    else:
        end_reason = """
            CASE WHEN last_is_background THEN 'backgrounded'
                 WHEN piece < last_piece THEN 'max_duration'
                 WHEN grp < device_last_grp THEN 'next_open'
                 ELSE 'no_end' END"""
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {method}_membership AS
        WITH pieces AS (
            SELECT g.*, coalesce(c.piece, 0) AS piece
            FROM (SELECT * FROM {members}) AS g
            LEFT JOIN {method}_cuts AS c USING (target_date, device_no, rn)
        ),
        sessions AS (
            SELECT target_date, device_no, grp, piece,
                   arg_min(message_id, rn) AS first_message_id,
                   min(ts_us) AS first_ts_us,
                   max(ts_us) AS last_ts_us,
                   arg_max(type = 'track' AND event = 'Application Backgrounded', rn) AS last_is_background
            FROM pieces GROUP BY ALL
        ),
        described AS (
            SELECT s.*,
                   max(piece) OVER (PARTITION BY target_date, device_no, grp) AS last_piece,
                   max(grp) OVER (PARTITION BY target_date, device_no) AS device_last_grp,
                   max(last_ts_us) OVER (PARTITION BY target_date, device_no, grp)
                       - min(first_ts_us) OVER (PARTITION BY target_date, device_no, grp) > {settings.max_us}
                       AS long_activity,
                   n.newest_us
            FROM sessions AS s JOIN window_newest AS n USING (target_date)
        ),
        owned AS (
            SELECT target_date, device_no, grp, piece,
                   md5(concat_ws('|', $project_id, device_key, '{method}', first_message_id)) AS session_id,
                   {end_reason} AS end_reason,
                   piece > 0 AS is_continuation,
                   long_activity
            FROM described JOIN window_devices USING (device_no)
            WHERE CAST(make_timestamp(first_ts_us) AS DATE) = target_date
        )
        SELECT o.target_date AS session_date, o.session_id, o.end_reason, o.is_continuation, o.long_activity,
               p.device_no, p.message_id, p.event_date, p.ts_us, p.rn, {_qualified("p", MEMBER_FIELDS)},
               row_number() OVER (PARTITION BY o.target_date, o.session_id ORDER BY p.rn) AS seq
        FROM pieces AS p
        JOIN owned AS o USING (target_date, device_no, grp, piece)
        """,
        params,
    )
