"""New projects become partitions; new capture data (late events too) re-runs exactly the stale partitions."""

import hashlib
import json
from datetime import datetime, timezone

import dagster as dg

from vespucci_assets.defs.jobs import partitions_job
from vespucci_assets.defs.partitions import PROJECTS, last_day, range_run_request
from vespucci_assets.defs.resources import VespucciHome
from vespucci_assets.scheduling import changed_days, stale_ranges
from vespucci_assets.segment import FIRST_DAY
from vespucci_assets.segment_warehouse import SegmentWarehouse, WarehouseSourceError

NEW_CAPTURE_DATA_SENSOR = "new_capture_data"


@dg.sensor(
    name=NEW_CAPTURE_DATA_SENSOR,
    job=partitions_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers new projects as partitions and runs the day partitions whose capture data grew, with their neighbours.",
)
def new_capture_data_sensor(context: dg.SensorEvaluationContext, vespucci: VespucciHome) -> dg.SensorResult:
    project_ids = [p.project_id for p in vespucci.registry().list()]
    known = set(context.instance.get_dynamic_partitions(PROJECTS.name))
    new_projects = [p for p in project_ids if p not in known]

    seen = json.loads(context.cursor) if context.cursor else {}
    sizes = vespucci.capture_store().day_sizes()
    today = last_day(datetime.now(timezone.utc))
    # A day with no partition yet (a timestamp up to 24 h ahead) stays unseen until its partition exists.
    future = {folder for folder in sizes if folder.rsplit("/", 1)[1] > today.isoformat()}
    for folder in future:
        sizes[folder] = seen.get(folder, 0)

    run_requests = []
    for project_id, days in sorted(changed_days(seen, sizes).items()):
        if project_id not in project_ids:
            continue
        digest = _digest({k: v for k, v in sizes.items() if k.startswith(f"{project_id}/")})
        for first, last in stale_ranges(days, FIRST_DAY, today):
            run_requests.append(range_run_request(project_id, first, last, run_key=f"capture:{project_id}:{first}:{last}:{digest}"))
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[PROJECTS.build_add_request(new_projects)] if new_projects else [],
        cursor=json.dumps(sizes, separators=(",", ":"), sort_keys=True),
    )


def _digest(sizes: dict[str, int]) -> str:
    return hashlib.sha1(json.dumps(sizes, sort_keys=True).encode()).hexdigest()[:12]


WAREHOUSE_LATE_ROWS_SENSOR = "warehouse_late_rows"


@dg.sensor(
    name=WAREHOUSE_LATE_ROWS_SENSOR,
    job=partitions_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="For projects reading their Segment warehouse: rows loaded since the last tick (by received_at) "
    "re-run their timestamp days with neighbours.",
)
def warehouse_late_rows_sensor(context: dg.SensorEvaluationContext, vespucci: VespucciHome) -> dg.SensorResult:
    loaded_until = json.loads(context.cursor) if context.cursor else {}
    today = last_day(datetime.now(timezone.utc))
    run_requests = []
    for project in vespucci.registry().list():
        if project.source != "warehouse":
            continue
        since = loaded_until.get(project.project_id)
        try:
            days, newest = SegmentWarehouse.for_project(project).changed_days(datetime.fromisoformat(since) if since else None)
        except WarehouseSourceError as exc:
            context.log.warning(str(exc))
            continue
        if newest is not None:
            loaded_until[project.project_id] = newest.isoformat()
        for first, last in stale_ranges(days, FIRST_DAY, today):
            run_requests.append(
                range_run_request(project.project_id, first, last, run_key=f"warehouse:{project.project_id}:{first}:{last}:{newest}")
            )
    return dg.SensorResult(run_requests=run_requests, cursor=json.dumps(loaded_until, sort_keys=True))
