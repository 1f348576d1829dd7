"""Reporting: daily session metrics per project and tracking method."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from vespucci_assets.defs.common import ASSET_DEFAULTS, warehouse
from vespucci_assets.defs.metadata import asset_metadata, partition_metadata
from vespucci_assets.defs.partitions import days_by_project
from vespucci_assets.reporting import build_metrics
from vespucci_assets.tables import SESSION_METRICS_DAILY


@dg.asset(
    name="session_metrics_daily",
    group_name="reporting",
    description=SESSION_METRICS_DAILY.description,
    metadata=asset_metadata(SESSION_METRICS_DAILY),
    deps=["sessions", "session_events"],
    **ASSET_DEFAULTS,
)
def session_metrics_daily_asset(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Sessions, devices, users, durations, bounce, orphans and coverage per day and method."""
    partitions = days_by_project(context.partition_keys)
    with warehouse(duckdb) as conn:
        for project_id, days in partitions.items():
            build_metrics(conn, project_id, days)
        metadata = partition_metadata(
            conn, SESSION_METRICS_DAILY, partitions,
            ["session_date", "tracking_method", "sessions", "median_duration_s", "bounce_rate", "orphan_events", "action_coverage"],
        )
    return dg.MaterializeResult(metadata=metadata)
