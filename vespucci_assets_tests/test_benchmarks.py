"""The backfill benchmark end to end at a tiny size: its figures come from real runs, not from its wrapper failing silently."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_backfill_bench_measures_dagster_share_inside_real_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "backfill_bench.py"),
         "--projects", "2", "--days", "2", "--events-per-day", "20000", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert "identical session counts in both warehouses" in lines[-2]
    figures = dict(pair.split("=") for pair in lines[-1].split())
    assert figures["runs"] == "2"
    assert int(figures["events"]) == 2 * 2 * 20000
    # Overhead below 1 means the pipeline's functions were timed inside the runs; above 0, that Dagster costs something.
    assert 0 < float(figures["dagster_overhead"]) < 1
    assert float(figures["backfill_wall_s"]) > 0
