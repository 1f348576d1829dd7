"""Ingestion: captured Segment messages -> `events` and `quarantined_events`."""

import dagster as dg

from vespucci_assets.defs.common import ASSET_DEFAULTS
from vespucci_assets.defs.metadata import add_daily_figures, asset_metadata, materialization_metadata
from vespucci_assets.defs.partitions import days_by_project
from vespucci_assets.defs.resources import VespucciHome, Warehouse
from vespucci_assets.ingest import build_events, build_quarantine
from vespucci_assets.pipeline import event_source
from vespucci_assets.segment_warehouse import WarehouseSourceError
from vespucci_assets.tables import EVENTS, QUARANTINED_EVENTS

# count(x.<date column>): the join key is read anyway, while message_id (stored uncompressed) is not.
EVENT_FIGURES = {
    "dagster/row_count": "count(x.event_date)",
    "members": "count(x.event_date) FILTER (WHERE x.is_member)",
    "duplicates": "coalesce(sum(x.copies - 1), 0)::BIGINT",
    "devices": "count(DISTINCT x.device_key)",
}
QUARANTINE_FIGURES = {"dagster/row_count": "count(x.received_date)", "quarantined": "count(x.received_date)"}


@dg.asset(
    name="events",
    group_name="ingestion",
    description=EVENTS.description,
    metadata=asset_metadata(EVENTS),
    **ASSET_DEFAULTS,
)
def events_asset(context: dg.AssetExecutionContext, vespucci: VespucciHome, duckdb: Warehouse) -> dg.MaterializeResult:
    """Deduplicated messages of the event day, timestamps corrected (SPEC section 3)."""
    for project_id, days in days_by_project(context.partition_keys).items():
        project = vespucci.project(project_id)
        try:
            with duckdb.project_connection(project) as conn:
                stats = build_events(conn, event_source(project, vespucci.capture_store()), project_id, days)
                context.log.info(f"{project_id} ({project.engine}): {len(days)} day(s), {stats.events} events, "
                                 f"{stats.duplicates} duplicates")
                partitions = {project_id: days}
                add_daily_figures(context, conn, EVENTS.name, EVENTS.date_column, partitions, EVENT_FIGURES)
                metadata = materialization_metadata(conn, EVENTS, partitions, ["event_date", "type", "event", "name", "device_key", "timestamp"])
        except WarehouseSourceError as exc:
            raise dg.Failure(description=str(exc)) from None
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    name="quarantined_events",
    group_name="ingestion",
    description=QUARANTINED_EVENTS.description,
    metadata=asset_metadata(QUARANTINED_EVENTS),
    **ASSET_DEFAULTS,
)
def quarantined_events_asset(
    context: dg.AssetExecutionContext, vespucci: VespucciHome, duckdb: Warehouse
) -> dg.MaterializeResult:
    """Rejected messages by arrival day, each with its reason."""
    for project_id, days in days_by_project(context.partition_keys).items():
        with duckdb.project_connection(vespucci.project(project_id)) as conn:
            build_quarantine(conn, vespucci.capture_store(), project_id, days)
            partitions = {project_id: days}
            add_daily_figures(context, conn, QUARANTINED_EVENTS.name, QUARANTINED_EVENTS.date_column, partitions, QUARANTINE_FIGURES)
            metadata = materialization_metadata(conn, QUARANTINED_EVENTS, partitions, ["received_at", "reason", "raw"])
    return dg.MaterializeResult(metadata=metadata)
