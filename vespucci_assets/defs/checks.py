"""Asset checks on every partition: blocking where a failure means wrong data, WARN where it means a suspicious stream."""

from datetime import datetime, timedelta, timezone
import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationTargetMaterializationData

from vespucci_assets import quality
from vespucci_assets.defs.common import DUCKDB_POOL
from vespucci_assets.defs.metadata import markdown_table
from vespucci_assets.defs.jobs import YESTERDAY_COMPLETE
from vespucci_assets.defs.partitions import DAY_X_PROJECT, days_by_project, partition_key
from vespucci_assets.defs.resources import VespucciHome, Warehouse
from vespucci_assets.pipeline import session_settings
from vespucci_assets.scheduling import day_due_complete

def check_partition_keys(context: dg.AssetCheckExecutionContext) -> list[str]:
    """The partitions this check evaluation covers: one key, or a whole single-run range."""
    op_context = context.op_execution_context
    if op_context.has_partition_key:
        return [op_context.partition_key]
    return list(op_context.partition_keys)


def quality_check(check: quality.PartitionCheck) -> dg.AssetChecksDefinition:
    """A check evaluated per (day, project) partition, so the UI shows each day's own result even in a ranged run.

    A violations check that finds none over the whole range finds none on any of its days, so
    only a range with violations (or a `rate`, which is each day's own) is measured day by day.
    """
    severity = dg.AssetCheckSeverity.ERROR if check.blocking else dg.AssetCheckSeverity.WARN

    @dg.asset_check(
        asset=check.asset,
        name=check.name,
        blocking=check.blocking,
        description=check.description,
        partitions_def=DAY_X_PROJECT,
        pool=DUCKDB_POOL,
    )
    def _check(context: dg.AssetCheckExecutionContext, duckdb: Warehouse, vespucci: VespucciHome):
        for project_id, days in days_by_project(check_partition_keys(context)).items():
            project = vespucci.project(project_id)
            with duckdb.project_connection(project) as conn:
                outcomes = quality.run_partition_checks(conn, project_id, days, session_settings(project), only=check)
                checked = _latest_materializations(context, check.asset, [str(partition_key(day, project_id)) for day in days])
                for day in days:
                    outcome = outcomes[(check.asset, check.name, day)]
                    key = partition_key(day, project_id)
                    yield dg.AssetCheckEvaluation(
                        asset_key=dg.AssetKey(check.asset),
                        check_name=check.name,
                        passed=outcome.passed,
                        severity=severity,
                        blocking=check.blocking,
                        description=outcome.summary,
                        partition=str(key),
                        target_materialization_data=checked.get(str(key)),
                        metadata={
                            "figure": dg.MetadataValue.float(float(outcome.figure)),
                            "examples": dg.MetadataValue.md(markdown_table(["example"], [(", ".join(map(str, row)),) for row in outcome.examples])),
                        },
                    )
        # The check op's own output; the evaluations above are its results.
        yield dg.Output(None)

    return _check


def _latest_materializations(
    context: dg.AssetCheckExecutionContext, asset: str, keys: list[str]
) -> dict[str, AssetCheckEvaluationTargetMaterializationData]:
    """Ties each partition's evaluation to the materialization it checked, as Dagster does for single-partition runs.

    One query per page of the range's materializations (newest first), not one per partition;
    further pages only while a partition is unmatched (others re-materialized many times since).
    """
    latest: dict[str, AssetCheckEvaluationTargetMaterializationData] = {}
    cursor = None
    while True:
        page = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=keys), limit=len(keys) * 4, cursor=cursor
        )
        for record in page.records:
            key = record.event_log_entry.dagster_event.partition
            if key not in latest:
                latest[key] = AssetCheckEvaluationTargetMaterializationData(
                    run_id=record.event_log_entry.run_id, storage_id=record.storage_id, timestamp=record.timestamp
                )
        if len(latest) == len(set(keys)) or not page.has_more:
            break
        cursor = page.cursor
    return latest


CHECKS = [quality_check(check) for check in quality.PARTITION_CHECKS]

COMPLETED_ASSETS = ("sessions_time_based", "sessions_action_based", "sessions", "session_metrics_daily")


@dg.asset_check(
    asset="sessions",
    name=YESTERDAY_COMPLETE,
    blocking=False,
    description="Yesterday's session partitions are materialized for every project (checked hourly, 3 h after midnight UTC).",
)
def yesterday_partitions_complete(context: dg.AssetCheckExecutionContext, vespucci: VespucciHome) -> dg.AssetCheckResult:
    day = day_due_complete(datetime.now(timezone.utc))
    day_end = datetime.combine(day + timedelta(days=1), datetime.min.time(), timezone.utc).isoformat()
    # A project created after that day cannot have been due for it.
    projects = [p.project_id for p in vespucci.registry().list() if p.created_at <= day_end]
    missing = []
    for asset in COMPLETED_ASSETS:
        materialized = context.instance.get_materialized_partitions(dg.AssetKey(asset))
        missing += [(asset, p) for p in projects if str(partition_key(day, p)) not in materialized]
    return dg.AssetCheckResult(
        passed=not missing,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{day}: {len(missing)} missing partition(s) of {len(projects) * len(COMPLETED_ASSETS)}",
        metadata={
            "day": day.isoformat(),
            "projects": len(projects),
            "missing_partitions": len(missing),
            "missing": dg.MetadataValue.md(markdown_table(["asset", "project"], missing[: quality.EXAMPLES * 4])),
        },
    )
