"""The whole computation for one project and a set of days, in dependency order.

The Dagster assets call these same steps one asset at a time; tests, the demo and
benchmarks can call `build_all` to get identical tables without an orchestrator.
"""

from __future__ import annotations

from datetime import date

from vespucci_assets.capture import CaptureStore
from vespucci_assets.ingest import build_events, build_quarantine
from vespucci_assets.projects import Project
from vespucci_assets.reporting import build_chosen_sessions, build_method_sessions, build_metrics
from vespucci_assets.segment_warehouse import SegmentWarehouse
from vespucci_assets.sessionize import METHODS, SessionSettings, build_session_events


def session_settings(project: Project) -> SessionSettings:
    return SessionSettings(
        timeout_s=project.session_timeout_s,
        max_duration_s=project.max_session_s,
        tracking_method=project.tracking_method,
    )


def event_source(project: Project, store: CaptureStore) -> CaptureStore | SegmentWarehouse:
    """Where a project's messages come from: the capture store, or its Segment warehouse."""
    return SegmentWarehouse.for_project(project) if project.source == "warehouse" else store


def build_all(conn, store: CaptureStore, project: Project, days: list[date]) -> None:
    """Every table for these days: events (with neighbours, which the sessions read) first."""
    from vespucci_assets.sql_utils import window_days

    build_events(conn, event_source(project, store), project.project_id, window_days(days))
    build_quarantine(conn, store, project.project_id, days)
    build_session_events(conn, project.project_id, days, session_settings(project))
    for method in METHODS:
        build_method_sessions(conn, project.project_id, days, method)
    build_chosen_sessions(conn, project.project_id, days)
    build_metrics(conn, project.project_id, days)
