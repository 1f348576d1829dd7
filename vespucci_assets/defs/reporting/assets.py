"""Reporting: daily session metrics per project and tracking method."""

import dagster as dg

from vespucci_assets.defs.common import ASSET_DEFAULTS
from vespucci_assets.defs.metadata import add_daily_figures, asset_metadata, materialization_metadata
from vespucci_assets.defs.partitions import days_by_project
from vespucci_assets.defs.resources import VespucciHome, Warehouse
from vespucci_assets.reporting import build_metrics
from vespucci_assets.tables import SESSION_METRICS_DAILY

CHOSEN = "FILTER (WHERE x.is_chosen_method)"
METRIC_FIGURES = {
    "dagster/row_count": "count(x.tracking_method)",
    "sessions": f"coalesce(sum(x.sessions) {CHOSEN}, 0)::BIGINT",
    "bounce_rate": "max(CASE WHEN x.is_chosen_method THEN x.bounce_rate END)",
    "action_coverage": "max(x.action_coverage)",
}


@dg.asset(
    name="session_metrics_daily",
    group_name="reporting",
    description=SESSION_METRICS_DAILY.description,
    metadata=asset_metadata(SESSION_METRICS_DAILY),
    deps=["sessions", "session_events"],
    **ASSET_DEFAULTS,
)
def session_metrics_daily_asset(
    context: dg.AssetExecutionContext, vespucci: VespucciHome, duckdb: Warehouse
) -> dg.MaterializeResult:
    """Sessions, devices, users, durations, bounce, orphans and coverage per day and method."""
    for project_id, days in days_by_project(context.partition_keys).items():
        with duckdb.project_connection(vespucci.project(project_id)) as conn:
            build_metrics(conn, project_id, days)
            partitions = {project_id: days}
            add_daily_figures(context, conn, SESSION_METRICS_DAILY.name, SESSION_METRICS_DAILY.date_column, partitions, METRIC_FIGURES)
            metadata = materialization_metadata(
                conn, SESSION_METRICS_DAILY, partitions,
                ["session_date", "tracking_method", "sessions", "median_duration_s", "bounce_rate", "orphan_events", "action_coverage"],
            )
    return dg.MaterializeResult(metadata=metadata)
