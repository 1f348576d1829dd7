"""The real Dagster webserver on a materialized home: what its GraphQL API (and so the UI) shows.

One home with project `acme` and four days of sample data is materialized by real runs, then
`dagster-webserver -w workspace.yaml` is started against that instance in its own process
group, and every test below queries its /graphql endpoint.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pytest

from vespucci_assets.quality import (
    ACTION_SESSION_SHAPE,
    EVENT_COUNT_MATCHES_MEMBERS,
    LONG_ACTIVITY_DEVICES,
    MEMBERS_CONSERVED,
    NO_MEMBER_IN_TWO_SESSIONS,
    NO_OVERLAPPING_SESSIONS,
    ORPHAN_RATE_AND_METHOD_FIT,
    QUARANTINE_RATE,
    SESSION_BOUNDS,
    TIME_GAP_RULES,
    UNIQUE_MESSAGE_IDS,
)
from vespucci_assets.defs.jobs import COMPLETENESS_JOB, PARTITIONS_JOB, YESTERDAY_COMPLETE
from vespucci_assets.defs.partitions import DAY_X_PROJECT, partition_key
from vespucci_assets.runs import dagster_instance, materialize_partitions

from .test_dagster_runs import DAYS, _capture_sample, _home

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = REPO_ROOT / "workspace.yaml"
READY_TIMEOUT_S = 90
PROJECT = "acme"
KEYS = {str(partition_key(day, PROJECT)) for day in DAYS}  # "2026-11-22|acme", ...

GROUPS = {
    "events": "ingestion",
    "quarantined_events": "ingestion",
    "session_events": "sessions",
    "sessions_time_based": "sessions",
    "sessions_action_based": "sessions",
    "sessions": "sessions",
    "session_metrics_daily": "reporting",
}
DEPENDENCIES = {
    "events": set(),
    "quarantined_events": set(),
    "session_events": {"events"},
    "sessions_time_based": {"events", "session_events"},
    "sessions_action_based": {"events", "session_events"},
    "sessions": {"session_events", "sessions_time_based", "sessions_action_based"},
    "session_metrics_daily": {"sessions", "session_events"},
}
# Checks evaluated by every partitions_job run (the completeness check runs hourly on its own job).
RUN_CHECKS = {
    "events": {UNIQUE_MESSAGE_IDS},
    "quarantined_events": {QUARANTINE_RATE},
    "session_events": {MEMBERS_CONSERVED, NO_MEMBER_IN_TWO_SESSIONS, ORPHAN_RATE_AND_METHOD_FIT, LONG_ACTIVITY_DEVICES},
    "sessions_time_based": {TIME_GAP_RULES, NO_OVERLAPPING_SESSIONS, SESSION_BOUNDS, EVENT_COUNT_MATCHES_MEMBERS},
    "sessions_action_based": {ACTION_SESSION_SHAPE, NO_OVERLAPPING_SESSIONS, SESSION_BOUNDS, EVENT_COUNT_MATCHES_MEMBERS},
    "session_metrics_daily": set(),
}
BLOCKING = {UNIQUE_MESSAGE_IDS, MEMBERS_CONSERVED, NO_MEMBER_IN_TWO_SESSIONS, TIME_GAP_RULES, ACTION_SESSION_SHAPE,
            NO_OVERLAPPING_SESSIONS, SESSION_BOUNDS, EVENT_COUNT_MATCHES_MEMBERS}
FRESH_ASSETS = {"sessions_time_based", "sessions_action_based", "sessions"}


class Webserver:
    def __init__(self, url: str, run_id: str, home, instance_dir: Path):
        self.url = url
        self.run_id = run_id
        self.home = home
        self.instance_dir = instance_dir

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        data = _post(f"{self.url}/graphql", {"query": query, "variables": variables or {}})
        assert not data.get("errors"), data["errors"]
        return data["data"]


def _post(url: str, body: dict, timeout: float = 30) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:  # GraphQL validation errors come back as 400 with a JSON body
        return json.loads(error.read().decode() or "{}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""


LOCATION_STATUS = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def _wait_until_ready(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    """/server_info answers, then the `vespucci` code location is loaded (not just the web process up)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {proc.returncode}:\n{_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                if response.status == 200:
                    data = _post(f"{url}/graphql", {"query": LOCATION_STATUS}, timeout=10)
                    entries = data["data"]["workspaceOrError"]["locationEntries"]
                    last = entries
                    if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                        errors = [e for e in entries if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"]
                        assert not errors, f"code location failed to load: {errors}"
                        return
        except (OSError, KeyError, TypeError, ValueError) as error:
            last = error
        time.sleep(0.5)
    pytest.fail(f"dagster-webserver not ready after {READY_TIMEOUT_S}s (last: {last!r}):\n{_log_tail(log_path)}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the webserver's whole process group (it runs the code server as a child)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group, even if the leader already exited
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    root = tmp_path_factory.mktemp("webserver")
    with pytest.MonkeyPatch.context() as mp:
        home = _home(root / "home", PROJECT, "auto")
        instance_dir = home.root / "dagster"
        mp.setenv("VESPUCCI_HOME", str(home.root))
        mp.setenv("DAGSTER_HOME", str(instance_dir))
        _capture_sample(home, PROJECT)
        summary = materialize_partitions(home)
        assert len(summary.runs) == 1 and summary.partitions == len(DAYS)
        assert (instance_dir / "dagster.yaml").exists()

        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = root / "webserver.log"
        env = {**os.environ, "VESPUCCI_HOME": str(home.root), "DAGSTER_HOME": str(instance_dir)}
        executable = os.path.join(os.path.dirname(sys.executable), "dagster-webserver")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [executable, "-w", str(WORKSPACE), "-h", "127.0.0.1", "-p", str(port)],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            _wait_until_ready(url, proc, log_path)
            yield Webserver(url, summary.runs[0], home, instance_dir)
        finally:
            _stop(proc)


ASSET_GRAPH = """
{ assetNodes { assetKey { path } groupName isPartitioned isMaterializable
    dependencyKeys { path } dependedByKeys { path } jobNames
    repository { name location { name } } } }
"""


def test_asset_graph_groups_and_edges(webserver):
    nodes = {n["assetKey"]["path"][-1]: n for n in webserver.graphql(ASSET_GRAPH)["assetNodes"]}
    assert set(nodes) == set(GROUPS)
    assert {name: n["groupName"] for name, n in nodes.items()} == GROUPS
    assert {name: {k["path"][-1] for k in n["dependencyKeys"]} for name, n in nodes.items()} == DEPENDENCIES
    for name, node in nodes.items():
        assert node["isPartitioned"] and node["isMaterializable"], name
        assert node["repository"]["location"]["name"] == "vespucci"
        assert PARTITIONS_JOB in node["jobNames"], name
        downstream = {k["path"][-1] for k in node["dependedByKeys"]}
        assert downstream == {d for d, ups in DEPENDENCIES.items() if name in ups}, name


PARTITIONS = """
query ($keys: [String!]) { assetNodes(assetKeys: [{path: ["sessions"]}, {path: ["sessions_time_based"]},
                                       {path: ["events"]}, {path: ["session_metrics_daily"]}]) {
    assetKey { path }
    partitionKeysByDimension { name type }
    partitionStats { numMaterialized numPartitions numFailed numMaterializing }
    assetPartitionStatuses { __typename ... on MultiPartitionStatuses { primaryDimensionName
      ranges { primaryDimStartKey primaryDimEndKey
        secondaryDim { __typename ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } } } } }
    latestMaterializationByPartition(partitions: $keys) { partition runId }
} }
"""


def _expand(ranges: list[dict]) -> tuple[set[str], set[str]]:
    """MultiPartitionStatuses ranges (date x project) -> (materialized keys, failed keys) like '2026-11-22|acme'."""
    materialized, failed = set(), set()
    for r in ranges:
        day, last = date.fromisoformat(r["primaryDimStartKey"]), date.fromisoformat(r["primaryDimEndKey"])
        while day <= last:
            materialized |= {f"{day}|{p}" for p in r["secondaryDim"]["materializedPartitions"]}
            failed |= {f"{day}|{p}" for p in r["secondaryDim"]["failedPartitions"]}
            day += timedelta(days=1)
    return materialized, failed


def test_partitions_cover_the_materialized_days(webserver):
    with dg.partition_loading_context(dynamic_partitions_store=dagster_instance(webserver.home)):
        total = len(DAY_X_PROJECT.get_partition_keys())
    nodes = webserver.graphql(PARTITIONS, {"keys": sorted(KEYS)})["assetNodes"]
    assert len(nodes) == 4
    for node in nodes:
        name = node["assetKey"]["path"][-1]
        assert node["partitionKeysByDimension"] == [{"name": "date", "type": "TIME_WINDOW"},
                                                    {"name": "project", "type": "DYNAMIC"}], name
        stats = node["partitionStats"]
        assert stats["numMaterialized"] == len(DAYS) and stats["numFailed"] == 0, (name, stats)
        assert stats["numMaterializing"] == 0 and abs(stats["numPartitions"] - total) <= 1, (name, stats)
        statuses = node["assetPartitionStatuses"]
        assert statuses["__typename"] == "MultiPartitionStatuses" and statuses["primaryDimensionName"] == "date"
        assert _expand(statuses["ranges"]) == (KEYS, set()), name
        latest = {m["partition"]: m["runId"] for m in node["latestMaterializationByPartition"]}
        assert latest == {key: webserver.run_id for key in KEYS}, name


CHECKS = """
{ assetNodes { assetKey { path } hasAssetChecks
    assetChecksOrError { __typename ... on AssetChecks { checks { name blocking jobNames
      partitionDefinition { type }
      executionForLatestMaterialization { status runId partition
        evaluation { success severity description partition targetMaterialization { runId } } } } } } } }
"""

CHECK_EXECUTIONS = """
query ($asset: AssetKeyInput!, $check: String!) {
  assetCheckExecutions(assetKey: $asset, checkName: $check, limit: 20) {
    runId status partition evaluation { success partition } } }
"""


def test_asset_checks_passed_for_the_materialized_range(webserver):
    nodes = {n["assetKey"]["path"][-1]: n for n in webserver.graphql(CHECKS)["assetNodes"]}
    expected = {**RUN_CHECKS, "sessions": {YESTERDAY_COMPLETE}}
    for name, node in nodes.items():
        checks = {c["name"]: c for c in node["assetChecksOrError"]["checks"]}
        assert set(checks) == expected[name], name
        assert node["hasAssetChecks"] == bool(expected[name])
        for check_name, check in checks.items():
            assert check["blocking"] == (check_name in BLOCKING), (name, check_name)
            if check_name == YESTERDAY_COMPLETE:
                # Unpartitioned, run hourly by completeness_job; no run has evaluated it here.
                assert check["partitionDefinition"] is None and COMPLETENESS_JOB in check["jobNames"]
                assert check["executionForLatestMaterialization"] is None
                continue
            assert check["partitionDefinition"] == {"type": "MULTIPARTITIONED"}, (name, check_name)
            execution = check["executionForLatestMaterialization"]
            assert execution is not None, (name, check_name)
            assert execution["status"] == "SUCCEEDED" and execution["runId"] == webserver.run_id, (name, check_name)
            evaluation = execution["evaluation"]
            assert evaluation["success"] is True, (name, check_name, evaluation)
            assert evaluation["severity"] == ("ERROR" if check_name in BLOCKING else "WARN")
            assert evaluation["description"], evaluation
            assert evaluation["targetMaterialization"]["runId"] == webserver.run_id
            # Each partition of the ranged run gets its own evaluation, tied to its own materialization.
            assert execution["partition"] in KEYS and evaluation["partition"] == execution["partition"]

    executions = webserver.graphql(CHECK_EXECUTIONS, {"asset": {"path": ["sessions_time_based"]}, "check": TIME_GAP_RULES})
    executions = executions["assetCheckExecutions"]
    assert {e["runId"] for e in executions} == {webserver.run_id}
    assert {e["status"] for e in executions} == {"SUCCEEDED"}
    assert {e["partition"] for e in executions} == {e["evaluation"]["partition"] for e in executions} == KEYS
    assert all(e["evaluation"]["success"] for e in executions)


CHECK_PARTITION_STATUSES = """
{ assetNodes(assetKeys: [{path: ["sessions_time_based"]}]) { assetChecksOrError { ... on AssetChecks { checks { name
    partitionStatuses { __typename ... on AssetCheckMultiPartitionStatuses { ranges { primaryDimStartKey primaryDimEndKey
      secondaryDim { ... on AssetCheckDefaultPartitionStatuses {
        succeededPartitions failedPartitions skippedPartitions executionFailedPartitions } } } } } } } } } }
"""


def test_asset_check_status_per_partition_is_succeeded(webserver):
    checks = webserver.graphql(CHECK_PARTITION_STATUSES)["assetNodes"][0]["assetChecksOrError"]["checks"]
    assert {c["name"] for c in checks} == RUN_CHECKS["sessions_time_based"]
    for check in checks:
        ranges = check["partitionStatuses"]["ranges"]
        succeeded = set()
        for r in ranges:
            day, last = date.fromisoformat(r["primaryDimStartKey"]), date.fromisoformat(r["primaryDimEndKey"])
            while day <= last:
                succeeded |= {f"{day}|{p}" for p in r["secondaryDim"]["succeededPartitions"]}
                day += timedelta(days=1)
        assert succeeded == KEYS, check


FRESHNESS = """
{ assetNodes { assetKey { path }
    internalFreshnessPolicy { __typename ... on TimeWindowFreshnessPolicy { failWindowSeconds warnWindowSeconds } }
    freshnessStatusInfo { freshnessStatus freshnessStatusMetadata { lastMaterializedTimestamp } } } }
"""


def _freshness(webserver) -> dict[str, dict]:
    return {n["assetKey"]["path"][-1]: n for n in webserver.graphql(FRESHNESS)["assetNodes"]}


def _evaluate_freshness_once(webserver) -> None:
    """One iteration of the freshness daemon that `dagster dev` runs every 30 s, against the same instance."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster._daemon.freshness import FreshnessDaemon

    instance = dagster_instance(webserver.home)
    with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(WORKSPACE)])) as context:
        list(FreshnessDaemon().run_iteration(context))


def test_freshness_policy_and_status(webserver):
    before = _freshness(webserver)
    for name, node in before.items():
        if name not in FRESH_ASSETS:
            assert node["internalFreshnessPolicy"] is None and node["freshnessStatusInfo"] is None, name
            continue
        # SESSION_FRESHNESS: fail after 30 h, warn after 26 h.
        assert node["internalFreshnessPolicy"] == {"__typename": "TimeWindowFreshnessPolicy",
                                                   "failWindowSeconds": 30 * 3600, "warnWindowSeconds": 26 * 3600}
        # The webserver alone never evaluates freshness: that is the daemon's job.
        assert node["freshnessStatusInfo"] == {"freshnessStatus": "UNKNOWN", "freshnessStatusMetadata": None}, name

    _evaluate_freshness_once(webserver)

    instance = dagster_instance(webserver.home)
    after = _freshness(webserver)
    for name in FRESH_ASSETS:
        info = after[name]["freshnessStatusInfo"]
        assert info["freshnessStatus"] == "HEALTHY", (name, info)
        latest = instance.get_latest_materialization_event(dg.AssetKey(name))
        assert info["freshnessStatusMetadata"]["lastMaterializedTimestamp"] == pytest.approx(latest.timestamp), name
    assert after["events"]["freshnessStatusInfo"] is None


INSTIGATORS = """
{ repositoriesOrError { __typename ... on RepositoryConnection { nodes { name location { name }
    schedules { name cronSchedule executionTimezone pipelineName scheduleState { status } }
    sensors { name minIntervalSeconds targets { pipelineName } sensorState { status } } } } } }
"""


def test_schedules_and_sensor_are_running_by_default(webserver):
    repositories = webserver.graphql(INSTIGATORS)["repositoriesOrError"]["nodes"]
    assert len(repositories) == 1 and repositories[0]["location"]["name"] == "vespucci"
    schedules = {s["name"]: s for s in repositories[0]["schedules"]}
    assert set(schedules) == {"daily_sessions", "hourly_completeness"}
    assert schedules["daily_sessions"] == {"name": "daily_sessions", "cronSchedule": "30 0 * * *", "executionTimezone": "UTC",
                                           "pipelineName": PARTITIONS_JOB, "scheduleState": {"status": "RUNNING"}}
    assert schedules["hourly_completeness"] == {"name": "hourly_completeness", "cronSchedule": "0 * * * *",
                                                "executionTimezone": "UTC", "pipelineName": COMPLETENESS_JOB,
                                                "scheduleState": {"status": "RUNNING"}}
    sensors = {s["name"]: s for s in repositories[0]["sensors"]}
    assert sensors == {
        "new_capture_data": {"name": "new_capture_data", "minIntervalSeconds": 60,
                             "targets": [{"pipelineName": PARTITIONS_JOB}], "sensorState": {"status": "RUNNING"}},
        "warehouse_late_rows": {"name": "warehouse_late_rows", "minIntervalSeconds": 300,
                                "targets": [{"pipelineName": PARTITIONS_JOB}], "sensorState": {"status": "RUNNING"}},
    }
