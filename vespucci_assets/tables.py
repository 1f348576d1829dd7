"""The DuckDB tables Vespucci writes (SPEC section 9): one definition for DDL and docs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    description: str
    # Upstream "table.column"s this column is computed from (column lineage in the UI).
    sources: tuple[str, ...] = ()
    # DuckDB's compression for the column, where its automatic choice costs more than it saves.
    compression: str | None = None

    def ddl(self) -> str:
        return f"{self.name} {self.type}" + (f" USING COMPRESSION {self.compression}" if self.compression else "")


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    columns: tuple[Column, ...]
    date_column: str

    def ddl(self) -> str:
        cols = ",\n  ".join(c.ddl() for c in self.columns)
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n  {cols}\n)"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def _c(name: str, type_: str, description: str, *sources: str) -> Column:
    return Column(name, type_, description, sources)


SESSION_COLUMNS = (
    _c("project_id", "VARCHAR", "Project (Segment source) slug", "session_events.project_id"),
    _c("session_date", "DATE", "UTC day of started_at; the partition that owns the session", "session_events.session_date"),
    _c("session_id", "VARCHAR", "Stable hash of project, device key, method and first member's messageId", "session_events.session_id"),
    _c("tracking_method", "VARCHAR", "'time' or 'action'", "session_events.tracking_method"),
    _c("device_key", "VARCHAR", "anonymousId, or userId when the messages have no anonymousId", "events.device_key"),
    _c("anonymous_id", "VARCHAR", "The device's anonymousId, if it has one", "events.anonymous_id"),
    _c("user_id", "VARCHAR", "Last non-null userId among the session's messages and identity calls in its span", "events.user_id"),
    _c("started_at", "TIMESTAMP", "UTC timestamp of the first member", "session_events.timestamp"),
    _c("ended_at", "TIMESTAMP", "UTC timestamp of the last member", "session_events.timestamp"),
    _c("duration_s", "DOUBLE", "ended_at - started_at in seconds", "session_events.timestamp"),
    _c("event_count", "INTEGER", "Members (track, screen, page) in the session", "session_events.message_id"),
    _c("screen_count", "INTEGER", "screen and page members", "events.type"),
    _c("track_count", "INTEGER", "track members", "events.type"),
    _c("first_screen", "VARCHAR", "Name of the first screen/page member", "events.name", "session_events.seq"),
    _c("last_screen", "VARCHAR", "Name of the last screen/page member", "events.name", "session_events.seq"),
    _c("end_reason", "VARCHAR", "time: inactivity|max_duration|open; action: backgrounded|next_open|max_duration|no_end", "events.event", "events.timestamp"),
    _c("is_continuation", "BOOLEAN", "Action-based: continues a foreground span cut by the max duration", "events.timestamp"),
    _c("long_activity", "BOOLEAN", "Device active > max duration with no gap over the timeout: cut from the first member seen in the window", "events.timestamp"),
)

EVENTS = Table(
    "events",
    "Deduplicated Segment messages by event day (UTC date of the corrected timestamp).",
    (
        _c("project_id", "VARCHAR", "Project slug"),
        _c("event_date", "DATE", "UTC date of timestamp"),
        _c("message_id", "VARCHAR", "Segment messageId (unique per project)"),
        _c("type", "VARCHAR", "track, screen, page, identify, group or alias"),
        _c("event", "VARCHAR", "Track event name"),
        _c("name", "VARCHAR", "Screen/page name"),
        _c("device_key", "VARCHAR", "anonymousId, else userId"),
        _c("anonymous_id", "VARCHAR", "Segment anonymousId"),
        _c("user_id", "VARCHAR", "Segment userId"),
        _c("timestamp", "TIMESTAMP", "Corrected event time, UTC"),
        _c("original_timestamp", "TIMESTAMP", "Device-clock time the message was sent with"),
        _c("sent_at", "TIMESTAMP", "Device-clock upload time"),
        _c("received_at", "TIMESTAMP", "Server receive time, UTC"),
        _c("properties", "JSON", "Event properties"),
        _c("context", "JSON", "Segment context (batch envelope merged in)"),
        _c("traits", "JSON", "Identify/group traits"),
        _c("extra", "JSON", "Every other field of the message, kept verbatim"),
        _c("lifecycle_rank", "TINYINT", "0 Installed/Updated, 1 Opened, 2 other, 3 Backgrounded: the ordering tie-break"),
        _c("is_member", "BOOLEAN", "track, screen or page: may belong to a session"),
        _c("ingested_ns", "BIGINT", "Capture time in ns; the first copy received wins"),
        _c("copies", "INTEGER", "Copies of this messageId received (duplicates = copies - 1)"),
    ),
    "event_date",
)

SESSION_EVENTS = Table(
    "session_events",
    "Which members make each session, in session order, for both tracking methods.",
    (
        _c("project_id", "VARCHAR", "Project slug", "events.project_id"),
        _c("session_date", "DATE", "Day that owns the session"),
        _c("tracking_method", "VARCHAR", "'time' or 'action'"),
        _c("session_id", "VARCHAR", "Session id"),
        # Unique per method: compression halves it but makes writing the table 1.6x slower
        # (sessionize_bench at 10M events: 8.5 s vs 5.4 s; 550 MB vs 900 MB).
        Column("message_id", "VARCHAR", "Member messageId", ("events.message_id",), compression="uncompressed"),
        _c("seq", "INTEGER", "1..n in session order", "events.timestamp", "events.lifecycle_rank", "events.received_at", "events.message_id"),
        _c("timestamp", "TIMESTAMP", "Member event time, UTC", "events.timestamp"),
        _c("event_date", "DATE", "Member's event day: (project_id, event_date, message_id) joins to events", "events.event_date"),
    ),
    "session_date",
)

SESSION_SUMMARIES = Table(
    "session_summaries",
    "One row per session and method as session_events cuts them; the session tables add the identify calls' userId.",
    (
        _c("project_id", "VARCHAR", "Project slug", "events.project_id"),
        _c("session_date", "DATE", "Day that owns the session", "events.timestamp"),
        _c("tracking_method", "VARCHAR", "'time' or 'action'"),
        _c("session_id", "VARCHAR", "Session id", "events.device_key", "events.message_id"),
        _c("device_key", "VARCHAR", "Device key", "events.device_key"),
        _c("anonymous_id", "VARCHAR", "The device's anonymousId, if its members carry one", "events.anonymous_id"),
        _c("started_at", "TIMESTAMP", "First member's timestamp", "events.timestamp"),
        _c("ended_at", "TIMESTAMP", "Last member's timestamp", "events.timestamp"),
        _c("event_count", "INTEGER", "Members", "events.message_id"),
        _c("screen_count", "INTEGER", "screen and page members", "events.type"),
        _c("first_screen", "VARCHAR", "Name of the first screen/page member", "events.name"),
        _c("last_screen", "VARCHAR", "Name of the last screen/page member", "events.name"),
        _c("end_reason", "VARCHAR", "See the session tables", "events.event", "events.timestamp"),
        _c("is_continuation", "BOOLEAN", "Continues a span cut by the max duration"),
        _c("long_activity", "BOOLEAN", "The device was active > max duration without a gap"),
        _c("last_user_id", "VARCHAR", "Last non-null userId among the members", "events.user_id"),
        _c("last_user_message_id", "VARCHAR", "The member that userId comes from", "events.message_id"),
    ),
    "session_date",
)

SESSIONS_TIME_BASED = Table(
    "sessions_time_based", "Sessions cut by inactivity (SPEC section 5).", SESSION_COLUMNS, "session_date"
)
SESSIONS_ACTION_BASED = Table(
    "sessions_action_based",
    "Sessions between Application Opened and Application Backgrounded (SPEC section 6).",
    SESSION_COLUMNS,
    "session_date",
)
CHOSEN_SESSIONS = Table(
    "chosen_sessions",
    "Sessions of each project's chosen tracking method (auto: decided per day); the sessions view adds resolved_user_id.",
    SESSION_COLUMNS,
    "session_date",
)
ORPHAN_EVENTS = Table(
    "orphan_events",
    "Members outside every Opened..Backgrounded span: in no action-based session.",
    (
        _c("project_id", "VARCHAR", "Project slug"),
        _c("event_date", "DATE", "Member's event day"),
        _c("message_id", "VARCHAR", "Member messageId"),
        _c("device_key", "VARCHAR", "Device key"),
        _c("timestamp", "TIMESTAMP", "Member event time"),
        _c("event", "VARCHAR", "Track event name, if a track"),
    ),
    "event_date",
)
METHOD_CHOICE = Table(
    "session_method_choice",
    "Per project and day: action coverage and the tracking method used for `sessions`.",
    (
        _c("project_id", "VARCHAR", "Project slug"),
        _c("session_date", "DATE", "Day"),
        _c("members", "INTEGER", "Members with this event day"),
        _c("members_in_spans", "INTEGER", "Of those, inside Opened..Backgrounded spans"),
        _c("action_coverage", "DOUBLE", "members_in_spans / members"),
        _c("configured_method", "VARCHAR", "The project's setting: action, time or auto"),
        _c("chosen_method", "VARCHAR", "Method used for `sessions` that day"),
    ),
    "session_date",
)
DEVICE_USERS_DAILY = Table(
    "device_users_daily",
    "Per device and day: the last userId seen; resolves sessions before a login without re-materializing them.",
    (
        _c("project_id", "VARCHAR", "Project slug"),
        _c("event_date", "DATE", "Day"),
        _c("device_key", "VARCHAR", "Device key"),
        _c("user_id", "VARCHAR", "Last non-null userId of the device that day"),
        _c("last_seen_at", "TIMESTAMP", "Timestamp of that message"),
    ),
    "event_date",
)
SESSION_METRICS_DAILY = Table(
    "session_metrics_daily",
    "Per project, day and tracking method: session counts, durations, bounce, orphans, coverage.",
    (
        _c("project_id", "VARCHAR", "Project slug"),
        _c("session_date", "DATE", "Day"),
        _c("tracking_method", "VARCHAR", "'time' or 'action'"),
        _c("is_chosen_method", "BOOLEAN", "This method feeds `sessions` that day"),
        _c("sessions", "INTEGER", "Sessions started that day"),
        _c("devices", "INTEGER", "Distinct device keys"),
        _c("users", "INTEGER", "Distinct non-null user_id"),
        _c("median_duration_s", "DOUBLE", "Median session duration"),
        _c("p90_duration_s", "DOUBLE", "90th percentile session duration"),
        _c("events_per_session", "DOUBLE", "Mean members per session"),
        _c("bounce_rate", "DOUBLE", "Share of sessions with at most one screen/page view and at most 2 members"),
        _c("orphan_events", "INTEGER", "Members of the day in no action-based session (action only; 0 for time)"),
        _c("action_coverage", "DOUBLE", "Share of the day's members inside Opened..Backgrounded spans"),
        _c("long_activity_sessions", "INTEGER", "Sessions flagged for > max duration of continuous activity"),
    ),
    "session_date",
)
QUARANTINED_EVENTS = Table(
    "quarantined_events",
    "Messages that could not be used, by arrival day, with the reason; nothing is dropped silently.",
    (
        _c("project_id", "VARCHAR", "Project slug"),
        _c("received_date", "DATE", "UTC day of received_at"),
        _c("received_at", "TIMESTAMP", "Server receive time, UTC"),
        _c("reason", "VARCHAR", "Why the message was rejected"),
        _c("raw", "VARCHAR", "The message as received"),
    ),
    "received_date",
)

ALL_TABLES = (
    EVENTS,
    DEVICE_USERS_DAILY,
    QUARANTINED_EVENTS,
    SESSION_EVENTS,
    SESSION_SUMMARIES,
    ORPHAN_EVENTS,
    METHOD_CHOICE,
    SESSIONS_TIME_BASED,
    SESSIONS_ACTION_BASED,
    CHOSEN_SESSIONS,
    SESSION_METRICS_DAILY,
)

SESSIONS_VIEW = """
CREATE OR REPLACE VIEW sessions AS
WITH latest_user AS (
    SELECT project_id, device_key, arg_max(user_id, last_seen_at) AS user_id
    FROM device_users_daily
    GROUP BY ALL
)
SELECT s.*, coalesce(s.user_id, u.user_id) AS resolved_user_id
FROM chosen_sessions AS s
LEFT JOIN latest_user AS u USING (project_id, device_key)
"""


def create_schema(conn) -> None:
    """Create the tables, and add the columns a warehouse made by an older version lacks."""
    for table in ALL_TABLES:
        conn.execute(table.ddl())
    present = set(conn.execute("SELECT table_name, column_name FROM duckdb_columns() WHERE NOT internal").fetchall())
    for table in ALL_TABLES:
        for column in table.columns:
            if (table.name, column.name) not in present:
                conn.execute(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type}")
    conn.execute(SESSIONS_VIEW)
