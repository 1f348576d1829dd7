"""Projects whose source is their Segment warehouse: the real Postgres on this machine, and a DuckDB file."""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import duckdb
import psycopg
import pytest

from vespucci_assets.capture import EVENTS, CaptureStore
from vespucci_assets.defs.ingestion.sensors import warehouse_late_rows_sensor
from vespucci_assets.defs.resources import VespucciHome
from vespucci_assets.home import Home
from vespucci_assets.pipeline import build_all
from vespucci_assets.projects import Project, Registry
from vespucci_assets.runs import MaterializeFailed, materialize_partitions, register_projects
from vespucci_assets.segment_warehouse import SegmentWarehouse, WarehouseSourceError
from vespucci_assets.warehouse import connect_warehouse
from vespucci_assets_tests.segment_layout import PG_URL, append_postgres, layout, load_duckdb, load_postgres
from vespucci_assets_tests.support import capture_demo_stream

END_DAY = date(2026, 11, 22)
DAYS = [END_DAY - timedelta(days=n) for n in range(3, -1, -1)]
SESSION_TABLES = ["sessions_time_based", "sessions_action_based", "session_events", "orphan_events",
                  "session_method_choice", "chosen_sessions", "session_metrics_daily", "device_users_daily"]
EVENT_COLUMNS = "project_id, event_date, message_id, type, event, name, device_key, anonymous_id, user_id, timestamp, " \
                "original_timestamp, sent_at, received_at, lifecycle_rank, is_member, copies"


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """A four-day mobile stream (duplicates, skewed clocks, logins) through the capture store, and its records."""
    store = capture_demo_stream(tmp_path_factory.mktemp("capture") / "capture", "shop", END_DAY, len(DAYS), devices=10, seed=5)
    records = list(store.read_records("shop", EVENTS, store.days("shop")))
    return store, records


@pytest.fixture
def pg_schema():
    schema = f"segment_{secrets.token_hex(4)}"
    yield schema
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def snapshot(conn) -> dict[str, list[tuple]]:
    tables = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in SESSION_TABLES}
    tables["events"] = sorted(conn.execute(f"SELECT {EVENT_COLUMNS} FROM events").fetchall(), key=repr)
    return tables


def build(tmp_path, name: str, project: Project, store: CaptureStore) -> dict[str, list[tuple]]:
    conn = connect_warehouse(tmp_path / f"{name}.duckdb")
    try:
        build_all(conn, store, project, DAYS)
        return snapshot(conn)
    finally:
        conn.close()


def shop(**settings) -> Project:
    return Project(project_id="shop", name="shop", tracking_method="auto", **settings)


def test_layout_is_segments(captured):
    _, records = captured
    tables = layout(records)
    assert {"tracks", "screens", "identifies", "application_opened", "application_backgrounded"} <= set(tables)
    track = tables["tracks"][0]
    assert {"id", "anonymous_id", "event", "event_text", "received_at", "uuid_ts"} <= set(track)
    assert any(k.startswith("context_app_") for row in tables["tracks"] for k in row)
    assert all(row["event"] == "application_opened" for row in tables["application_opened"])


def test_postgres_warehouse_gives_the_same_sessions_row_for_row(tmp_path, captured, pg_schema):
    store, records = captured
    load_postgres(pg_schema, layout(records))
    from_capture = build(tmp_path, "capture", shop(), store)
    from_warehouse = build(tmp_path, "pg", shop(source="warehouse", warehouse_url=PG_URL, warehouse_schema=pg_schema),
                           CaptureStore(tmp_path / "empty"))
    assert len(from_capture["sessions_action_based"]) > 20
    for table, rows in from_capture.items():
        assert from_warehouse[table] == rows, table


def test_duckdb_file_warehouse_gives_the_same_sessions_row_for_row(tmp_path, captured):
    store, records = captured
    load_duckdb(tmp_path / "segment.duckdb", "ios_app", layout(records))
    from_capture = build(tmp_path, "capture", shop(), store)
    url = f"duckdb:///{tmp_path / 'segment.duckdb'}"
    from_warehouse = build(tmp_path, "wh", shop(source="warehouse", warehouse_url=url, warehouse_schema="ios_app"),
                           CaptureStore(tmp_path / "empty"))
    for table, rows in from_capture.items():
        assert from_warehouse[table] == rows, table


def test_credentials_come_from_the_environment_and_are_never_shown(monkeypatch):
    monkeypatch.setenv("SEGMENT_WH_PASSWORD", "s3cret")
    source = SegmentWarehouse("shop", "postgresql://postgres:${SEGMENT_WH_PASSWORD}@127.0.0.1:5432/test", "x")
    assert source.resolved_url() == "postgresql://postgres:s3cret@127.0.0.1:5432/test"
    assert "s3cret" not in source.redacted_url()
    monkeypatch.delenv("SEGMENT_WH_PASSWORD")
    with pytest.raises(WarehouseSourceError, match="environment variable SEGMENT_WH_PASSWORD"):
        source.resolved_url()


# --------------------------------------------------------------------------- Dagster runs, late rows, bad config


def warehouse_home(tmp_path, url: str, schema: str) -> Home:
    home = Home(tmp_path / "home").ensure()
    Registry(home.registry_path).add(shop(source="warehouse", warehouse_url=url, warehouse_schema=schema))
    return home


def test_late_rows_are_picked_up_and_change_exactly_their_partitions(tmp_path, captured, pg_schema, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    _, records = captured
    load_postgres(pg_schema, layout(records))
    home = warehouse_home(tmp_path, PG_URL, pg_schema)
    summary = materialize_partitions(home)
    assert summary.partitions >= len(DAYS)
    from vespucci_assets.runs import dagster_instance

    instance = dagster_instance(home)
    register_projects(instance, ["shop"])
    resources = {"vespucci": VespucciHome(root=str(home.root))}
    first = warehouse_late_rows_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    cursor = first.cursor
    quiet = warehouse_late_rows_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))
    assert quiet.run_requests == []

    # Segment loads a late batch: a visit on DAYS[1], received (loaded) now.
    late_day = DAYS[1]
    now = datetime.now(timezone.utc).isoformat()
    t0 = datetime(late_day.year, late_day.month, late_day.day, 13, tzinfo=timezone.utc)
    rows = [{"id": f"late-{k}", "anonymous_id": "late-device", "timestamp": (t0 + timedelta(minutes=k)).isoformat(),
             "received_at": now, "uuid_ts": now, "name": name} for k, name in enumerate(["Home", "Search", "Cart"])]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        append_postgres(conn, pg_schema, "screens", rows)
    late = warehouse_late_rows_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))

    assert [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"]) for r in late.run_requests] == [
        (f"{late_day - timedelta(days=1)}|shop", f"{late_day + timedelta(days=1)}|shop")
    ]
    with duckdb.connect(str(home.warehouse_path), read_only=True) as conn:
        before = conn.execute("SELECT session_date, session_id FROM sessions_time_based ORDER BY ALL").fetchall()
    from vespucci_assets.definitions import build_definitions
    from vespucci_assets.runs import QUIET_RUN_CONFIG

    job = build_definitions(home).resolve_job_def("vespucci_partitions")
    assert job.execute_in_process(instance=instance, tags=dict(late.run_requests[0].tags), run_config=QUIET_RUN_CONFIG).success
    with duckdb.connect(str(home.warehouse_path), read_only=True) as conn:
        after = conn.execute("SELECT session_date, session_id FROM sessions_time_based ORDER BY ALL").fetchall()
        late_sessions = conn.execute("SELECT session_date, event_count FROM sessions_time_based WHERE device_key = 'late-device'").fetchall()
    assert late_sessions == [(late_day, 3)]
    assert sorted(set(after) - set(before)) == [r for r in after if r[0] == late_day and r not in before]
    assert set(before) <= set(after)


@pytest.mark.parametrize(
    "case, url, schema, fragment",
    [
        ("unreachable", "postgresql://postgres@127.0.0.1:1/test", None, "cannot connect"),
        ("wrong credentials", "postgresql://no_such_role@127.0.0.1:5432/test", None, "cannot connect"),
        ("missing schema", PG_URL, "no_such_schema", "schema 'no_such_schema' does not exist"),
        ("missing column", PG_URL, None, "has no column 'received_at'"),
    ],
)
def test_bad_configuration_fails_the_run_with_one_clear_message(tmp_path, captured, pg_schema, monkeypatch, case, url, schema, fragment):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    _, records = captured
    tables = layout(records)
    if case == "missing column":
        tables = {**tables, "screens": [{k: v for k, v in row.items() if k != "received_at"} for row in tables["screens"]]}
    load_postgres(pg_schema, tables)
    # First a good run, so there is a partition that a failing run must leave untouched.
    home = warehouse_home(tmp_path, PG_URL, pg_schema)
    if case != "missing column":
        materialize_partitions(home, start=DAYS[0], end=DAYS[0])
    before = _events(home)
    Registry(home.registry_path).update("shop", warehouse_url=url, warehouse_schema=pg_schema if schema is None else schema)

    with pytest.raises(MaterializeFailed) as failure:
        materialize_partitions(home, start=DAYS[0], end=DAYS[0])
    message = str(failure.value)
    assert "project 'shop'" in message and fragment in message, message
    assert "\n" not in message
    assert _events(home) == before


def _events(home: Home) -> list[tuple]:
    if not home.warehouse_path.exists():
        return []
    with duckdb.connect(str(home.warehouse_path), read_only=True) as conn:
        if not conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'events'").fetchone()[0]:
            return []
        return sorted(conn.execute(f"SELECT {EVENT_COLUMNS} FROM events").fetchall(), key=repr)


def test_missing_url_is_a_clear_error():
    with pytest.raises(WarehouseSourceError, match="has no --warehouse-url"):
        SegmentWarehouse.for_project(replace(shop(), source="warehouse"))


def test_cli_configures_a_warehouse_project_and_never_prints_its_password(tmp_path):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "VESPUCCI_HOME": str(tmp_path / "home")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "vespucci_assets.cli", *args], env=env, capture_output=True, text=True)

    added = cli("projects", "add", "wh", "--source", "warehouse", "--warehouse-url", "postgresql://seg:hunter2@db.internal/segment",
                "--warehouse-schema", "ios")
    assert added.returncode == 0, added.stderr
    shown = cli("projects", "show", "wh", "--json")
    assert json.loads(shown.stdout)["warehouse_url"] == "postgresql://seg:***@db.internal/segment"
    assert "hunter2" not in shown.stdout + cli("projects", "list", "--json").stdout
    moved = cli("projects", "set", "wh", "--warehouse-url", "duckdb:///data/segment.duckdb", "--warehouse-schema", "android")
    assert moved.returncode == 0, moved.stderr
    assert json.loads(cli("projects", "show", "wh", "--json").stdout)["warehouse_schema"] == "android"
    bad = cli("projects", "add", "wh2", "--source", "warehouse", "--warehouse-url", "mysql://x/y", "--warehouse-schema", "s")
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
        "vespucci: error: invalid --warehouse-url 'mysql://x/y': use postgresql://... or duckdb:///path"]
