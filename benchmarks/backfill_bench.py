"""A backfill of many days for several projects: one Dagster run per project, and Dagster's share of it.

Default: 3 projects x 30 days x 1,000,000 events a day, generated into the capture store by
the sessionize benchmark's DuckDB generator. The same days are then computed twice from the
same capture store:

- the plain pipeline (`pipeline.build_all`: the same SQL, no orchestrator) into its own DuckDB file;
- `vespucci materialize`'s path (`runs.materialize_partitions`: one real Dagster run per
  project, a single-run backfill of all its days, every asset and every partition check)
  into another, recorded in a real Dagster instance.

The plain pipeline then runs the same partition checks (`quality.run_partition_checks`,
what each Dagster check op measures), so both sides do the same SQL.

Dagster overhead is measured inside the Dagster runs: their wall time (definitions, instance,
launching, the executor, event-log writes, resource set-up, each partition's figures and
preview) minus the time spent in the pipeline's own functions (`build_events` ...
`build_metrics`, `run_partition_checks`: what the plain side runs), timed by wrapping them
where the assets call them. Comparing against the plain side's wall time instead mixes in
run-to-run noise of the SQL itself: the same cold build of one project's `events` took
89-113 s over seven runs on this machine, more than the whole of Dagster's share. That
comparison is printed too, as a cross-check. Both warehouses must hold the same sessions.
The last line is machine-readable.

Projects are done one at a time and each one's capture store is removed once both sides have
read it: at 1M events a day, three projects' NDJSON (about 70 GB) would not fit beside the
warehouses on a typical disk, while one project's (about 23 GB) does. Each side keeps every
project in one warehouse file, as the product does, so later projects cost both sides the same.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import duckdb  # noqa: E402

from sessionize_bench import EVENTS_PER_DEVICE, generate_in_child  # noqa: E402
from vespucci_assets.capture import CaptureStore  # noqa: E402
from vespucci_assets.home import Home  # noqa: E402
from vespucci_assets.pipeline import build_all, session_settings  # noqa: E402
from vespucci_assets.quality import run_partition_checks  # noqa: E402
from vespucci_assets.projects import Project, Registry  # noqa: E402
from vespucci_assets.runs import dagster_instance, materialize_partitions  # noqa: E402
from vespucci_assets.warehouse import connect_warehouse  # noqa: E402

# Where the assets and checks call the pipeline's functions: (module, name), as imported there.
PIPELINE_CALLS = (
    ("vespucci_assets.defs.ingestion.assets", "build_events"),
    ("vespucci_assets.defs.ingestion.assets", "build_quarantine"),
    ("vespucci_assets.defs.sessions.assets", "build_session_events"),
    ("vespucci_assets.defs.sessions.assets", "build_method_sessions"),
    ("vespucci_assets.defs.sessions.assets", "build_chosen_sessions"),
    ("vespucci_assets.defs.reporting.assets", "build_metrics"),
    ("vespucci_assets.quality", "run_partition_checks"),
)
COMPARED = ("sessions_time_based", "sessions_action_based", "chosen_sessions", "session_metrics_daily")


@contextlib.contextmanager
def timed_pipeline_calls():
    """Yield a dict that accumulates the wall time spent in each of PIPELINE_CALLS while inside."""
    spent: dict[str, float] = {}
    originals = []
    for module_name, name in PIPELINE_CALLS:
        module = importlib.import_module(module_name)
        original = getattr(module, name)

        @functools.wraps(original)
        def timed(*args, _original=original, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - start

        setattr(module, name, timed)
        originals.append((module, name, original))
    try:
        yield spent
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=3)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--events-per-day", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed afterwards")
    args = parser.parse_args()
    os.environ.pop("DAGSTER_HOME", None)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vespucci-backfill-"))
    try:
        home = Home(workdir / "home").ensure()
        registry = Registry(home.registry_path)
        store = CaptureStore(home.capture_dir)
        events = args.events_per_day * args.days
        plain_path = workdir / "plain.duckdb"
        plain, checks, run_s, sessions, wall, in_pipeline = {}, {}, {}, {}, {}, {}
        generated_s, dagster_s, partitions, runs = 0.0, 0.0, 0, 0
        print(f"{args.projects} projects x {args.days} days, {events * args.projects:,} events ({events:,} per project); "
              "one project at a time, its capture store removed once both sides are done", flush=True)
        for i in range(args.projects):
            project = Project(project_id=f"app-{i}", name=f"App {i}", tracking_method="auto")
            pid = project.project_id
            registry.add(project)
            t0 = time.perf_counter()
            generate_in_child(home.capture_dir, events, max(1, events // (EVENTS_PER_DEVICE * args.days // 7)), seed=11 + i,
                              memory_limit="6GB", project_id=pid, days=args.days)
            generated_s += time.perf_counter() - t0
            project_days = store.days(pid)
            capture_gb = sum(f.stat().st_size for f in (home.capture_dir / pid).rglob("*") if f.is_file()) / 1e9
            print(f"{pid}: {len(project_days)} days, {capture_gb:.1f} GB of NDJSON generated in {time.perf_counter() - t0:.0f} s",
                  flush=True)

            conn = connect_warehouse(plain_path)
            t0 = time.perf_counter()
            build_all(conn, store, project, project_days)
            plain[pid] = time.perf_counter() - t0
            t0 = time.perf_counter()
            outcomes = run_partition_checks(conn, pid, project_days, session_settings(project))
            checks[pid] = time.perf_counter() - t0
            failed = sorted({name for (_, name, _), outcome in outcomes.items() if not outcome.passed})
            print(f"  plain pipeline: {plain[pid]:.1f} s, {len(outcomes)} check results in {checks[pid]:.1f} s"
                  + (f" (not passed: {', '.join(failed)})" if failed else ""), flush=True)
            conn.close()

            t0 = time.perf_counter()
            with timed_pipeline_calls() as spent:
                summary = materialize_partitions(home, [pid], progress=lambda line: print(f"  dagster {line}", flush=True))
            wall[pid] = time.perf_counter() - t0
            in_pipeline[pid] = sum(spent.values())
            dagster_s += wall[pid]
            partitions += summary.partitions
            runs += len(summary.runs)
            instance = dagster_instance(home)
            for run_id in summary.runs:
                stats = instance.get_run_stats(run_id)
                run_s[pid] = stats.end_time - stats.start_time

            with duckdb.connect(str(plain_path), read_only=True) as a, \
                    duckdb.connect(str(home.warehouse_path), read_only=True) as b:
                for table in COMPARED:
                    query = f"SELECT count(*), count(DISTINCT session_date) FROM {table} WHERE project_id = ?"
                    left, right = a.execute(query, [pid]).fetchone(), b.execute(query, [pid]).fetchone()
                    assert left == right, (table, left, right)
                sessions[pid] = b.execute("SELECT count(*) FROM sessions WHERE project_id = ?", [pid]).fetchone()[0]
            shutil.rmtree(home.capture_dir / pid)

        plain_s = sum(plain.values())
        checked_s = plain_s + sum(checks.values())
        pipeline_s = sum(in_pipeline.values())
        overhead = (dagster_s - pipeline_s) / dagster_s
        plain_overhead = (dagster_s - checked_s) / dagster_s
        print()
        print(f"generated in {generated_s:.0f} s")
        print(f"{'project':<8} {'plain s':>9} {'checks s':>9} {'dagster s':>10} {'run s':>9} {'in pipeline s':>14} "
              f"{'overhead':>9} {'sessions':>10}")
        for pid in plain:
            print(f"{pid:<8} {plain[pid]:>9.1f} {checks[pid]:>9.1f} {wall[pid]:>10.1f} {run_s.get(pid, 0):>9.1f} "
                  f"{in_pipeline[pid]:>14.1f} {(wall[pid] - in_pipeline[pid]) / wall[pid]:>9.1%} {sessions[pid]:>10,}")
        print(f"{'total':<8} {plain_s:>9.1f} {sum(checks.values()):>9.1f} {dagster_s:>10.1f} {'':>9} {pipeline_s:>14.1f} "
              f"{overhead:>9.1%}   (Dagster: {runs} runs, {partitions} day partitions, wall time incl. launching)")
        print(f"Dagster overhead {overhead:.1%}: {dagster_s - pipeline_s:.1f} s of {dagster_s:.1f} s outside the pipeline's "
              f"own functions. Cross-check against the plain side's separate run of the same SQL: "
              f"{plain_overhead:.1%} (with checks), {(dagster_s - plain_s) / dagster_s:.1%} (without)")
        print(f"sessions: {sum(sessions.values()):,}; identical session counts in both warehouses for {', '.join(COMPARED)}")
        print(f"backfill_wall_s={dagster_s:.1f} dagster_overhead={overhead:.3f} plain_comparison_overhead="
              f"{plain_overhead:.3f} runs={runs} events={events * args.projects} "
              f"events_per_s={events * args.projects / dagster_s:.0f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
