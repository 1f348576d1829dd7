"""The daily run of yesterday (and the day before, whose sessions crossing midnight close now), and the completeness check."""

import dagster as dg

from vespucci_assets.defs.jobs import completeness_job, partitions_job
from vespucci_assets.defs.partitions import PROJECTS, range_run_request
from vespucci_assets.scheduling import daily_range
from vespucci_assets.segment import FIRST_DAY

DAILY_SESSIONS_SCHEDULE = "daily_sessions"
COMPLETENESS_SCHEDULE = "hourly_completeness"


@dg.schedule(
    name=DAILY_SESSIONS_SCHEDULE,
    job=partitions_job,
    cron_schedule="30 0 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every project: the day before yesterday, yesterday and today, one run per project.",
)
def daily_sessions_schedule(context: dg.ScheduleEvaluationContext):
    today = context.scheduled_execution_time.date()
    first, last = daily_range(today)
    for project_id in context.instance.get_dynamic_partitions(PROJECTS.name):
        yield range_run_request(project_id, max(first, FIRST_DAY), last, run_key=f"daily:{project_id}:{today}")


completeness_schedule = dg.ScheduleDefinition(
    name=COMPLETENESS_SCHEDULE,
    job=completeness_job,
    cron_schedule="0 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Checks every hour that yesterday's session partitions exist for every project.",
)
