"""Small DuckDB helpers shared by the build modules."""

from __future__ import annotations

import contextlib
from datetime import date, timedelta
from typing import Iterable, Iterator


@contextlib.contextmanager
def transaction(conn) -> Iterator[None]:
    """One atomic unit: readers see the old partition or the new one, never a mix."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def sorted_days(days: Iterable[date]) -> list[date]:
    result = sorted(set(days))
    if not result:
        raise ValueError("no days given")
    return result


def window_days(days: Iterable[date], radius: int = 1) -> list[date]:
    """The days themselves and their neighbours up to `radius` away."""
    return sorted({d + timedelta(days=offset) for d in days for offset in range(-radius, radius + 1)})


def sql_string_list(values: Iterable[str]) -> str:
    return "[" + ", ".join("'" + str(v).replace("'", "''") + "'" for v in values) + "]"


def set_target_days(conn, days: list[date]) -> None:
    conn.execute("CREATE OR REPLACE TEMP TABLE target_days AS SELECT unnest($days::DATE[]) AS target_date", {"days": days})


def delete_days(conn, table: str, date_column: str, project_id: str) -> None:
    """Delete one project's rows for the days in `target_days` (set by `set_target_days`).

    An engine that stores days as partitions (Spark) drops them instead.
    """
    if hasattr(conn, "delete_days"):
        conn.delete_days(table, date_column, project_id)
        return
    conn.execute(
        f"DELETE FROM {table} WHERE project_id = $p AND {date_column} IN (SELECT target_date FROM target_days)",
        {"p": project_id},
    )
