"""Ingestion: captured Segment messages -> `events` and `quarantined_events`."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from vespucci_assets.defs.common import ASSET_DEFAULTS, warehouse
from vespucci_assets.defs.metadata import asset_metadata, partition_metadata
from vespucci_assets.defs.partitions import days_by_project
from vespucci_assets.defs.resources import VespucciHome
from vespucci_assets.ingest import build_events, build_quarantine
from vespucci_assets.tables import EVENTS, QUARANTINED_EVENTS


@dg.asset(
    name="events",
    group_name="ingestion",
    description=EVENTS.description,
    metadata=asset_metadata(EVENTS),
    **ASSET_DEFAULTS,
)
def events_asset(context: dg.AssetExecutionContext, vespucci: VespucciHome, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Deduplicated messages of the event day, timestamps corrected (SPEC section 3)."""
    partitions = days_by_project(context.partition_keys)
    totals = {"events": 0, "members": 0, "duplicates": 0}
    with warehouse(duckdb) as conn:
        for project_id, days in partitions.items():
            vespucci.project(project_id)
            stats = build_events(conn, vespucci.capture_store(), project_id, days)
            totals["events"] += stats.events
            totals["members"] += stats.members
            totals["duplicates"] += stats.duplicates
            context.log.info(f"{project_id}: {len(days)} day(s), {stats.events} events, {stats.duplicates} duplicates")
        metadata = partition_metadata(conn, EVENTS, partitions, ["event_date", "type", "event", "name", "device_key", "timestamp"])
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "members": dg.MetadataValue.int(totals["members"]),
            "duplicates": dg.MetadataValue.int(totals["duplicates"]),
        }
    )


@dg.asset(
    name="quarantined_events",
    group_name="ingestion",
    description=QUARANTINED_EVENTS.description,
    metadata=asset_metadata(QUARANTINED_EVENTS),
    **ASSET_DEFAULTS,
)
def quarantined_events_asset(
    context: dg.AssetExecutionContext, vespucci: VespucciHome, duckdb: DuckDBResource
) -> dg.MaterializeResult:
    """Rejected messages by arrival day, each with its reason."""
    partitions = days_by_project(context.partition_keys)
    with warehouse(duckdb) as conn:
        quarantined = sum(
            build_quarantine(conn, vespucci.capture_store(), project_id, days) for project_id, days in partitions.items()
        )
        metadata = partition_metadata(conn, QUARANTINED_EVENTS, partitions, ["received_at", "reason", "raw"])
    return dg.MaterializeResult(metadata={**metadata, "quarantined": dg.MetadataValue.int(quarantined)})
