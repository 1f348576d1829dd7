"""Real Dagster runs against a real instance: ranged runs, per-day runs in any order, the CLI."""

import os
import random
import shutil
import subprocess
import sys
from datetime import date, timedelta

import dagster as dg
import duckdb
import pytest

from vespucci_assets.capture import CaptureStore
from vespucci_assets.defs.partitions import DAY_X_PROJECT, PROJECTS, partition_key
from vespucci_assets.demo_data import demo_batches
from vespucci_assets.home import Home
from vespucci_assets.projects import Project, Registry
from vespucci_assets.runs import QUIET_RUN_CONFIG, dagster_instance, materialize_partitions, register_projects
from vespucci_assets.segment import normalize
from vespucci_assets.tables import ALL_TABLES
from vespucci_assets.warehouse import writer_lock

END_DAY = date(2026, 11, 22)
DAYS = [END_DAY - timedelta(days=n) for n in range(3, -1, -1)]
COMPARED = [t.name for t in ALL_TABLES]


def _home(path, project_id="acme", method="auto") -> Home:
    home = Home(path).ensure()
    Registry(home.registry_path).add(Project(project_id=project_id, name=project_id, tracking_method=method))
    return home


def _capture_sample(home: Home, project_id="acme") -> None:
    writer = CaptureStore(home.capture_dir).writer()
    for batch in demo_batches(project_id, style="action", end_day=END_DAY, days=len(DAYS), devices=8, seed=11):
        writer.append(project_id, [normalize(m, batch.received_at, envelope=batch.envelope) for m in batch.messages])
    writer.close()


def snapshot(home: Home) -> dict[str, list[tuple]]:
    with duckdb.connect(str(home.warehouse_path), read_only=True) as conn:
        return {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr) for table in COMPARED}


@pytest.fixture
def ranged_home(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = _home(tmp_path / "ranged")
    _capture_sample(home)
    summary = materialize_partitions(home)
    assert len(summary.runs) == 1
    # The run's steps shared one writer; the run's end let it go at once, not after the idle delay.
    with writer_lock(home.warehouse_path, timeout_s=0.05):
        pass
    return home


def test_ranged_run_is_recorded_per_partition(ranged_home):
    instance = dagster_instance(ranged_home)
    runs = instance.get_runs()
    assert len(runs) == 1 and runs[0].is_success
    assert instance.get_dynamic_partitions(PROJECTS.name) == ["acme"]
    for day in DAYS:
        for asset in ("events", "session_events", "sessions_time_based", "sessions_action_based", "sessions",
                      "session_metrics_daily", "quarantined_events"):
            event = instance.get_latest_materialization_event(dg.AssetKey(asset))
            assert event is not None
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[str(partition_key(day, "acme"))]),
                limit=1,
            ).records
            assert records, f"{asset} has no materialization for {day}"
    with duckdb.connect(str(ranged_home.warehouse_path), read_only=True) as conn:
        per_day = conn.execute("SELECT session_date, count(*) FROM sessions GROUP BY ALL ORDER BY 1").fetchall()
    assert [d for d, _ in per_day] == DAYS and all(n > 0 for _, n in per_day)


def test_days_materialized_separately_in_any_order_match_one_ranged_run(ranged_home, tmp_path):
    from vespucci_assets.definitions import ASSETS, build_definitions

    home = Home(tmp_path / "per-day").ensure()
    shutil.copyfile(ranged_home.registry_path, home.registry_path)
    shutil.copytree(ranged_home.capture_dir, home.capture_dir, dirs_exist_ok=True)
    instance = dagster_instance(home)
    register_projects(instance, ["acme"])
    resources = build_definitions(home).resources
    events_first = [a for a in ASSETS if a.key.path[-1] in ("events", "quarantined_events")]
    for day in random.Random(3).sample(DAYS, len(DAYS)):
        result = dg.materialize(events_first, instance=instance, resources=resources,
                                partition_key=str(partition_key(day, "acme")), run_config=QUIET_RUN_CONFIG)
        assert result.success
    for day in random.Random(4).sample(DAYS, len(DAYS)):
        result = dg.materialize(ASSETS, selection=[a.key for a in ASSETS if a not in events_first],
                                instance=instance, resources=resources,
                                partition_key=str(partition_key(day, "acme")), run_config=QUIET_RUN_CONFIG)
        assert result.success
    assert snapshot(home) == snapshot(ranged_home)

    before = snapshot(ranged_home)
    materialize_partitions(ranged_home)
    assert snapshot(ranged_home) == before, "re-running changed rows"


def test_new_project_gets_partitions_without_code_change(ranged_home):
    Registry(ranged_home.registry_path).add(Project(project_id="newco", name="newco", tracking_method="time"))
    _capture_sample(ranged_home, "newco")
    materialize_partitions(ranged_home, ["newco"])
    instance = dagster_instance(ranged_home)
    assert sorted(instance.get_dynamic_partitions(PROJECTS.name)) == ["acme", "newco"]
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        keys = DAY_X_PROJECT.get_partition_keys()
    assert str(partition_key(END_DAY, "newco")) in keys
    with duckdb.connect(str(ranged_home.warehouse_path), read_only=True) as conn:
        methods = conn.execute("SELECT DISTINCT tracking_method FROM sessions WHERE project_id = 'newco'").fetchall()
    assert methods == [("time",)]


def test_definitions_validate(tmp_path):
    env = {**os.environ, "VESPUCCI_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster")}
    (tmp_path / "dagster").mkdir()
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    result = subprocess.run([dagster, "definitions", "validate", "-w", "workspace.yaml"], capture_output=True,
                            text=True, env=env, timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0, result.stderr[-2000:]
