"""What every Vespucci asset shares: partitions, backfill policy, the DuckDB pool."""

from __future__ import annotations

import dagster as dg

from vespucci_assets.defs.partitions import DAY_X_PROJECT

DUCKDB_POOL = "duckdb"
OWNERS = ["team:analytics-engineering"]

ASSET_DEFAULTS = dict(
    partitions_def=DAY_X_PROJECT,
    # A year of one project is one run, not 365 (SPEC section 7 windows are computed set-based).
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=DUCKDB_POOL,
    kinds={"duckdb", "sql"},
    owners=OWNERS,
)
