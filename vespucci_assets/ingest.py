"""Capture store -> `events`, `device_users_daily` and `quarantined_events` (DuckDB SQL)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from vespucci_assets.capture import EVENTS, QUARANTINE, CaptureStore
from vespucci_assets.segment_warehouse import SegmentWarehouse
from vespucci_assets.sql_utils import delete_days, set_target_days, sorted_days, sql_string_list, transaction, window_days
from vespucci_assets.tables import EVENTS as EVENTS_TABLE

TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

CAPTURED_COLUMNS = {
    "message_id": "VARCHAR",
    "type": "VARCHAR",
    "event": "VARCHAR",
    "name": "VARCHAR",
    "anonymous_id": "VARCHAR",
    "user_id": "VARCHAR",
    "timestamp": "VARCHAR",
    "original_timestamp": "VARCHAR",
    "sent_at": "VARCHAR",
    "received_at": "VARCHAR",
    "ingested_ns": "BIGINT",
    "properties": "JSON",
    "context": "JSON",
    "traits": "JSON",
    "extra": "JSON",
}
QUARANTINE_COLUMNS = {"received_at": "VARCHAR", "reason": "VARCHAR", "raw": "VARCHAR", "ingested_ns": "BIGINT"}

LIFECYCLE_RANK_SQL = """
    CASE
        WHEN type = 'track' AND event IN ('Application Installed', 'Application Updated') THEN 0
        WHEN type = 'track' AND event = 'Application Opened' THEN 1
        WHEN type = 'track' AND event = 'Application Backgrounded' THEN 3
        ELSE 2
    END
"""


@dataclass(frozen=True)
class EventsStats:
    events: int
    members: int
    duplicates: int
    devices: int


def capture_rows(conn, files, columns: dict[str, str]) -> str:
    """The capture files as a relation of `columns` (+ filename), read by the connection's engine."""
    if not files:
        return _empty_source(columns)
    if hasattr(conn, "capture_source"):
        return conn.capture_source(files, columns)
    return _read_json_sql(files, columns)


def _read_json_sql(files, columns: dict[str, str]) -> str:
    spec = "{" + ", ".join(f"'{k}': '{v}'" for k, v in columns.items()) + "}"
    # Only a crashed writer's torn last line can fail to parse; complete records always do.
    return (
        f"read_json({sql_string_list(map(str, files))}, format = 'newline_delimited', "
        f"columns = {spec}, filename = true, ignore_errors = true)"
    )


def build_events(conn, source: CaptureStore | SegmentWarehouse, project_id: str, days: list[date]) -> EventsStats:
    """Replace `events` for these days from the capture store or the project's Segment warehouse.

    Dedupe on messageId: the first copy received wins. A duplicate may carry a slightly
    different timestamp, so the days either side are read for earlier copies. A warehouse is
    read before anything is deleted: a failing read leaves the partition as it was.
    """
    days = sorted_days(days)
    window = window_days(days)
    if isinstance(source, SegmentWarehouse):
        source = source.stage(conn, window[0], window[-1])
    else:
        source = capture_rows(conn, source.files(project_id, EVENTS, window), CAPTURED_COLUMNS)
    set_target_days(conn, days)
    # Duplicates are rare: copies are counted on the message ids alone, then the payloads are
    # read once, keeping each repeated message's earliest copy (by ingested_ns).
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE repeated_ids AS
        SELECT message_id, count(*) AS copies, min(ingested_ns) AS first_ns
        FROM {source}
        WHERE message_id IS NOT NULL AND timestamp IS NOT NULL
        GROUP BY message_id HAVING count(*) > 1
        """
    )
    with transaction(conn):
        delete_days(conn, "events", "event_date", project_id)
        delete_days(conn, "device_users_daily", "event_date", project_id)
        _insert_first_copies(conn, source, project_id, _FIRST_BY_INSTANT)
        if _copies_share_first_instant(conn, project_id):
            # Two copies captured at the same instant (a warehouse's identical rows; a capture
            # writer never gives one instant twice): rank them as (ingested_ns, file).
            delete_days(conn, "events", "event_date", project_id)
            _insert_first_copies(conn, source, project_id, _FIRST_BY_RANK)
        conn.execute(
            """
            INSERT INTO device_users_daily
            SELECT project_id, event_date, device_key,
                   arg_max(user_id, {'t': timestamp, 'r': lifecycle_rank, 'rec': received_at, 'm': message_id}),
                   max(timestamp)
            FROM events
            WHERE project_id = $project_id AND user_id IS NOT NULL
              AND event_date IN (SELECT target_date FROM target_days)
            GROUP BY ALL
            """,
            {"project_id": project_id},
        )
    row = conn.execute(
        """
        SELECT count(*), count(*) FILTER (WHERE is_member), coalesce(sum(copies - 1), 0), count(DISTINCT device_key)
        FROM events WHERE project_id = $project_id AND event_date IN (SELECT target_date FROM target_days)
        """,
        {"project_id": project_id},
    ).fetchone()
    return EventsStats(events=row[0], members=row[1], duplicates=int(row[2]), devices=row[3])


_CAPTURED = ", ".join(f"c.{column}" for column in CAPTURED_COLUMNS)
# One read of the source: every message's copy with the earliest ingested_ns (copies without
# one all pass when none has one, and are then ranked).
# Uncorrelated subqueries rather than a join or EXISTS: the planner, not knowing the source's
# size, would hash every payload to probe it with the few repeated ids, or stage the source.
_FIRST_BY_INSTANT = f"""
    SELECT {_CAPTURED}, CAST(c.timestamp AS TIMESTAMP) AS ts,
           coalesce((SELECT r.copies FROM repeated_ids AS r WHERE r.message_id = c.message_id), 1) AS copies
    FROM {{source}} AS c
    WHERE c.message_id IS NOT NULL AND c.timestamp IS NOT NULL
      AND (c.message_id NOT IN (SELECT message_id FROM repeated_ids)
           OR (c.message_id, coalesce(c.ingested_ns, -1)) IN (SELECT message_id, coalesce(first_ns, -1) FROM repeated_ids))
"""
# Two reads, when copies share their earliest ingested_ns: the repeated messages' copies ranked, one kept.
_FIRST_BY_RANK = f"""
    SELECT {_CAPTURED}, CAST(c.timestamp AS TIMESTAMP) AS ts, 1 AS copies FROM {{source}} AS c
    WHERE c.message_id IS NOT NULL AND c.timestamp IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM repeated_ids AS r WHERE r.message_id = c.message_id)
    UNION ALL
    SELECT {", ".join(CAPTURED_COLUMNS)}, CAST(timestamp AS TIMESTAMP) AS ts, copies FROM (
        SELECT c.*, r.copies, row_number() OVER (PARTITION BY c.message_id ORDER BY c.ingested_ns, c.filename) AS copy_rank
        FROM {{source}} AS c JOIN repeated_ids AS r ON r.message_id = c.message_id
    ) AS ranked
    WHERE copy_rank = 1
"""


def _insert_first_copies(conn, source: str, project_id: str, first_copies: str) -> None:
    conn.execute(
        f"""
        INSERT INTO events ({", ".join(EVENTS_TABLE.column_names)})
        SELECT
            $project_id, CAST(ts AS DATE), message_id, type, event, name,
            coalesce(anonymous_id, user_id), anonymous_id, user_id,
            ts,
            CAST(original_timestamp AS TIMESTAMP),
            CAST(sent_at AS TIMESTAMP),
            CAST(received_at AS TIMESTAMP),
            properties, context, traits, extra,
            {LIFECYCLE_RANK_SQL},
            type IN ('track', 'screen', 'page'),
            ingested_ns, copies
        FROM ({first_copies.format(source=source)}) AS first_copies
        WHERE CAST(ts AS DATE) IN (SELECT target_date FROM target_days)
        """,
        {"project_id": project_id},
    )


def _copies_share_first_instant(conn, project_id: str) -> bool:
    """Whether a repeated message kept two copies: they shared its earliest ingested_ns."""
    return conn.execute(
        """
        SELECT count(*) FROM (
            SELECT message_id FROM events
            WHERE project_id = $project_id AND event_date IN (SELECT target_date FROM target_days)
              AND message_id IN (SELECT message_id FROM repeated_ids)
            GROUP BY message_id HAVING count(*) > 1
        ) AS shared
        """,
        {"project_id": project_id},
    ).fetchone()[0] > 0


def build_quarantine(conn, store: CaptureStore, project_id: str, days: list[date]) -> int:
    """Replace `quarantined_events` for these arrival days; returns the rows written."""
    days = sorted_days(days)
    files = store.files(project_id, QUARANTINE, days)
    set_target_days(conn, days)
    with transaction(conn):
        delete_days(conn, "quarantined_events", "received_date", project_id)
        if files:
            conn.execute(
                f"""
                INSERT INTO quarantined_events
                SELECT $project_id, CAST(ts AS DATE), ts, reason, raw
                FROM (SELECT reason, raw, ingested_ns, CAST(received_at AS TIMESTAMP) AS ts
                      FROM {capture_rows(conn, files, QUARANTINE_COLUMNS)} WHERE reason IS NOT NULL) AS rejected
                WHERE CAST(ts AS DATE) IN (SELECT target_date FROM target_days)
                ORDER BY ingested_ns
                """,
                {"project_id": project_id},
            )
    return conn.execute(
        "SELECT count(*) FROM quarantined_events WHERE project_id = $p AND received_date IN (SELECT target_date FROM target_days)",
        {"p": project_id},
    ).fetchone()[0]


def _empty_source(columns: dict[str, str]) -> str:
    cols = ", ".join(f"CAST(NULL AS {t}) AS {k}" for k, t in columns.items())
    return f"(SELECT {cols}, CAST(NULL AS VARCHAR) AS filename WHERE false)"
