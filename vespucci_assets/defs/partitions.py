"""Day (UTC) x project partitions; projects are dynamic, so a new one needs no code change."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timezone

import dagster as dg

from vespucci_assets.segment import FIRST_DAY

PROJECTS = dg.DynamicPartitionsDefinition(name="project")
# end_offset=1 keeps today's partition available: intake data lands there first.
DAYS = dg.DailyPartitionsDefinition(start_date=FIRST_DAY.isoformat(), end_offset=1)
DAY_X_PROJECT = dg.MultiPartitionsDefinition({"date": DAYS, "project": PROJECTS})

# Sessions of day D are computed from the events of D-1, D and D+1 (SPEC section 7).
NEIGHBOUR_DAYS = dg.MultiPartitionMapping(
    {
        "date": dg.DimensionPartitionMapping(
            "date",
            dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=1, allow_nonexistent_upstream_partitions=True),
        ),
        "project": dg.DimensionPartitionMapping("project", dg.IdentityPartitionMapping()),
    }
)


def partition_key(day: date, project_id: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"date": day.isoformat(), "project": project_id})


def days_by_project(partition_keys) -> dict[str, list[date]]:
    """Group a run's partition keys ('2026-11-20|acme') into {project: [days]}."""
    grouped: dict[str, list[date]] = defaultdict(list)
    for key in partition_keys:
        if isinstance(key, dg.MultiPartitionKey):
            dims = key.keys_by_dimension
            day, project_id = dims["date"], dims["project"]
        else:
            day, project_id = str(key).split("|", 1)
        grouped[project_id].append(date.fromisoformat(day))
    return {project_id: sorted(days) for project_id, days in sorted(grouped.items())}


def last_day(now: datetime) -> date:
    """The newest day partition at `now`: today (UTC), by DAYS' end_offset=1."""
    return now.astimezone(timezone.utc).date()


def range_run_request(project_id: str, first: date, last: date, run_key: str, tags: dict | None = None) -> dg.RunRequest:
    """One run over days [first, last] of one project: single-run backfill, one DuckDB writer."""
    return dg.RunRequest(
        run_key=run_key,
        tags={
            "dagster/asset_partition_range_start": str(partition_key(first, project_id)),
            "dagster/asset_partition_range_end": str(partition_key(last, project_id)),
            "vespucci/project": project_id,
            **(tags or {}),
        },
    )
