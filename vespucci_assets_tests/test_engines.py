"""The same session logic on every engine: embedded DuckDB, the customer's Postgres warehouse, Spark.

One four-day mobile stream (duplicates, skewed clocks, logins, crashes, pushes) goes through
DuckDB, the warehouse engine (real Postgres on 127.0.0.1, computing inside it from a
Segment-layout schema) and Spark (PySpark local[2], Parquet under tmp_path). Every table
the pipeline writes, session ids included, and every partition check's outcome must be the
same. Then real Dagster runs move a project from DuckDB to Spark and to its warehouse, and
the recomputed partition has the same rows.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import psycopg
import pytest

from vespucci_assets.capture import EVENTS, CaptureStore
from vespucci_assets.dialects import to_engine
from vespucci_assets.engines import PostgresEngine, SparkEngine
from vespucci_assets.home import Home
from vespucci_assets.pipeline import build_all, session_settings
from vespucci_assets.projects import Project, Registry
from vespucci_assets.quality import run_partition_checks
from vespucci_assets.runs import dagster_instance, materialize_partitions
from vespucci_assets.tables import ALL_TABLES
from vespucci_assets.warehouse import connect_warehouse
from vespucci_assets_tests.segment_layout import PG_URL, layout, load_postgres
from vespucci_assets_tests.support import capture_demo_stream

END_DAY = date(2026, 11, 22)
DAYS = [END_DAY - timedelta(days=n) for n in range(3, -1, -1)]
COMPARED = [t for t in ALL_TABLES if t.name not in ("events", "quarantined_events")]
# events: the JSON columns are each engine's own serialisation of the same objects.
EVENT_COLUMNS = ("project_id, event_date, message_id, type, event, name, device_key, anonymous_id, user_id, timestamp, "
                 "original_timestamp, sent_at, received_at, lifecycle_rank, is_member, copies")


def rows(conn, table, where: str = "") -> list[tuple]:
    return sorted((tuple(r) for r in conn.execute(f"SELECT {', '.join(table.column_names)} FROM {table.name} {where}").fetchall()),
                  key=repr)


def tables_of(conn, where: str = "") -> dict[str, list[tuple]]:
    snapshot = {t.name: rows(conn, t, where) for t in COMPARED}
    snapshot["events"] = sorted(tuple(r) for r in conn.execute(f"SELECT {EVENT_COLUMNS} FROM events {where}").fetchall())
    return snapshot


def outcomes_of(conn, project: Project) -> dict:
    return {key: (o.passed, float(o.figure), o.summary)
            for key, o in run_partition_checks(conn, project.project_id, DAYS, session_settings(project)).items()}


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    """The stream in a capture store, and in a Segment-layout schema of the real Postgres."""
    root = tmp_path_factory.mktemp("engines")
    store = capture_demo_stream(root / "capture", "shop", END_DAY, len(DAYS), devices=10, seed=5)
    schema = f"segment_{secrets.token_hex(4)}"
    load_postgres(schema, layout(list(store.read_records("shop", EVENTS, store.days("shop")))))
    yield root, store, schema
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for name in (schema, f"vespucci_{schema}"):
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(scope="module")
def on_duckdb(stream):
    root, store, _ = stream
    project = Project(project_id="shop", name="shop")
    conn = connect_warehouse(root / "duckdb.duckdb")
    try:
        build_all(conn, store, project, DAYS)
        yield tables_of(conn), outcomes_of(conn, project)
    finally:
        conn.close()


def test_the_warehouse_engine_computes_inside_postgres_and_matches_duckdb_row_for_row(stream, on_duckdb):
    root, _, schema = stream
    project = Project(project_id="shop", name="shop", source="warehouse", warehouse_url=PG_URL,
                      warehouse_schema=schema, engine="warehouse")
    engine = PostgresEngine(PG_URL, schema=f"vespucci_{schema}")
    try:
        build_all(engine, CaptureStore(root / "no-capture"), project, DAYS)
        got, checks = tables_of(engine), outcomes_of(engine, project)
    finally:
        engine.close()
    expected, expected_checks = on_duckdb
    assert len(expected["sessions_action_based"]) > 50 and len(expected["orphan_events"]) > 10
    for table, table_rows in expected.items():
        assert got[table] == table_rows, table
    assert checks == expected_checks and len(checks) == 14 * len(DAYS)
    # The sessions were computed in the customer's database: they are there, in the Vespucci schema.
    with psycopg.connect(PG_URL) as conn:
        stored = conn.execute(f'SELECT count(*) FROM "vespucci_{schema}".sessions_action_based').fetchone()[0]
    assert stored == len(expected["sessions_action_based"])


def test_the_spark_engine_writes_hive_partitioned_parquet_and_matches_duckdb_row_for_row(stream, on_duckdb, tmp_path):
    _, store, _ = stream
    project = Project(project_id="shop", name="shop", engine="spark")
    location = tmp_path / "lake"
    engine = SparkEngine("local[2]", str(location))
    build_all(engine, store, project, DAYS)
    got, checks = tables_of(engine), outcomes_of(engine, project)
    expected, expected_checks = on_duckdb
    for table, table_rows in expected.items():
        assert got[table] == table_rows, table
    assert checks == expected_checks
    # Hive layout, readable by anything that reads Parquet.
    day_folder = location / "sessions_action_based" / "project_id=shop" / f"session_date={DAYS[1]}"
    assert any(day_folder.glob("*.parquet"))
    with duckdb.connect() as reader:
        parquet = reader.execute(
            f"SELECT count(*) FROM read_parquet('{location}/sessions_action_based/*/*/*.parquet', hive_partitioning = true)"
        ).fetchone()[0]
    assert parquet == len(expected["sessions_action_based"])
    # Recomputing a day replaces that day's partition and leaves the others as they were.
    build_all(engine, store, project, [DAYS[2]])
    assert tables_of(engine) == got


def test_a_partition_moved_to_another_engine_is_recomputed_with_the_same_rows_in_dagster_runs(stream, tmp_path, monkeypatch):
    """Real Dagster runs: all days on DuckDB, then a day again on Spark and in the warehouse.

    A day's sessions read its neighbours' events, so the new engine computes D-1..D+1 and
    day D is compared.
    """
    _, store, schema = stream
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("VESPUCCI_ENGINE_SCHEMA", f"vespucci_{schema}")
    home = Home(tmp_path / "home").ensure()
    os.rmdir(home.capture_dir)
    os.symlink(store.root, home.capture_dir)
    registry = Registry(home.registry_path)
    registry.add(Project(project_id="shop", name="shop"))
    materialize_partitions(home)
    day = DAYS[2]
    where = f"WHERE {{date}} = DATE '{day}'"
    with duckdb.connect(str(home.warehouse_path), read_only=True) as conn:
        on_duckdb = {t.name: rows(conn, t, where.format(date=t.date_column)) for t in COMPARED}
    assert len(on_duckdb["chosen_sessions"]) > 5

    window = (day - timedelta(days=1), day + timedelta(days=1))
    registry.update("shop", engine="spark")
    summary = materialize_partitions(home, start=window[0], end=window[1])
    engine = SparkEngine("local[2]", str(home.root / "spark"))
    assert {t.name: rows(engine, t, where.format(date=t.date_column)) for t in COMPARED} == on_duckdb
    instance = dagster_instance(home)
    run = instance.get_run_by_id(summary.runs[0])
    assert run.tags["dagster/asset_partition_range_start"] == f"{window[0]}|shop"
    checks = instance.get_records_for_run(summary.runs[0], of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in checks]
    assert len(evaluations) == 14 * 3 and all(e.passed for e in evaluations)

    registry.update("shop", source="warehouse", warehouse_url=PG_URL, warehouse_schema=schema, engine="warehouse")
    materialize_partitions(home, start=window[0], end=window[1])
    engine = PostgresEngine(PG_URL, schema=f"vespucci_{schema}")
    try:
        assert {t.name: rows(engine, t, where.format(date=t.date_column)) for t in COMPARED} == on_duckdb
    finally:
        engine.close()


def test_one_definition_transpiles_for_every_engine():
    statement = "CREATE OR REPLACE TEMP TABLE x AS SELECT device_key, arg_min(message_id, rn) AS first FROM m GROUP BY ALL"
    assert to_engine(statement, "duckdb") == [statement]
    postgres = to_engine(statement, "postgres")
    assert postgres[0] == "DROP TABLE IF EXISTS x" and "ARRAY_AGG" in postgres[1] and "GROUP BY 1" in postgres[1]
    assert postgres[2] == "ANALYZE x"
    spark = to_engine(statement, "spark")
    assert spark[0].startswith("CACHE TABLE x AS") and "MIN_BY" in spark[0]


@pytest.mark.parametrize("args, fragment", [
    (["--engine", "warehouse"], "--engine warehouse computes inside the project's Segment warehouse"),
    (["--engine", "cluster"], "invalid choice: 'cluster'"),
])
def test_cli_sets_the_engine_and_rejects_a_wrong_one_in_one_line(tmp_path, args, fragment):
    env = {**os.environ, "VESPUCCI_HOME": str(tmp_path / "home")}
    env.pop("DAGSTER_HOME", None)

    def cli(*arguments):
        return subprocess.run([str(Path(sys.executable).parent / "vespucci"), *arguments], env=env, capture_output=True, text=True)

    assert cli("projects", "add", "shop").returncode == 0
    assert cli("projects", "set", "shop", "--engine", "spark").returncode == 0
    assert '"engine": "spark"' in cli("projects", "show", "shop", "--json").stdout
    failed = cli("projects", "set", "shop", *args)
    assert failed.returncode != 0 and fragment in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
