"""The `vespucci` command line, run as a real subprocess against a fresh VESPUCCI_HOME."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vespucci_assets.projects import Registry
from vespucci_assets_tests.support import at, iso, message


def vespucci(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "VESPUCCI_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    result = subprocess.run(
        [sys.executable, "-m", "vespucci_assets.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"vespucci {' '.join(args)} failed: {result.stderr}")
    return result


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vespucci: error:")
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def capture_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "capture").rglob("*.ndjson")) if (home / "capture").exists() else []


def test_projects_lifecycle(tmp_path):
    home = tmp_path / "home"
    created = vespucci(home, "projects", "add", "acme", "--name", "Acme iOS", "--tracking-method", "action",
                       "--session-timeout-minutes", "20", "--json")
    payload = json.loads(created.stdout)
    assert created.stdout.count("\n") == 1 and payload["project_id"] == "acme"
    api_key = payload["api_key"]
    registry_text = (home / "projects.json").read_text()
    assert api_key not in registry_text, "API keys must be stored hashed"
    assert Registry(home / "projects.json").authenticate(api_key).project_id == "acme"

    listed = vespucci(home, "projects", "list", "--json")
    assert [p["project_id"] for p in json.loads(listed.stdout)] == ["acme"]
    shown = json.loads(vespucci(home, "projects", "show", "acme", "--json").stdout)
    assert shown["tracking_method"] == "action" and shown["session_timeout_minutes"] == 20
    assert "api_key_hashes" not in shown

    vespucci(home, "projects", "set", "acme", "--tracking-method", "auto", "--session-timeout-minutes", "45")
    shown = json.loads(vespucci(home, "projects", "show", "acme", "--json").stdout)
    assert (shown["tracking_method"], shown["session_timeout_minutes"]) == ("auto", 45)

    rotated = json.loads(vespucci(home, "projects", "rotate-key", "acme", "--json").stdout)["api_key"]
    registry = Registry(home / "projects.json")
    assert registry.authenticate(rotated).project_id == "acme"
    assert registry.authenticate(api_key) is None


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("projects", "show", "nope"), "unknown project 'nope'"),
        (("projects", "set", "nope", "--name", "x"), "unknown project 'nope'"),
        (("projects", "add", "Bad Id"), "invalid project id"),
        (("projects", "add", "acme2", "--session-timeout-minutes", "0"), "session timeout"),
        (("projects", "add", "acme2", "--session-timeout-minutes", "1441"), "session timeout"),
        (("projects", "add", "acme2", "--tracking-method", "hourly"), "invalid choice"),
        (("projects", "add", "acme2", "--source", "warehouse"), "--warehouse-url"),
        (("projects", "add", "acme"), "already exists"),
        (("import", "missing.ndjson", "--project", "nope"), "unknown project 'nope'"),
        (("materialize", "--project", "nope"), "unknown project 'nope'"),
        (("materialize", "--from", "yesterday"), "invalid day"),
        (("materialize", "--from", "2026-11-20", "--to", "2026-11-01"), "--from must not be after --to"),
        (("frobnicate",), "invalid choice"),
    ],
)
def test_bad_input_gives_one_line_and_changes_nothing(tmp_path, args, fragment):
    home = tmp_path / "home"
    vespucci(home, "projects", "add", "acme")
    before = (home / "projects.json").read_text()
    assert_one_line_error(vespucci(home, *args, check=False), fragment)
    assert (home / "projects.json").read_text() == before
    assert capture_files(home) == []


def _stream(device: str, start_hour: int) -> list[dict]:
    return [
        message("Application Opened", at(f"{start_hour}:00"), device=device),
        message("screen:Home", at(f"{start_hour}:01"), device=device),
        message("Application Backgrounded", at(f"{start_hour}:05"), device=device),
    ]


def test_import_formats_and_s3_archive_folder(tmp_path):
    home = tmp_path / "home"
    vespucci(home, "projects", "add", "acme", "--tracking-method", "action")
    ndjson = tmp_path / "a.ndjson"
    ndjson.write_text("\n".join(json.dumps(m) for m in _stream("d1", 8)) + "\n")
    array = tmp_path / "b.json"
    array.write_text(json.dumps(_stream("d2", 9)))
    batch = tmp_path / "c.json.gz"
    batch.write_bytes(gzip.compress(json.dumps({"batch": _stream("d3", 10), "sentAt": iso(at("10:06"))}).encode()))
    archive = tmp_path / "segment-logs" / "src123" / "1795132800000"
    archive.mkdir(parents=True)
    (archive / "1795132900000.f8a9.gz").write_bytes(
        gzip.compress(("\n".join(json.dumps(m) for m in _stream("d4", 11) + [{"type": "track"}]) + "\n").encode())
    )

    result = vespucci(home, "import", str(ndjson), str(array), str(batch), str(tmp_path / "segment-logs"), "--project", "acme")
    assert "imported 12 messages from 4 file(s) into acme; 1 quarantined" in result.stdout

    vespucci(home, "materialize")
    import duckdb

    with duckdb.connect(str(home / "vespucci.duckdb"), read_only=True) as conn:
        sessions = conn.execute(
            "SELECT device_key, event_count, end_reason FROM sessions ORDER BY device_key"
        ).fetchall()
        quarantined = conn.execute("SELECT reason FROM quarantined_events").fetchall()
    assert sessions == [(f"d{i}", 3, "backgrounded") for i in range(1, 5)]
    assert quarantined == [("track without event name",)] or quarantined == [("neither anonymousId nor userId",)]


def test_malformed_file_imports_nothing(tmp_path):
    home = tmp_path / "home"
    vespucci(home, "projects", "add", "acme")
    good = tmp_path / "good.ndjson"
    good.write_text("\n".join(json.dumps(m) for m in _stream("d1", 8)) + "\n")
    broken = tmp_path / "broken.ndjson"
    broken.write_text(json.dumps(_stream("d2", 9)[0]) + "\n{not json\n")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")

    assert_one_line_error(vespucci(home, "import", str(good), str(broken), "--project", "acme", check=False),
                          "broken.ndjson: invalid JSON on line 2")
    assert_one_line_error(vespucci(home, "import", str(good), str(binary), "--project", "acme", check=False),
                          "binary.json: not UTF-8")
    assert_one_line_error(vespucci(home, "import", str(tmp_path / "nowhere"), "--project", "acme", check=False),
                          "no such file or folder")
    assert capture_files(home) == []


def test_materialize_failure_exits_non_zero_with_one_line(tmp_path):
    home = tmp_path / "home"
    vespucci(home, "projects", "add", "acme")
    source = tmp_path / "a.ndjson"
    source.write_text("\n".join(json.dumps(m) for m in _stream("d1", 8)) + "\n")
    vespucci(home, "import", str(source), "--project", "acme")
    (home / "vespucci.duckdb").write_bytes(b"this is not a duckdb file" * 100)
    result = vespucci(home, "materialize", check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("vespucci: error:")]
    assert len(errors) == 1 and "failed" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
