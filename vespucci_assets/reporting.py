"""Session summaries, the chosen-method `sessions` and daily metrics (DuckDB SQL)."""

from __future__ import annotations

from datetime import date

from vespucci_assets.sessionize import ACTION, METHODS, TIME
from vespucci_assets.sql_utils import delete_days, set_target_days, sorted_days, transaction
from vespucci_assets.tables import SESSION_COLUMNS, SESSIONS_VIEW

SESSION_TABLES = {TIME: "sessions_time_based", ACTION: "sessions_action_based"}
SESSION_COLUMN_LIST = ", ".join(c.name for c in SESSION_COLUMNS)
ORDER = "{'t': e.timestamp, 'r': e.lifecycle_rank, 'rec': e.received_at, 'm': e.message_id}"


def build_method_sessions(conn, project_id: str, days: list[date], method: str) -> int:
    """Replace one method's session table for these days: `session_summaries` plus the identify calls' userId.

    The last userId of a session's members is in its summary; only sessions with an identify
    call of the device inside their span need that member looked up, to compare the two in order.
    """
    days = sorted_days(days)
    set_target_days(conn, days)
    table = SESSION_TABLES[method]
    params = {"project_id": project_id, "method": method}
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE summarized AS
        WITH summary AS (
            SELECT * FROM session_summaries
            WHERE project_id = $project_id AND tracking_method = $method
              AND session_date IN (SELECT target_date FROM target_days)
        ),
        identify_calls AS (
            SELECT s.session_id, e.user_id, e.timestamp, e.lifecycle_rank, e.received_at, e.message_id
            FROM summary AS s
            JOIN events AS e
              ON e.project_id = s.project_id AND e.device_key = s.device_key
             AND e.event_date BETWEEN s.session_date AND s.session_date + 1
             AND e.timestamp BETWEEN s.started_at AND s.ended_at
            WHERE e.project_id = $project_id AND NOT e.is_member AND e.user_id IS NOT NULL
        ),
        last_member_users AS (
            SELECT s.session_id, e.user_id, e.timestamp, e.lifecycle_rank, e.received_at, e.message_id
            FROM summary AS s
            JOIN events AS e
              ON e.project_id = s.project_id AND e.message_id = s.last_user_message_id
             AND e.event_date BETWEEN s.session_date AND s.session_date + 1
            WHERE e.project_id = $project_id AND s.session_id IN (SELECT session_id FROM identify_calls)
        ),
        last_users AS (
            SELECT session_id, arg_max(user_id, {ORDER}) AS user_id
            FROM (SELECT * FROM identify_calls UNION ALL SELECT * FROM last_member_users) AS e
            GROUP BY session_id
        )
        SELECT s.project_id, s.session_date, s.session_id, $method AS tracking_method, s.device_key, s.anonymous_id,
               coalesce(u.user_id, s.last_user_id) AS user_id,
               s.started_at, s.ended_at,
               (epoch_us(s.ended_at) - epoch_us(s.started_at)) / 1000000.0 AS duration_s,
               s.event_count, s.screen_count, s.event_count - s.screen_count AS track_count, s.first_screen, s.last_screen,
               s.end_reason, s.is_continuation, s.long_activity
        FROM summary AS s
        LEFT JOIN last_users AS u USING (session_id)
        """,
        params,
    )
    with transaction(conn):
        delete_days(conn, table, "session_date", project_id)
        conn.execute(f"INSERT INTO {table} ({SESSION_COLUMN_LIST}) SELECT {SESSION_COLUMN_LIST} FROM summarized ORDER BY session_date, started_at, session_id")
    return conn.execute("SELECT count(*) FROM summarized").fetchone()[0]


def build_chosen_sessions(conn, project_id: str, days: list[date]) -> dict[str, int]:
    """Replace `chosen_sessions` with each day's chosen method; returns sessions per method used."""
    days = sorted_days(days)
    set_target_days(conn, days)
    params = {"project_id": project_id}
    with transaction(conn):
        delete_days(conn, "chosen_sessions", "session_date", project_id)
        for method in METHODS:
            conn.execute(
                f"""
                INSERT INTO chosen_sessions ({SESSION_COLUMN_LIST})
                SELECT {SESSION_COLUMN_LIST} FROM {SESSION_TABLES[method]} AS s
                WHERE s.project_id = $project_id
                  AND s.session_date IN (
                      SELECT session_date FROM session_method_choice
                      WHERE project_id = $project_id AND chosen_method = '{method}'
                        AND session_date IN (SELECT target_date FROM target_days))
                ORDER BY session_date, started_at, session_id
                """,
                params,
            )
        conn.execute(SESSIONS_VIEW)
    rows = conn.execute(
        """SELECT tracking_method, count(*) FROM chosen_sessions
           WHERE project_id = $project_id AND session_date IN (SELECT target_date FROM target_days) GROUP BY ALL""",
        params,
    ).fetchall()
    return dict(rows)


METRIC_COLUMNS = ("s.sessions, s.devices, s.users, s.median_duration_s, s.p90_duration_s, s.events_per_session, "
                  "s.bounce_rate, s.long_activity_sessions")


def _exact_quantile(numerator: int, denominator: int) -> str:
    """The linear-interpolation quantile (quantile_cont) of `duration_us`, in seconds.

    Interpolated in integers, then divided once, so every engine gives the same double
    (their own percentile functions round differently in the last bit).
    """
    position = f"(n - 1) * {numerator}"
    lower = f"CAST(floor({position} / {float(denominator)}) AS BIGINT)"
    low = f"max(CASE WHEN i = {lower} THEN duration_us END)"
    high = f"coalesce(max(CASE WHEN i = {lower} + 1 THEN duration_us END), {low})"
    fraction = f"max({position} - {lower} * {denominator})"
    return f"({low} * {denominator} + ({high} - {low}) * {fraction}) / {denominator * 1_000_000.0}"


def build_metrics(conn, project_id: str, days: list[date]) -> None:
    """Replace `session_metrics_daily` for these days, one row per method."""
    days = sorted_days(days)
    set_target_days(conn, days)
    selects = " UNION ALL ".join(
        f"""
        SELECT t.target_date AS session_date, '{method}' AS tracking_method, {METRIC_COLUMNS}
        FROM target_days AS t
        LEFT JOIN (
            SELECT session_date, count(*) AS sessions, count(DISTINCT device_key) AS devices,
                   count(DISTINCT user_id) AS users,
                   {_exact_quantile(1, 2)} AS median_duration_s,
                   {_exact_quantile(9, 10)} AS p90_duration_s,
                   CAST(sum(event_count) AS DOUBLE) / count(*) AS events_per_session,
                   CAST(sum(CASE WHEN screen_count <= 1 AND event_count <= 2 THEN 1 ELSE 0 END) AS DOUBLE) / count(*) AS bounce_rate,
                   count(*) FILTER (WHERE long_activity) AS long_activity_sessions
            FROM (
                SELECT *, row_number() OVER (PARTITION BY session_date ORDER BY duration_us) - 1 AS i,
                       count(*) OVER (PARTITION BY session_date) AS n
                FROM (SELECT session_date, device_key, user_id, event_count, screen_count, long_activity,
                             epoch_us(ended_at) - epoch_us(started_at) AS duration_us
                      FROM {SESSION_TABLES[method]}
                      WHERE project_id = $project_id AND session_date IN (SELECT target_date FROM target_days)) AS d
            ) AS ranked
            GROUP BY session_date
        ) AS s ON s.session_date = t.target_date
        """
        for method in METHODS
    )
    with transaction(conn):
        delete_days(conn, "session_metrics_daily", "session_date", project_id)
        conn.execute(
            f"""
            INSERT INTO session_metrics_daily
            SELECT $project_id, m.session_date, m.tracking_method,
                   m.tracking_method = c.chosen_method,
                   coalesce(m.sessions, 0), coalesce(m.devices, 0), coalesce(m.users, 0),
                   m.median_duration_s, m.p90_duration_s, m.events_per_session, m.bounce_rate,
                   CASE WHEN m.tracking_method = 'action' THEN coalesce(o.orphans, 0) ELSE 0 END,
                   c.action_coverage,
                   coalesce(m.long_activity_sessions, 0)
            FROM ({selects}) AS m
            LEFT JOIN session_method_choice AS c
              ON c.project_id = $project_id AND c.session_date = m.session_date
            LEFT JOIN (
                SELECT event_date, count(*) AS orphans FROM orphan_events
                WHERE project_id = $project_id GROUP BY ALL
            ) AS o ON o.event_date = m.session_date
            ORDER BY m.session_date, m.tracking_method
            """,
            {"project_id": project_id},
        )

