"""Asset checks on every partition: blocking where a failure means wrong data, WARN where it means a suspicious stream."""

from datetime import datetime, timedelta, timezone
from typing import Callable

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
from vespucci_assets.projects import Project
from vespucci_assets.sessionize import ACTION, TIME

UNIQUE_MESSAGE_IDS = "unique_message_ids"
QUARANTINE_RATE = "quarantine_rate"
MEMBERS_CONSERVED = "members_conserved"
NO_MEMBER_IN_TWO_SESSIONS = "no_member_in_two_sessions"
ORPHAN_RATE_AND_METHOD_FIT = "orphan_rate_and_method_fit"
LONG_ACTIVITY_DEVICES = "long_activity_devices"
NO_OVERLAPPING_SESSIONS = "no_overlapping_sessions"
SESSION_BOUNDS = "session_bounds"
EVENT_COUNT_MATCHES_MEMBERS = "event_count_matches_members"
TIME_GAP_RULES = "time_gap_rules"
ACTION_SESSION_SHAPE = "action_session_shape"

Measure = Callable[[object, Project, list], quality.CheckOutcome]


def check_partition_keys(context: dg.AssetCheckExecutionContext) -> list[str]:
    """The partitions this check evaluation covers: one key, or a whole single-run range."""
    op_context = context.op_execution_context
    if op_context.has_partition_key:
        return [op_context.partition_key]
    return list(op_context.partition_keys)


def quality_check(
    asset: str, name: str, measure: Measure, *, blocking: bool, description: str, rate: bool = False
) -> dg.AssetChecksDefinition:
    """A check evaluated per (day, project) partition, so the UI shows each day's own result even in a ranged run.

    A violations check that finds none over the whole range finds none on any of its days, so
    only a range with violations (or a `rate`, which is each day's own) is measured day by day.
    """
    severity = dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN

    @dg.asset_check(
        asset=asset,
        name=name,
        blocking=blocking,
        description=description,
        partitions_def=DAY_X_PROJECT,
        pool=DUCKDB_POOL,
    )
    def _check(context: dg.AssetCheckExecutionContext, duckdb: Warehouse, vespucci: VespucciHome):
        with duckdb.get_connection() as conn:
            for project_id, days in days_by_project(check_partition_keys(context)).items():
                project = vespucci.project(project_id)
                whole_range = None if rate else measure(conn, project, days)
                for day in days:
                    outcome = whole_range if whole_range is not None and whole_range.passed else measure(conn, project, [day])
                    yield dg.AssetCheckEvaluation(
                        asset_key=dg.AssetKey(asset),
                        check_name=name,
                        passed=outcome.passed,
                        severity=severity,
                        blocking=blocking,
                        description=outcome.summary,
                        partition=str(partition_key(day, project_id)),
                        target_materialization_data=_latest_materialization(context, asset, partition_key(day, project_id)),
                        metadata={
                            "figure": dg.MetadataValue.float(float(outcome.figure)),
                            "examples": dg.MetadataValue.md(markdown_table(["example"], [(", ".join(map(str, row)),) for row in outcome.examples])),
                        },
                    )
        # The check op's own output; the evaluations above are its results.
        yield dg.Output(None)

    return _check


def _latest_materialization(context: dg.AssetCheckExecutionContext, asset: str, key) -> AssetCheckEvaluationTargetMaterializationData | None:
    """Ties a partition's evaluation to the materialization it checked, as Dagster does for single-partition runs."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[str(key)]), limit=1
    ).records
    if not records:
        return None
    return AssetCheckEvaluationTargetMaterializationData(
        run_id=records[0].event_log_entry.run_id, storage_id=records[0].storage_id, timestamp=records[0].timestamp
    )


CHECKS = [
    quality_check("events", UNIQUE_MESSAGE_IDS, lambda c, p, d: quality.unique_message_ids(c, p.project_id, d),
                  blocking=True, description="One row per (project, messageId) across all days."),
    quality_check("quarantined_events", QUARANTINE_RATE, lambda c, p, d: quality.quarantine_rate(c, p.project_id, d),
                  blocking=False, rate=True, description=f"At most {quality.MAX_QUARANTINE_RATE:.0%} of the day's messages quarantined."),
    quality_check("session_events", MEMBERS_CONSERVED, lambda c, p, d: quality.members_conserved(c, p.project_id, d),
                  blocking=True, description="members = time-session members = action-session members + orphans."),
    quality_check("session_events", NO_MEMBER_IN_TWO_SESSIONS,
                  lambda c, p, d: quality.no_member_in_two_sessions(c, p.project_id, d),
                  blocking=True, description="No member belongs to two sessions of one method."),
    quality_check("session_events", ORPHAN_RATE_AND_METHOD_FIT,
                  lambda c, p, d: quality.orphan_rate_and_method_fit(c, p.project_id, d),
                  blocking=False, rate=True, description="Orphan rate and whether the other tracking method fits the stream better."),
    quality_check("session_events", LONG_ACTIVITY_DEVICES, lambda c, p, d: quality.long_activity_devices(c, p.project_id, d),
                  blocking=False, description="Devices active for more than the max duration with no gap over the timeout."),
    quality_check("sessions_time_based", TIME_GAP_RULES, lambda c, p, d: quality.time_gap_rules(c, p.project_id, d, session_settings(p)),
                  blocking=True, description="Gaps inside a session <= timeout; between sessions > timeout unless cut."),
    quality_check("sessions_action_based", ACTION_SESSION_SHAPE, lambda c, p, d: quality.action_session_shape(c, p.project_id, d),
                  blocking=True, description="Starts with Opened (or Installed/Updated then Opened) unless continued; Backgrounded only last."),
]
for _method, _asset in ((TIME, "sessions_time_based"), (ACTION, "sessions_action_based")):
    CHECKS += [
        quality_check(_asset, NO_OVERLAPPING_SESSIONS,
                      lambda c, p, d, m=_method: quality.no_overlapping_sessions(c, p.project_id, d, m),
                      blocking=True, description="Sessions of one device never overlap."),
        quality_check(_asset, SESSION_BOUNDS,
                      lambda c, p, d, m=_method: quality.session_bounds(c, p.project_id, d, m, session_settings(p)),
                      blocking=True, description="started_at <= ended_at <= started_at + max duration, owned by its start day."),
        quality_check(_asset, EVENT_COUNT_MATCHES_MEMBERS,
                      lambda c, p, d, m=_method: quality.event_count_matches_members(c, p.project_id, d, m),
                      blocking=True, description="event_count equals the session's rows in session_events."),
    ]

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
