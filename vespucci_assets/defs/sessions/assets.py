"""Sessions: membership for both tracking methods, per-method session tables, chosen `sessions`."""

from datetime import timedelta

import dagster as dg

from vespucci_assets.defs.common import ASSET_DEFAULTS
from vespucci_assets.defs.metadata import add_daily_figures, asset_metadata, materialization_metadata
from vespucci_assets.defs.partitions import NEIGHBOUR_DAYS, days_by_project
from vespucci_assets.defs.resources import VespucciHome, Warehouse
from vespucci_assets.pipeline import session_settings
from vespucci_assets.reporting import build_chosen_sessions, build_method_sessions
from vespucci_assets.sessionize import ACTION, TIME, build_session_events
from vespucci_assets.tables import CHOSEN_SESSIONS, METHOD_CHOICE, SESSION_EVENTS, SESSIONS_ACTION_BASED, SESSIONS_TIME_BASED

# Yesterday's sessions close once today's events are in: a day and a few hours of slack.
SESSION_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=30), warn_window=timedelta(hours=26))
CHOSEN_FROM = (SESSIONS_TIME_BASED.name, SESSIONS_ACTION_BASED.name)
SESSION_PREVIEW = ["session_date", "device_key", "user_id", "started_at", "duration_s", "event_count", "end_reason"]
SESSION_FIGURES = {
    "dagster/row_count": "count(x.session_id)",
    "sessions": "count(x.session_id)",
    "median_duration_s": "median(x.duration_s)",
    "events_per_session": "avg(x.event_count)",
}
SESSION_EVENTS_FIGURES = {"dagster/row_count": "count(x.session_date)"}
METHOD_CHOICE_FIGURES = {
    "orphan_events": "coalesce(sum(x.members - x.members_in_spans), 0)::BIGINT",
    "orphan_rate": "sum(x.members - x.members_in_spans) / nullif(sum(x.members), 0)",
    "action_coverage": "max(x.action_coverage)",
}


@dg.asset(
    name="session_events",
    group_name="sessions",
    description=SESSION_EVENTS.description,
    metadata=asset_metadata(SESSION_EVENTS),
    deps=[dg.AssetDep("events", partition_mapping=NEIGHBOUR_DAYS)],
    **ASSET_DEFAULTS,
)
def session_events_asset(
    context: dg.AssetExecutionContext, vespucci: VespucciHome, duckdb: Warehouse
) -> dg.MaterializeResult:
    """Which members make each session (both methods), the sessions' summaries, orphans, and the auto method choice."""
    for project_id, days in days_by_project(context.partition_keys).items():
        project = vespucci.project(project_id)
        with duckdb.project_connection(project) as conn:
            build_session_events(conn, project_id, days, session_settings(project))
            partitions = {project_id: days}
            add_daily_figures(context, conn, SESSION_EVENTS.name, SESSION_EVENTS.date_column, partitions, SESSION_EVENTS_FIGURES)
            add_daily_figures(context, conn, METHOD_CHOICE.name, METHOD_CHOICE.date_column, partitions, METHOD_CHOICE_FIGURES)
            metadata = materialization_metadata(conn, SESSION_EVENTS, partitions, ["session_date", "tracking_method", "session_id", "seq", "timestamp"])
    return dg.MaterializeResult(metadata=metadata)


def _method_sessions_asset(method: str, table):
    @dg.asset(
        name=table.name,
        group_name="sessions",
        description=table.description,
        metadata=asset_metadata(table),
        deps=["session_events", dg.AssetDep("events", partition_mapping=NEIGHBOUR_DAYS)],
        freshness_policy=SESSION_FRESHNESS,
        **ASSET_DEFAULTS,
    )
    def _asset(context: dg.AssetExecutionContext, vespucci: VespucciHome, duckdb: Warehouse) -> dg.MaterializeResult:
        for project_id, days in days_by_project(context.partition_keys).items():
            with duckdb.project_connection(vespucci.project(project_id)) as conn:
                build_method_sessions(conn, project_id, days, method)
                partitions = {project_id: days}
                add_daily_figures(context, conn, table.name, table.date_column, partitions, SESSION_FIGURES)
                metadata = materialization_metadata(conn, table, partitions, SESSION_PREVIEW)
        return dg.MaterializeResult(metadata=metadata)

    return _asset


sessions_time_based_asset = _method_sessions_asset(TIME, SESSIONS_TIME_BASED)
sessions_action_based_asset = _method_sessions_asset(ACTION, SESSIONS_ACTION_BASED)


@dg.asset(
    name="sessions",
    group_name="sessions",
    description="Sessions of each project's chosen tracking method, plus resolved_user_id (a view over chosen_sessions).",
    metadata=asset_metadata(CHOSEN_SESSIONS, CHOSEN_FROM),
    deps=["sessions_time_based", "sessions_action_based", "session_events"],
    freshness_policy=SESSION_FRESHNESS,
    **ASSET_DEFAULTS,
)
def sessions_asset(context: dg.AssetExecutionContext, vespucci: VespucciHome, duckdb: Warehouse) -> dg.MaterializeResult:
    """The chosen method per project (auto: per day) and user resolution at query time."""
    for project_id, days in days_by_project(context.partition_keys).items():
        with duckdb.project_connection(vespucci.project(project_id)) as conn:
            build_chosen_sessions(conn, project_id, days)
            partitions = {project_id: days}
            add_daily_figures(
                context, conn, CHOSEN_SESSIONS.name, CHOSEN_SESSIONS.date_column, partitions,
                {**SESSION_FIGURES, "action_sessions": "count(x.session_id) FILTER (WHERE x.tracking_method = 'action')"},
            )
            metadata = materialization_metadata(
                conn, CHOSEN_SESSIONS, partitions, ["tracking_method", *SESSION_PREVIEW], CHOSEN_FROM
            )
    return dg.MaterializeResult(metadata=metadata)
