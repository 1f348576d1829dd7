"""The same stream through every engine in one run: events/s of DuckDB, the Postgres warehouse engine and Spark.

Usage:
    .venv/bin/python benchmarks/engines_bench.py                    # 300,000 events, 300 devices, 7 days
    .venv/bin/python benchmarks/engines_bench.py --events 1000000 --engines duckdb,spark

The stream is the sessionize benchmark's (mobile lifecycles, 1 % duplicate deliveries),
written once into a capture store and once, in Segment's warehouse layout, into a schema of
the real Postgres on 127.0.0.1. Each engine then runs `pipeline.build_all` over all days
(one set-based run, as a backfill) and the 14 partition checks:

- duckdb: the embedded warehouse file, reading the capture store;
- duckdb+pg-source: the embedded file, reading the Postgres schema (COPY out);
- warehouse: computed inside Postgres, in a Vespucci schema next to the Segment one;
- spark: PySpark `local[2]`, Parquet partitioned by project and day, reading the capture store.

events/s = capture-store lines / seconds of build_all. Session tables must be identical
across engines (row count and a hash of the ids). The last line is machine-readable:

    engines_events_per_s duckdb=<x> duckdb+pg-source=<y> warehouse=<z> spark=<s>
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import psycopg  # noqa: E402

from sessionize_bench import generate_in_child  # noqa: E402
from vespucci_assets.capture import EVENTS, CaptureStore  # noqa: E402
from vespucci_assets.engines import PostgresEngine, SparkEngine  # noqa: E402
from vespucci_assets.pipeline import build_all, session_settings  # noqa: E402
from vespucci_assets.projects import Project  # noqa: E402
from vespucci_assets.quality import run_partition_checks  # noqa: E402
from vespucci_assets.warehouse import connect_warehouse  # noqa: E402
from vespucci_assets_tests.segment_layout import PG_URL, layout, load_postgres  # noqa: E402

ENGINES = ("duckdb", "duckdb+pg-source", "warehouse", "spark")


def fingerprint(conn, table: str) -> tuple[int, str]:
    """Row count and a hash of the sorted session ids (the ids are themselves hashes of the members)."""
    ids = sorted(r[0] for r in conn.execute(f"SELECT session_id FROM {table}").fetchall())
    return len(ids), hashlib.sha1("".join(ids).encode()).hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--devices", type=int, default=None, help="default: events / 1000")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    engines = args.engines.split(",")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vespucci-engines-"))
    schema = f"bench_{secrets.token_hex(3)}"
    try:
        started = time.perf_counter()
        summary = generate_in_child(workdir / "capture", args.events, args.devices or max(1, args.events // 1000), seed=7,
                                    memory_limit="4GB", project_id="bench")
        store = CaptureStore(workdir / "capture")
        days = store.days("bench")
        print(f"{summary['lines']:,} lines over {len(days)} day folders, generated in {time.perf_counter() - started:.0f} s", flush=True)
        if {"warehouse", "duckdb+pg-source"} & set(engines):
            started = time.perf_counter()
            load_postgres(schema, layout(list(store.read_records("bench", EVENTS, days))))
            print(f"loaded into Postgres schema {schema} (Segment layout) in {time.perf_counter() - started:.0f} s", flush=True)

        results, prints = {}, {}
        for name in engines:
            if name == "duckdb":
                project, conn = Project(project_id="bench", name="bench"), connect_warehouse(workdir / "duckdb.duckdb")
            elif name == "duckdb+pg-source":
                project = Project(project_id="bench", name="bench", source="warehouse", warehouse_url=PG_URL, warehouse_schema=schema)
                conn = connect_warehouse(workdir / "duckdb-pg.duckdb")
            elif name == "warehouse":
                project = Project(project_id="bench", name="bench", source="warehouse", warehouse_url=PG_URL,
                                  warehouse_schema=schema, engine="warehouse")
                conn = PostgresEngine(PG_URL, schema=f"vespucci_{schema}")
            else:
                t0 = time.perf_counter()
                project, conn = Project(project_id="bench", name="bench", engine="spark"), SparkEngine("local[2]", str(workdir / "lake"))
                print(f"  spark session up in {time.perf_counter() - t0:.1f} s (not counted)", flush=True)
            t0 = time.perf_counter()
            build_all(conn, store, project, days)
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            outcomes = run_partition_checks(conn, "bench", days, session_settings(project))
            checks_s = time.perf_counter() - t0
            prints[name] = {t: fingerprint(conn, t) for t in ("sessions_time_based", "sessions_action_based")}
            conn.close()
            results[name] = (build_s, checks_s, sum(o.passed for o in outcomes.values()), len(outcomes))
            print(f"  {name:<18} build {build_s:8.1f} s  {summary['lines'] / build_s:>9,.0f} events/s   "
                  f"checks {checks_s:6.1f} s ({results[name][2]}/{results[name][3]} passed)   sessions {prints[name]}", flush=True)
        reference = next(iter(prints.values()))
        same = all(p == reference for p in prints.values())
        print(f"identical session tables on every engine: {same}")
        print("engines_events_per_s " + " ".join(f"{n}={summary['lines'] / r[0]:.0f}" for n, r in results.items()))
        if not same:
            sys.exit(1)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as pg:
            for name in (schema, f"vespucci_{schema}"):
                pg.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.pop("DAGSTER_HOME", None)
    main()
