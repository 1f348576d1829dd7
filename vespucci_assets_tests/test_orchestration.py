"""Schedules, sensors, blocking and WARN checks, completeness and concurrent runs, on a real Dagster instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import duckdb
import pytest

from vespucci_assets.capture import CaptureStore
from vespucci_assets.definitions import build_definitions
from vespucci_assets.defs.checks import COMPLETED_ASSETS
from vespucci_assets.defs.ingestion.sensors import new_capture_data_sensor
from vespucci_assets.defs.jobs import COMPLETENESS_JOB, PARTITIONS_JOB, YESTERDAY_COMPLETE
from vespucci_assets.defs.partitions import partition_key, range_run_request
from vespucci_assets.defs.resources import VespucciHome
from vespucci_assets.defs.sessions.schedules import daily_sessions_schedule
from vespucci_assets.home import Home
from vespucci_assets.projects import Project, Registry
from vespucci_assets.runs import QUIET_RUN_CONFIG, dagster_instance, register_projects
from vespucci_assets.scheduling import day_due_complete
from vespucci_assets.segment import normalize

TODAY = datetime.now(timezone.utc).date()
# Clock-independent days well inside the partition range (which ends today).
D = [TODAY - timedelta(days=n) for n in (12, 11, 10, 9)]


def screen(mid: str, day: date, hhmm: str = "10:00", device: str = "dev-1", name: str = "Home") -> dict:
    ts = f"{day.isoformat()}T{hhmm}:00Z"
    return {"type": "screen", "name": name, "anonymousId": device, "messageId": mid, "timestamp": ts, "receivedAt": ts}


def visit(prefix: str, day: date, hhmm: str = "09:00", device: str = "dev-1") -> list[dict]:
    t0 = datetime.fromisoformat(f"{day.isoformat()}T{hhmm}:00+00:00")
    names = ["Application Opened", "screen:Home", "screen:Cart", "Application Backgrounded"]
    out = []
    for k, name in enumerate(names):
        ts = (t0 + timedelta(minutes=k)).isoformat().replace("+00:00", "Z")
        msg = {"anonymousId": device, "messageId": f"{prefix}-{k}", "timestamp": ts, "receivedAt": ts}
        msg.update({"type": "screen", "name": name[7:]} if name.startswith("screen:") else {"type": "track", "event": name})
        out.append(msg)
    return out


class Setup:
    def __init__(self, root, *projects: tuple[str, str]):
        self.home = Home(root).ensure()
        self.registry = Registry(self.home.registry_path)
        for project_id, method in projects:
            self.registry.add(Project(project_id=project_id, name=project_id, tracking_method=method))
        self.instance = dagster_instance(self.home)
        self.defs = build_definitions(self.home)

    def capture(self, project_id: str, messages: list[dict]) -> None:
        writer = CaptureStore(self.home.capture_dir).writer()
        writer.append(project_id, [normalize(m, datetime.now(timezone.utc)) for m in messages])
        writer.close()

    def run(self, project_id: str, first: date, last: date | None = None) -> dg.ExecuteInProcessResult:
        register_projects(self.instance, [project_id])
        request = range_run_request(project_id, first, last or first, run_key="test")
        job = self.defs.resolve_job_def(PARTITIONS_JOB)
        return job.execute_in_process(instance=self.instance, tags=dict(request.tags), run_config=QUIET_RUN_CONFIG,
                                      raise_on_error=False)

    def tick(self, cursor: str | None = None) -> dg.SensorResult:
        context = dg.build_sensor_context(
            instance=self.instance, cursor=cursor, resources={"vespucci": VespucciHome(root=str(self.home.root))}
        )
        return new_capture_data_sensor(context)

    def materialized(self, asset: str) -> set[str]:
        return self.instance.get_materialized_partitions(dg.AssetKey(asset))

    def rows(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(self.home.warehouse_path), read_only=True) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture(autouse=True)
def own_instance(monkeypatch):
    """Each test's instance lives in its own home, whatever DAGSTER_HOME the shell has."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


def ranges(result: dg.SensorResult) -> list[tuple[str, str, str]]:
    return sorted(
        (r.tags["vespucci/project"], r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
        for r in result.run_requests
    )


def key(day: date, project_id: str = "acme") -> str:
    return str(partition_key(day, project_id))


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


# --------------------------------------------------------------------------- checks in runs


def test_blocking_check_failure_stops_downstream(tmp_path):
    """A client re-using a messageId three days later: `unique_message_ids` fails and nothing downstream runs."""
    s = Setup(tmp_path / "home", ("acme", "auto"))
    s.capture("acme", [screen("m1", D[0]), screen("m2", D[0], "10:05")])
    assert s.run("acme", D[0]).success
    s.capture("acme", [screen("m1", D[3])])

    result = s.run("acme", D[3])

    assert not result.success
    evaluation = check_evaluations(result)["unique_message_ids"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "1 messageIds stored more than once" in evaluation.description
    assert key(D[3]) in s.materialized("events")
    for downstream in ("session_events", "sessions_time_based", "sessions", "session_metrics_daily"):
        assert key(D[3]) not in s.materialized(downstream)
        assert key(D[0]) in s.materialized(downstream)


def test_warn_check_flags_the_stream_but_does_not_block(tmp_path):
    """A web-like stream on an `action` project: every member is an orphan; WARN, and the run goes on."""
    s = Setup(tmp_path / "home", ("web", "action"))
    s.capture("web", [screen(f"p{k}", D[1], f"10:{k:02d}", device="browser") for k in range(30)])

    result = s.run("web", D[1])

    assert result.success
    evaluation = check_evaluations(result)["orphan_rate_and_method_fit"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert "consider --tracking-method time" in evaluation.description
    assert evaluation.metadata["figure"].value == pytest.approx(1.0)
    assert key(D[1], "web") in s.materialized("session_metrics_daily")
    assert all(e.passed for name, e in check_evaluations(result).items() if name not in ("orphan_rate_and_method_fit",))


def test_good_data_passes_every_partition_check(tmp_path):
    s = Setup(tmp_path / "home", ("acme", "action"))
    s.capture("acme", visit("a", D[1]) + visit("b", D[1], "15:00") + visit("c", D[2], "23:58", device="dev-2"))
    result = s.run("acme", D[0], D[3])
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    # Fourteen partition checks, each evaluated per day of the ranged run.
    assert len(evaluations) == 14 * len(D)
    assert {e.partition for e in evaluations} == {key(d) for d in D}
    assert all(e.passed for e in evaluations), [e.description for e in evaluations if not e.passed]


def test_partition_figures_are_recorded_per_day(tmp_path):
    """A ranged run records each day's own figures, so the UI plots them across partitions."""
    s = Setup(tmp_path / "home", ("acme", "action"))
    s.capture("acme", visit("a", D[1]) + visit("b", D[1], "15:00") + visit("c", D[2]))
    assert s.run("acme", D[0], D[3]).success
    figures = {}
    for day in D:
        records = s.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("sessions_action_based"), asset_partitions=[key(day)]), limit=1
        ).records
        metadata = records[0].asset_materialization.metadata
        figures[day] = (metadata["sessions"].value, metadata["dagster/row_count"].value)
    assert figures == {D[0]: (0, 0), D[1]: (2, 2), D[2]: (1, 1), D[3]: (0, 0)}
    latest = s.instance.fetch_materializations(dg.AssetKey("sessions"), limit=1).records[0].asset_materialization
    lineage = latest.metadata["dagster/column_lineage"].value.deps_by_column
    assert {d.asset_key.path[0] for d in lineage["user_id"]} == {"sessions_time_based", "sessions_action_based"}
    sessions_def = s.defs.resolve_assets_def("sessions")
    deps = sessions_def.metadata_by_key[dg.AssetKey("sessions")]["dagster/column_lineage"].deps_by_column["started_at"]
    assert {d.asset_key.path[0] for d in deps} == {"sessions_time_based", "sessions_action_based"}


# --------------------------------------------------------------------------- sensor


def test_sensor_registers_projects_and_runs_days_with_data_and_neighbours(tmp_path):
    s = Setup(tmp_path / "home", ("acme", "action"), ("beta", "time"))
    s.capture("acme", visit("a", D[0]) + visit("b", D[1]))
    s.capture("beta", [screen("x", D[3])])

    first = s.tick()

    assert sorted(first.dynamic_partitions_requests[0].partition_keys) == ["acme", "beta"]
    day = lambda d, p="acme": key(d, p)  # noqa: E731
    assert ranges(first) == [
        ("acme", day(D[0] - timedelta(days=1)), day(D[1] + timedelta(days=1))),
        ("beta", day(D[3] - timedelta(days=1), "beta"), day(D[3] + timedelta(days=1), "beta")),
    ]
    # Nothing new: a tick requests nothing, and registers nobody twice.
    register_projects(s.instance, ["acme", "beta"])
    quiet = s.tick(first.cursor)
    assert quiet.run_requests == [] and quiet.dynamic_partitions_requests == []


def test_sensor_late_event_reruns_exactly_its_day_and_neighbours(tmp_path):
    s = Setup(tmp_path / "home", ("acme", "action"))
    s.capture("acme", visit("a", D[0]) + visit("b", D[3]))
    register_projects(s.instance, ["acme"])
    cursor = s.tick().cursor
    assert s.run("acme", D[0] - timedelta(days=1), D[3] + timedelta(days=1)).success
    before = s.rows("SELECT session_date, session_id, event_count FROM sessions_action_based ORDER BY ALL")

    # A device that was offline uploads a visit from day D[1] today.
    s.capture("acme", visit("late", D[1], "12:00", device="dev-9"))
    late = s.tick(cursor)

    assert ranges(late) == [("acme", key(D[1] - timedelta(days=1)), key(D[1] + timedelta(days=1)))]
    request = late.run_requests[0]
    assert request.run_key.startswith(f"capture:acme:{D[0]}:{D[2]}:")
    job = s.defs.resolve_job_def(PARTITIONS_JOB)
    assert job.execute_in_process(instance=s.instance, tags=dict(request.tags), run_config=QUIET_RUN_CONFIG).success
    after = s.rows("SELECT session_date, session_id, event_count FROM sessions_action_based ORDER BY ALL")
    assert [r for r in after if r not in before] == [(D[1], after[1][1], 4)]
    assert [r for r in before if r not in after] == []


def test_sensor_leaves_days_without_a_partition_for_later(tmp_path):
    """A timestamp up to 24 h ahead lands in tomorrow's folder; it stays unseen until tomorrow's partition exists."""
    s = Setup(tmp_path / "home", ("acme", "action"))
    tomorrow = TODAY + timedelta(days=1)
    s.capture("acme", [screen("ahead", tomorrow, "00:30")])
    register_projects(s.instance, ["acme"])
    result = s.tick()
    assert result.run_requests == []
    assert json.loads(result.cursor) == {f"acme/events/{tomorrow}": 0}
    assert s.tick(result.cursor).run_requests == []


# --------------------------------------------------------------------------- schedule


def test_daily_schedule_runs_yesterday_the_day_before_and_today_per_project(tmp_path):
    s = Setup(tmp_path / "home", ("acme", "action"), ("beta", "time"))
    register_projects(s.instance, ["acme", "beta"])
    when = datetime(2026, 11, 23, 0, 30, tzinfo=timezone.utc)
    context = dg.build_schedule_context(instance=s.instance, scheduled_execution_time=when)

    requests = list(daily_sessions_schedule(context))

    assert sorted((r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"], r.run_key)
                  for r in requests) == [
        ("2026-11-21|acme", "2026-11-23|acme", "daily:acme:2026-11-23"),
        ("2026-11-21|beta", "2026-11-23|beta", "daily:beta:2026-11-23"),
    ]
    schedule = s.defs.resolve_schedule_def("daily_sessions")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert s.defs.resolve_sensor_def("new_capture_data").default_status == dg.DefaultSensorStatus.RUNNING


# --------------------------------------------------------------------------- completeness and concurrency


def test_completeness_check_names_the_missing_project(tmp_path):
    s = Setup(tmp_path / "home", ("acme", "action"), ("beta", "action"))
    for project_id in ("acme", "beta"):
        s.registry.update(project_id, created_at="2026-01-01T00:00:00+00:00")
    due = day_due_complete(datetime.now(timezone.utc))
    s.capture("acme", visit("a", due))
    assert s.run("acme", due).success

    completeness = s.defs.resolve_job_def(COMPLETENESS_JOB)
    result = completeness.execute_in_process(instance=s.instance, raise_on_error=False)
    evaluation = check_evaluations(result)[YESTERDAY_COMPLETE]
    assert not evaluation.passed
    assert evaluation.metadata["missing_partitions"].value == len(COMPLETED_ASSETS)
    assert "beta" in evaluation.metadata["missing"].value and "acme" not in evaluation.metadata["missing"].value

    assert s.run("beta", due).success
    result = completeness.execute_in_process(instance=s.instance, raise_on_error=False)
    assert check_evaluations(result)[YESTERDAY_COMPLETE].passed


def test_two_runs_launched_at_the_same_moment_both_succeed(tmp_path):
    """Two `vespucci materialize` processes (two runs, two DuckDB writers) started together."""
    s = Setup(tmp_path / "home", ("acme", "action"), ("beta", "time"))
    s.capture("acme", visit("a", D[1]) + visit("b", D[2]))
    s.capture("beta", visit("c", D[1]))
    env = {**os.environ, "VESPUCCI_HOME": str(s.home.root)}
    command = [sys.executable, "-m", "vespucci_assets.cli", "materialize", "--project"]
    launched = [subprocess.Popen([*command, p], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for p in ("acme", "beta")]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in launched]

    assert [code for code, _ in outcomes] == [0, 0], outcomes
    runs = s.instance.get_runs()
    assert len(runs) == 2 and all(r.is_success for r in runs)
    assert s.rows("SELECT project_id, count(*) FROM sessions GROUP BY 1 ORDER BY 1") == [("acme", 2), ("beta", 1)]


def _session(s: Setup, method: str, first_member: str) -> str:
    return s.rows(f"SELECT session_id FROM session_events WHERE tracking_method = '{method}' AND message_id = '{first_member}'")[0][0]


# (asset, check, how a bug would break the asset's rows, an asset downstream of it)
BLOCKING_CASES = [
    ("events", "unique_message_ids",
     "INSERT INTO events SELECT * REPLACE (event_date + 2 AS event_date) FROM events WHERE message_id = 'a-1'", "session_events"),
    ("session_events", "members_conserved",
     "DELETE FROM session_events WHERE tracking_method = 'time' AND message_id = 'b-2'", "sessions_time_based"),
    ("session_events", "no_member_in_two_sessions",
     "INSERT INTO session_events SELECT * REPLACE ('other' AS session_id) FROM session_events WHERE message_id = 'a-1'",
     "sessions_action_based"),
    *[(f"sessions_{m}_based", check, sql.format(table=f"sessions_{m}_based", m=m), "sessions")
      for m in ("time", "action")
      for check, sql in (
          ("no_overlapping_sessions", "UPDATE {table} SET ended_at = ended_at + INTERVAL 7 HOUR WHERE session_id = '{{a_{m}}}'"),
          ("session_bounds", "UPDATE {table} SET ended_at = started_at - INTERVAL 1 SECOND WHERE session_id = '{{a_{m}}}'"),
          ("event_count_matches_members", "UPDATE {table} SET event_count = event_count + 1 WHERE session_id = '{{a_{m}}}'"),
      )],
    ("sessions_time_based", "time_gap_rules",
     "UPDATE session_events SET session_id = '{a_time}' WHERE tracking_method = 'time' AND session_id = '{b_time}'", "sessions"),
    ("sessions_action_based", "action_session_shape",
     "UPDATE session_events SET seq = CASE message_id WHEN 'a-3' THEN 1 WHEN 'a-0' THEN 4 ELSE seq END "
     "WHERE tracking_method = 'action' AND session_id = '{a_action}'", "sessions"),
]


@pytest.mark.parametrize("asset, check, corruption, downstream", BLOCKING_CASES, ids=[f"{a}.{c}" for a, c, _, _ in BLOCKING_CASES])
def test_each_blocking_check_fails_on_broken_rows_and_blocks_downstream(tmp_path, asset, check, corruption, downstream):
    from vespucci_assets.definitions import ASSETS
    from vespucci_assets.defs.checks import CHECKS

    s = Setup(tmp_path / "home", ("acme", "action"))
    s.capture("acme", visit("a", D[1]) + visit("b", D[1], "15:00"))
    assert s.run("acme", D[1]).success
    ids = {f"{p}_{m}": _session(s, m, f"{p}-0") for p in ("a", "b") for m in ("time", "action")}
    with duckdb.connect(str(s.home.warehouse_path)) as conn:
        conn.execute(corruption.format(**ids))
    before = len(s.instance.fetch_materializations(dg.AssetKey(downstream), limit=10).records)

    # The asset's checks, and what is downstream of it, as a re-run after the bug would execute them.
    selection = dg.AssetSelection.checks_for_assets(asset) | dg.AssetSelection.assets(asset).downstream(include_self=False)
    result = dg.materialize([*ASSETS, *CHECKS], selection=selection, instance=s.instance, resources=s.defs.resources,
                            partition_key=key(D[1]), run_config=QUIET_RUN_CONFIG, raise_on_error=False)

    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert [(e.asset_key.path[0], e.check_name) for e in failed if e.check_name == check] == [(asset, check)]
    assert all(e.severity == dg.AssetCheckSeverity.ERROR for e in failed if e.check_name == check)
    assert not result.success
    assert len(s.instance.fetch_materializations(dg.AssetKey(downstream), limit=10).records) == before
