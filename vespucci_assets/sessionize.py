"""Sessionization in DuckDB SQL (SPEC sections 4-8), for one project and a set of days.

Each target day D is computed only from the events of D-1, D and D+1 (its window),
and keeps the sessions that start on D, so a day's rows never depend on which other
days are computed with it. Several days are done in one set-based pass by giving
every event one row per window it falls in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from vespucci_assets.sql_utils import delete_days, set_target_days, sorted_days, transaction

TIME = "time"
ACTION = "action"
METHODS = (TIME, ACTION)
AUTO_ACTION_THRESHOLD = 0.8
PRE_OPEN_WINDOW_US = 5_000_000

ORDER_KEY = "ts_us, lifecycle_rank, received_at, message_id"


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


def build_session_events(conn, project_id: str, days: list[date], settings: SessionSettings) -> SessionEventsStats:
    """Replace `session_events`, `orphan_events` and `session_method_choice` for these days."""
    days = sorted_days(days)
    set_target_days(conn, days)
    params = {"project_id": project_id}
    _window_members(conn, params)
    _time_groups(conn, settings)
    _action_groups(conn)
    for method in METHODS:
        _cut_long_groups(conn, method, settings)
        _membership(conn, method, settings, params)
    with transaction(conn):
        for table, column in (("session_events", "session_date"), ("orphan_events", "event_date"), ("session_method_choice", "session_date")):
            delete_days(conn, table, column, project_id)
        for method in METHODS:
            conn.execute(
                f"""
                INSERT INTO session_events
                SELECT $project_id, session_date, '{method}', session_id, message_id, seq,
                       make_timestamp(ts_us), event_date, device_key, end_reason, is_continuation, long_activity
                FROM {method}_membership ORDER BY session_date, session_id, seq
                """,
                params,
            )
        conn.execute(
            """
            INSERT INTO orphan_events
            SELECT $project_id, event_date, message_id, device_key, make_timestamp(ts_us), event
            FROM action_groups
            WHERE NOT in_span AND event_date = target_date
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
            LEFT JOIN (
                SELECT target_date, count(*) AS members, count(*) FILTER (WHERE in_span) AS in_spans
                FROM action_groups WHERE event_date = target_date GROUP BY ALL
            ) c USING (target_date)
            """,
            {**params, "configured": settings.tracking_method},
        )
    counts = conn.execute(
        """
        SELECT
          (SELECT count(DISTINCT session_id) FROM time_membership),
          (SELECT count(DISTINCT session_id) FROM action_membership),
          (SELECT count(*) FROM action_groups WHERE NOT in_span AND event_date = target_date),
          (SELECT count(*) FROM window_members WHERE event_date = target_date)
        """
    ).fetchone()
    return SessionEventsStats(*counts)


def _window_members(conn, params: dict) -> None:
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE window_members AS
        SELECT t.target_date, e.device_key, e.message_id, e.event_date, e.type, e.event, e.lifecycle_rank,
               e.received_at, epoch_us(e.timestamp) AS ts_us,
               row_number() OVER (
                   PARTITION BY t.target_date, e.device_key
                   ORDER BY epoch_us(e.timestamp), e.lifecycle_rank, e.received_at, e.message_id
               ) AS rn
        FROM events AS e
        JOIN target_days AS t ON e.event_date BETWEEN t.target_date - 1 AND t.target_date + 1
        WHERE e.project_id = $project_id AND e.is_member
        """,
        params,
    )
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE window_newest AS
        SELECT t.target_date, max(epoch_us(e.timestamp)) AS newest_us
        FROM events AS e
        JOIN target_days AS t ON e.event_date BETWEEN t.target_date - 1 AND t.target_date + 1
        WHERE e.project_id = $project_id
        GROUP BY ALL
        """,
        params,
    )


def _time_groups(conn, settings: SessionSettings) -> None:
    """A gap greater than the timeout starts a new chain; a gap equal to it does not."""
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE time_groups AS
        SELECT *, sum(starts_chain) OVER (PARTITION BY target_date, device_key ORDER BY rn ROWS UNBOUNDED PRECEDING) AS grp
        FROM (
            SELECT *,
                   CASE WHEN ts_us - lag(ts_us) OVER w <= {settings.timeout_us} THEN 0 ELSE 1 END AS starts_chain
            FROM window_members
            WINDOW w AS (PARTITION BY target_date, device_key ORDER BY rn)
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
            WINDOW w AS (PARTITION BY target_date, device_key ORDER BY rn)
        ),
        starts AS (
            SELECT *,
                   is_pre_open OR (is_open AND NOT coalesce(lag(is_pre_open) OVER w, false)) AS starts_span
            FROM flagged
            WINDOW w AS (PARTITION BY target_date, device_key ORDER BY rn)
        ),
        marks AS (
            SELECT *,
                   max(CASE WHEN starts_span THEN rn END) OVER (w ROWS UNBOUNDED PRECEDING) AS last_start_rn,
                   max(CASE WHEN is_background THEN rn END) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                       AS last_background_rn,
                   sum(CASE WHEN starts_span THEN 1 ELSE 0 END) OVER (w ROWS UNBOUNDED PRECEDING) AS grp
            FROM starts
            WINDOW w AS (PARTITION BY target_date, device_key ORDER BY rn)
        )
        SELECT *, last_start_rn IS NOT NULL AND coalesce(last_background_rn, 0) < last_start_rn AS in_span
        FROM marks
        """
    )


def _cut_long_groups(conn, method: str, settings: SessionSettings) -> None:
    """Max-duration cut: a member more than the max duration after its session's first member starts a new one.

    Each cut depends on where the previous one fell, so it is a walk along the members;
    only groups longer than the max duration (rare) take it.
    """
    members = f"{method}_groups" + (" WHERE in_span" if method == ACTION else "")
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {method}_cuts AS
        WITH RECURSIVE long_members AS (
            SELECT g.target_date, g.device_key, g.grp, g.rn, g.ts_us,
                   row_number() OVER (PARTITION BY g.target_date, g.device_key, g.grp ORDER BY g.rn) AS k
            FROM (SELECT * FROM {members}) AS g
            SEMI JOIN (
                SELECT target_date, device_key, grp FROM (SELECT * FROM {members})
                GROUP BY ALL HAVING max(ts_us) - min(ts_us) > {settings.max_us}
            ) AS long_groups USING (target_date, device_key, grp)
        ),
        walk(target_date, device_key, grp, k, rn, piece_start_us, piece) AS (
            SELECT target_date, device_key, grp, k, rn, ts_us, 0 FROM long_members WHERE k = 1
            UNION ALL
            SELECT m.target_date, m.device_key, m.grp, m.k, m.rn,
                   CASE WHEN m.ts_us - w.piece_start_us > {settings.max_us} THEN m.ts_us ELSE w.piece_start_us END,
                   w.piece + CASE WHEN m.ts_us - w.piece_start_us > {settings.max_us} THEN 1 ELSE 0 END
            FROM walk AS w
            JOIN long_members AS m
              ON m.target_date = w.target_date AND m.device_key = w.device_key AND m.grp = w.grp AND m.k = w.k + 1
        )
        SELECT target_date, device_key, rn, piece FROM walk
        """
    )


def _membership(conn, method: str, settings: SessionSettings, params: dict) -> None:
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
            LEFT JOIN {method}_cuts AS c USING (target_date, device_key, rn)
        ),
        sessions AS (
            SELECT target_date, device_key, grp, piece,
                   arg_min(message_id, rn) AS first_message_id,
                   min(ts_us) AS first_ts_us,
                   max(ts_us) AS last_ts_us,
                   arg_max(type = 'track' AND event = 'Application Backgrounded', rn) AS last_is_background
            FROM pieces GROUP BY ALL
        ),
        described AS (
            SELECT s.*,
                   max(piece) OVER (PARTITION BY target_date, device_key, grp) AS last_piece,
                   max(grp) OVER (PARTITION BY target_date, device_key) AS device_last_grp,
                   max(last_ts_us) OVER (PARTITION BY target_date, device_key, grp)
                       - min(first_ts_us) OVER (PARTITION BY target_date, device_key, grp) > {settings.max_us}
                       AS long_activity,
                   n.newest_us
            FROM sessions AS s JOIN window_newest AS n USING (target_date)
        ),
        owned AS (
            SELECT target_date, device_key, grp, piece,
                   md5(concat_ws('|', $project_id, device_key, '{method}', first_message_id)) AS session_id,
                   {end_reason} AS end_reason,
                   piece > 0 AS is_continuation,
                   long_activity
            FROM described
            WHERE CAST(make_timestamp(first_ts_us) AS DATE) = target_date
        )
        SELECT o.target_date AS session_date, o.session_id, o.end_reason, o.is_continuation, o.long_activity,
               p.device_key, p.message_id, p.event_date, p.ts_us, p.rn,
               row_number() OVER (PARTITION BY o.target_date, o.session_id ORDER BY p.rn) AS seq
        FROM pieces AS p
        JOIN owned AS o USING (target_date, device_key, grp, piece)
        """,
        params,
    )
