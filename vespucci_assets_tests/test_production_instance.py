"""Production set-up: a Dagster instance whose run, event and schedule storage is the real local Postgres."""

from __future__ import annotations

import secrets
from datetime import date, timedelta

import dagster as dg
import psycopg
import pytest

from vespucci_assets.capture import CaptureStore
from vespucci_assets.demo_data import demo_batches
from vespucci_assets.home import Home
from vespucci_assets.projects import Project, Registry
from vespucci_assets.runs import materialize_partitions
from vespucci_assets.segment import normalize

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
END_DAY = date(2026, 11, 22)

INSTANCE_YAML = """
storage:
  postgres:
    # dagster-postgres speaks psycopg2 (its NOTIFY needs client-side parameters).
    postgres_url: postgresql+psycopg2://postgres@127.0.0.1:5432/{database}
concurrency:
  pools:
    default_limit: 1
  runs:
    max_concurrent_runs: 4
telemetry:
  enabled: false
"""


@pytest.fixture
def postgres_database():
    database = f"dagster_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    yield database
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_partitions_materialize_into_a_postgres_backed_instance(tmp_path, monkeypatch, postgres_database):
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(INSTANCE_YAML.format(database=postgres_database))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    home = Home(tmp_path / "home").ensure()
    Registry(home.registry_path).add(Project(project_id="acme", name="acme", tracking_method="auto"))
    writer = CaptureStore(home.capture_dir).writer()
    for batch in demo_batches("acme", style="action", end_day=END_DAY, days=3, devices=6, seed=3):
        writer.append("acme", [normalize(m, batch.received_at, envelope=batch.envelope) for m in batch.messages])
    writer.close()

    summary = materialize_partitions(home)

    assert len(summary.runs) == 1
    instance = dg.DagsterInstance.get()
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    [run] = instance.get_runs()
    assert run.is_success and run.run_id == summary.runs[0]
    keys = instance.get_materialized_partitions(dg.AssetKey("sessions"))
    assert keys == {f"{END_DAY - timedelta(days=n)}|acme" for n in range(3)}
    # The pool limit lives in Postgres too, so every run on this instance shares the one DuckDB slot.
    assert instance.event_log_storage.get_concurrency_info("duckdb").slot_count == 1
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{postgres_database}") as conn:
        assert conn.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'").fetchone()[0] >= 21
