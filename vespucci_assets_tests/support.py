"""Test helpers: build hand-written Segment streams and run them through the real pipeline."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb

from vespucci_assets.capture import CaptureStore
from vespucci_assets.pipeline import build_all
from vespucci_assets.warehouse import connect_warehouse
from vespucci_assets.projects import Project
from vespucci_assets.segment import normalize

BASE_DAY = date(2026, 11, 20)
_ids = itertools.count(1)


def at(hhmmss: str, day_offset: int = 0, day: date = BASE_DAY) -> datetime:
    """'10:05:30' on BASE_DAY (+ day_offset days), as an aware UTC datetime."""
    h, m, *s = (int(x) for x in hhmmss.split(":"))
    return datetime(day.year, day.month, day.day, h, m, s[0] if s else 0, tzinfo=timezone.utc) + timedelta(days=day_offset)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def message(
    kind: str,
    when: datetime,
    *,
    device: str = "dev-1",
    user: str | None = None,
    message_id: str | None = None,
    anonymous: bool = True,
    **fields,
) -> dict:
    """A Segment message as Segment delivers it (with receivedAt, so its timestamp is kept).

    kind: 'Application Opened' and other track event names, 'screen:Home', 'page:Home', 'identify', 'group', 'alias'.
    """
    msg: dict = {"messageId": message_id or f"msg-{next(_ids):06d}", "timestamp": iso(when), "receivedAt": iso(when)}
    if anonymous:
        msg["anonymousId"] = device
    if user is not None:
        msg["userId"] = user
    if kind.startswith(("screen:", "page:")):
        msg["type"], msg["name"] = kind.split(":", 1)
    elif kind in ("identify", "group", "alias"):
        msg["type"] = kind
    else:
        msg["type"], msg["event"] = "track", kind
    msg.update(fields)
    return msg


@dataclass
class Pipeline:
    """A real capture store and DuckDB file under one folder."""

    root: Path

    def __post_init__(self):
        self.store = CaptureStore(self.root / "capture")
        self.writer = self.store.writer()
        self.conn = connect_warehouse(self.root / "vespucci.duckdb")

    def capture(self, project_id: str, messages: list[dict], received_at: datetime | None = None) -> None:
        received_at = received_at or datetime.now(timezone.utc)
        self.writer.append(project_id, [normalize(m, received_at) for m in messages])

    def build(self, project: Project, days: list[date]) -> None:
        build_all(self.conn, self.store, project, days)

    def rows(self, sql: str, params: dict | None = None) -> list[tuple]:
        return self.conn.execute(sql, params or {}).fetchall()

    def close(self) -> None:
        self.writer.close()
        self.conn.close()


def capture_demo_stream(root: Path, project_id: str, end_day: date, days: int, devices: int, seed: int) -> CaptureStore:
    """A generated mobile stream (duplicates, skewed clocks, logins) written through a real capture store."""
    from vespucci_assets.demo_data import demo_batches

    store = CaptureStore(root)
    writer = store.writer()
    for batch in demo_batches(project_id, style="action", end_day=end_day, days=days, devices=devices, seed=seed):
        writer.append(project_id, [normalize(m, batch.received_at, envelope=batch.envelope) for m in batch.messages])
    writer.close()
    return store


def project(tracking_method: str = "auto", timeout_minutes: int = 30, max_hours: int = 24, project_id: str = "acme") -> Project:
    return Project(
        project_id=project_id,
        name=project_id,
        tracking_method=tracking_method,
        session_timeout_minutes=timeout_minutes,
        max_session_hours=max_hours,
    )


def sessionize(tmp_path: Path, messages: list[dict], method: str, days: list[date] | None = None, **settings) -> list[dict]:
    """Capture `messages`, build every table, and return `method`'s sessions with their member ids in order.

    Each session: {'members': [messageIds in seq order], 'end_reason': ..., 'session_date': ..., plus all columns}.
    """
    pipeline = Pipeline(tmp_path)
    try:
        pipeline.capture("acme", messages)
        event_days = sorted({datetime.fromisoformat(m["timestamp"].replace("Z", "+00:00")).date() for m in messages})
        pipeline.build(project(**settings), days or event_days)
        return session_rows(pipeline.conn, method)
    finally:
        pipeline.close()


def session_rows(conn: duckdb.DuckDBPyConnection, method: str) -> list[dict]:
    table = {"time": "sessions_time_based", "action": "sessions_action_based"}[method]
    cursor = conn.execute(
        f"""
        SELECT s.*, list(se.message_id ORDER BY se.seq) AS members
        FROM {table} s JOIN session_events se
          ON se.project_id = s.project_id AND se.session_id = s.session_id AND se.tracking_method = $m
        GROUP BY ALL ORDER BY s.device_key, s.started_at
        """,
        {"m": method},
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def orphans(conn: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT message_id FROM orphan_events ORDER BY timestamp, message_id").fetchall()]
