"""Sessions: membership for both tracking methods, per-method session tables, chosen `sessions`."""

from datetime import timedelta

import dagster as dg
from dagster_duckdb import DuckDBResource

from vespucci_assets.defs.common import ASSET_DEFAULTS, warehouse
from vespucci_assets.defs.metadata import asset_metadata, partition_metadata
from vespucci_assets.defs.partitions import NEIGHBOUR_DAYS, days_by_project
from vespucci_assets.defs.resources import VespucciHome
from vespucci_assets.pipeline import session_settings
from vespucci_assets.reporting import SESSION_TABLES, build_chosen_sessions, build_method_sessions
from vespucci_assets.sessionize import ACTION, TIME, build_session_events
from vespucci_assets.tables import CHOSEN_SESSIONS, SESSION_EVENTS, SESSIONS_ACTION_BASED, SESSIONS_TIME_BASED

SESSION_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=30))
SESSION_PREVIEW = ["session_date", "device_key", "user_id", "started_at", "duration_s", "event_count", "end_reason"]


@dg.asset(
    name="session_events",
    group_name="sessions",
    description=SESSION_EVENTS.description,
    metadata=asset_metadata(SESSION_EVENTS),
    deps=[dg.AssetDep("events", partition_mapping=NEIGHBOUR_DAYS)],
    **ASSET_DEFAULTS,
)
def session_events_asset(
    context: dg.AssetExecutionContext, vespucci: VespucciHome, duckdb: DuckDBResource
) -> dg.MaterializeResult:
    """Which members make each session (both methods), orphans, and the auto method choice."""
    partitions = days_by_project(context.partition_keys)
    orphans = members = 0
    with warehouse(duckdb) as conn:
        for project_id, days in partitions.items():
            stats = build_session_events(conn, project_id, days, session_settings(vespucci.project(project_id)))
            orphans += stats.orphan_events
            members += stats.members
        metadata = partition_metadata(conn, SESSION_EVENTS, partitions, ["session_date", "tracking_method", "session_id", "seq", "timestamp"])
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "orphan_events": dg.MetadataValue.int(orphans),
            "orphan_rate": dg.MetadataValue.float(orphans / members if members else 0.0),
        }
    )


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
    def _asset(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> dg.MaterializeResult:
        partitions = days_by_project(context.partition_keys)
        with warehouse(duckdb) as conn:
            sessions = sum(build_method_sessions(conn, project_id, days, method) for project_id, days in partitions.items())
            metadata = partition_metadata(conn, table, partitions, SESSION_PREVIEW)
            median = _median_duration(conn, SESSION_TABLES[method], partitions)
        return dg.MaterializeResult(
            metadata={
                **metadata,
                "sessions": dg.MetadataValue.int(sessions),
                "median_duration_s": dg.MetadataValue.float(median),
            }
        )

    return _asset


sessions_time_based_asset = _method_sessions_asset(TIME, SESSIONS_TIME_BASED)
sessions_action_based_asset = _method_sessions_asset(ACTION, SESSIONS_ACTION_BASED)


@dg.asset(
    name="sessions",
    group_name="sessions",
    description="Sessions of each project's chosen tracking method, plus resolved_user_id (a view over chosen_sessions).",
    metadata=asset_metadata(CHOSEN_SESSIONS),
    deps=["sessions_time_based", "sessions_action_based", "session_events"],
    freshness_policy=SESSION_FRESHNESS,
    **ASSET_DEFAULTS,
)
def sessions_asset(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """The chosen method per project (auto: per day) and user resolution at query time."""
    partitions = days_by_project(context.partition_keys)
    used: dict[str, int] = {}
    with warehouse(duckdb) as conn:
        for project_id, days in partitions.items():
            for method, count in build_chosen_sessions(conn, project_id, days).items():
                used[method] = used.get(method, 0) + count
        metadata = partition_metadata(conn, CHOSEN_SESSIONS, partitions, ["tracking_method", *SESSION_PREVIEW])
    return dg.MaterializeResult(
        metadata={**metadata, **{f"{method}_sessions": dg.MetadataValue.int(n) for method, n in sorted(used.items())}}
    )


def _median_duration(conn, table: str, partitions) -> float:
    values = []
    for project_id, days in partitions.items():
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE target_days AS SELECT unnest($d::DATE[]) AS target_date", {"d": days}
        )
        values.append(
            conn.execute(
                f"SELECT median(duration_s) FROM {table} WHERE project_id = $p AND session_date IN (SELECT target_date FROM target_days)",
                {"p": project_id},
            ).fetchone()[0]
        )
    present = [v for v in values if v is not None]
    return float(sum(present) / len(present)) if present else 0.0
