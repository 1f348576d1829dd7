"""Real Dagster runs of every asset for chosen partitions, recorded in the instance."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Callable

import dagster as dg

from vespucci_assets.capture import EVENTS, QUARANTINE
from vespucci_assets.defs.partitions import PROJECTS, range_run_request
from vespucci_assets.home import Home
from vespucci_assets.projects import Project, ProjectError, Registry
from vespucci_assets.segment_warehouse import SegmentWarehouse


QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


FAILURE_PREFIX = f"{dg.Failure.__module__}.{dg.Failure.__name__}: "


class MaterializeFailed(RuntimeError):
    pass


@dataclass
class RunSummary:
    runs: list[str] = field(default_factory=list)
    partitions: int = 0


def dagster_instance(home: Home) -> dg.DagsterInstance:
    """The instance under DAGSTER_HOME, or VESPUCCI_HOME/dagster with this project's dagster.yaml."""
    dagster_home = home.dagster_home
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(INSTANCE_TEMPLATE, config)
    return dg.DagsterInstance.from_config(str(dagster_home))


INSTANCE_TEMPLATE = Path(__file__).resolve().parent.parent / "dagster.yaml"


def days_with_data(home: Home, project: Project) -> list[date]:
    from vespucci_assets.capture import CaptureStore
    from vespucci_assets.pipeline import event_source

    store = CaptureStore(home.capture_dir)
    source = event_source(project, store)
    event_days = source.event_days() if isinstance(source, SegmentWarehouse) else store.days(project.project_id, EVENTS)
    return sorted(set(event_days) | set(store.days(project.project_id, QUARANTINE)))


def register_projects(instance: dg.DagsterInstance, project_ids: list[str]) -> None:
    known = set(instance.get_dynamic_partitions(PROJECTS.name))
    missing = [p for p in project_ids if p not in known]
    if missing:
        instance.add_dynamic_partitions(PROJECTS.name, missing)


def materialize_partitions(
    home: Home,
    project_ids: list[str] | None = None,
    start: date | None = None,
    end: date | None = None,
    instance: dg.DagsterInstance | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> RunSummary:
    """One Dagster run per project covering its days in [start, end] that hold data."""
    from vespucci_assets.definitions import build_definitions
    from vespucci_assets.defs.jobs import PARTITIONS_JOB

    registry = Registry(home.registry_path)
    projects = [registry.get(p) for p in project_ids] if project_ids else registry.list()
    if not projects:
        raise ProjectError("no projects yet: add one with `vespucci projects add ID`")
    instance = instance or dagster_instance(home)
    register_projects(instance, [p.project_id for p in projects])
    job = build_definitions(home).resolve_job_def(PARTITIONS_JOB)
    summary = RunSummary()
    for project in projects:
        if project.source == "warehouse" and start and end:
            # The run reads the warehouse itself (and fails clearly if it cannot); no need to ask it first.
            days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
        else:
            days = [d for d in days_with_data(home, project) if (start is None or d >= start) and (end is None or d <= end)]
        if not days:
            progress(f"{project.project_id}: no data in range, nothing to do")
            continue
        first, last = days[0], days[-1]
        progress(f"{project.project_id}: materializing {first} .. {last} ({(last - first).days + 1} day(s)) ...")
        request = range_run_request(project.project_id, first, last, run_key="cli")
        result = job.execute_in_process(
            instance=instance, tags=dict(request.tags), run_config=QUIET_RUN_CONFIG, raise_on_error=False
        )
        if not result.success:
            raise MaterializeFailed(f"run {result.run_id} for project {project.project_id} failed: {_failure(result)}")
        summary.runs.append(result.run_id)
        summary.partitions += (last - first).days + 1
        progress(f"{project.project_id}: run {result.run_id} succeeded")
    return summary


def _failure(result) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None and error.message.startswith("Error occurred while executing"):
                error = error.cause
            message = error.message.strip().splitlines()[0]
            # A dg.Failure's description is already the whole story.
            return f"{event.step_key}: {message.removeprefix(FAILURE_PREFIX)}"
    return "see the run in the Dagster UI"
