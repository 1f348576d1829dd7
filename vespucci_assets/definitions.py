"""The Dagster code location: `defs` for the current VESPUCCI_HOME."""

from __future__ import annotations

import dagster as dg

from vespucci_assets.defs.checks import CHECKS, yesterday_partitions_complete
from vespucci_assets.defs.ingestion.assets import events_asset, quarantined_events_asset
from vespucci_assets.defs.ingestion.sensors import new_capture_data_sensor, warehouse_late_rows_sensor
from vespucci_assets.defs.jobs import completeness_job, partitions_job
from vespucci_assets.defs.reporting.assets import session_metrics_daily_asset
from vespucci_assets.defs.resources import build_resources
from vespucci_assets.defs.sessions.assets import (
    session_events_asset,
    sessions_action_based_asset,
    sessions_asset,
    sessions_time_based_asset,
)
from vespucci_assets.defs.sessions.schedules import completeness_schedule, daily_sessions_schedule
from vespucci_assets.home import Home

ASSETS = [
    events_asset,
    quarantined_events_asset,
    session_events_asset,
    sessions_time_based_asset,
    sessions_action_based_asset,
    sessions_asset,
    session_metrics_daily_asset,
]


def build_definitions(home: Home) -> dg.Definitions:
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=[*CHECKS, yesterday_partitions_complete],
        jobs=[partitions_job, completeness_job],
        schedules=[daily_sessions_schedule, completeness_schedule],
        sensors=[new_capture_data_sensor, warehouse_late_rows_sensor],
        resources=build_resources(home),
    )


defs = build_definitions(Home.from_env())
