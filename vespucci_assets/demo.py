"""`vespucci demo`: two sample projects, a week of mobile traffic, real Dagster runs, a summary."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Callable

import duckdb

from vespucci_assets.capture import CaptureStore
from vespucci_assets.demo_data import demo_batches
from vespucci_assets.home import Home
from vespucci_assets.projects import Project, ProjectError, Registry
from vespucci_assets.runs import materialize_partitions
from vespucci_assets.segment import normalize

DEMO_PROJECTS = (
    Project(project_id="demo-action", name="Mercato iOS/Android (lifecycle events)", tracking_method="action"),
    Project(project_id="demo-time", name="Mercato Lite (no lifecycle events)", tracking_method="time"),
)
# Unusable messages real traffic carries; the demo shows them quarantined, not dropped.
BAD_MESSAGES = (
    {"type": "track", "event": "Order Completed", "messageId": "demo-bad-no-ids"},
    {"event": "Product Viewed", "anonymousId": "demo-bad", "messageId": "demo-bad-no-type"},
    {"type": "screen", "name": "Home", "anonymousId": "demo-bad", "messageId": "demo-bad-future",
     "timestamp": "2099-01-01T00:00:00Z"},
)

SUMMARY_SQL = """
WITH ev AS (
    SELECT project_id, count(*) AS events, sum(copies - 1) AS duplicates, count(DISTINCT event_date) AS days
    FROM events GROUP BY ALL
), q AS (
    SELECT project_id, count(*) AS quarantined FROM quarantined_events GROUP BY ALL
), s AS (
    SELECT project_id, count(*) AS sessions, median(duration_s) AS median_s,
           count(*) FILTER (WHERE resolved_user_id IS NOT NULL) AS attributed,
           count(*) FILTER (WHERE user_id IS NULL AND resolved_user_id IS NOT NULL) AS resolved_later
    FROM sessions GROUP BY ALL
), m AS (
    SELECT project_id,
           sum(sessions) FILTER (WHERE tracking_method = 'time') AS time_sessions,
           sum(sessions) FILTER (WHERE tracking_method = 'action') AS action_sessions,
           sum(orphan_events) FILTER (WHERE tracking_method = 'action') AS orphans,
           avg(action_coverage) FILTER (WHERE tracking_method = 'action') AS coverage
    FROM session_metrics_daily GROUP BY ALL
)
SELECT ev.project_id, ev.days, ev.events, ev.duplicates, coalesce(q.quarantined, 0),
       m.time_sessions, m.action_sessions, s.sessions, s.median_s, m.orphans, m.coverage, s.resolved_later
FROM ev LEFT JOIN q USING (project_id) LEFT JOIN s USING (project_id) LEFT JOIN m USING (project_id)
WHERE ev.project_id IN ('demo-action', 'demo-time')
ORDER BY ev.project_id
"""
SUMMARY_HEADER = ("project", "days", "events", "dupes", "quarant.", "time sess", "action sess",
                  "sessions", "median", "orphans", "coverage", "resolved later")


def run_demo(home: Home, days: int = 7, devices: int = 60, out: Callable[[str], None] = print) -> list[tuple]:
    """Capture the sample stream (once), materialize every partition, print the per-project summary."""
    registry = Registry(home.registry_path)
    store = CaptureStore(home.capture_dir)
    end_day = datetime.now(timezone.utc).date() - timedelta(days=1)
    for project in DEMO_PROJECTS:
        try:
            registry.get(project.project_id)
            out(f"{project.project_id}: already set up, re-materializing its captured data")
            continue
        except ProjectError:
            registry.add(project)
        captured = _capture_sample(store, project.project_id, end_day, days, devices)
        out(f"{project.project_id}: captured {captured} messages for {days} days ending {end_day}")
    materialize_partitions(home, [p.project_id for p in DEMO_PROJECTS], progress=out)
    with duckdb.connect(str(home.warehouse_path), read_only=True) as conn:
        rows = conn.execute(SUMMARY_SQL).fetchall()
    out("")
    out(_format_table(SUMMARY_HEADER, rows))
    out("")
    out(f"State lives in {home.root}. Open the Dagster UI on it with `make dev`.")
    return rows


def _capture_sample(store: CaptureStore, project_id: str, end_day: date, days: int, devices: int) -> int:
    style = "action" if project_id == "demo-action" else "time"
    writer = store.writer()
    count = 0
    try:
        for batch in demo_batches(project_id, style=style, end_day=end_day, days=days, devices=devices):
            items = [normalize(m, batch.received_at, envelope=batch.envelope) for m in batch.messages]
            writer.append(project_id, items)
            count += len(items)
        received = datetime.combine(end_day, datetime.min.time(), timezone.utc) + timedelta(hours=12)
        writer.append(project_id, [normalize(m, received) for m in BAD_MESSAGES])
        count += len(BAD_MESSAGES)
    finally:
        writer.close()
    return count


def _format_table(header: tuple[str, ...], rows: list[tuple]) -> str:
    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

    table = [header] + [tuple(cell(v) for v in row) for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
