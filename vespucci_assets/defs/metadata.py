"""Materialization metadata shared by the assets: schema, column lineage, per-partition figures, a preview."""

from __future__ import annotations

from datetime import date

import dagster as dg

from vespucci_assets.defs.partitions import partition_key
from vespucci_assets.sql_utils import set_target_days
from vespucci_assets.tables import Table

PREVIEW_ROWS = 10


def table_schema(table: Table) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name=c.name, type=c.type, description=c.description) for c in table.columns]
    )


def column_lineage(table: Table, same_columns_of: tuple[str, ...] = ()) -> dg.TableColumnLineage:
    """From each column's declared sources, or (a union of tables) the same column of `same_columns_of`."""
    deps = {}
    for column in table.columns:
        sources = [f"{t}.{column.name}" for t in same_columns_of] or list(column.sources)
        if sources:
            deps[column.name] = [
                dg.TableColumnDep(asset_key=dg.AssetKey(src.split(".")[0]), column_name=src.split(".")[1]) for src in sources
            ]
    return dg.TableColumnLineage(deps_by_column=deps)


def asset_metadata(table: Table, same_columns_of: tuple[str, ...] = ()) -> dict:
    metadata = {"dagster/column_schema": table_schema(table), "dagster/table_name": f"vespucci.main.{table.name}"}
    lineage = column_lineage(table, same_columns_of)
    if lineage.deps_by_column:
        metadata["dagster/column_lineage"] = lineage
    return metadata


def add_daily_figures(
    context: dg.AssetExecutionContext,
    conn,
    table: str,
    date_column: str,
    partitions: dict[str, list[date]],
    figures: dict[str, str],
) -> None:
    """Per-partition numbers (SQL aggregates over one day's rows) that the UI plots across partitions.

    A single-run backfill covers many partitions; these go on each partition's own
    materialization, so the plot shows every day's figure, not the range's total.
    """
    selects = ", ".join(f"{expr} AS f{i}" for i, expr in enumerate(figures.values()))
    for project_id, days in partitions.items():
        set_target_days(conn, days)
        rows = conn.execute(
            f"""
            SELECT t.target_date, {selects}
            FROM target_days t LEFT JOIN {table} x ON x.project_id = $p AND x.{date_column} = t.target_date
            GROUP BY t.target_date
            """,
            {"p": project_id},
        ).fetchall()
        for day, *values in rows:
            context.add_asset_metadata(
                {name: _metadata_number(value) for name, value in zip(figures, values)},
                partition_key=partition_key(day, project_id),
            )


def _metadata_number(value) -> dg.MetadataValue:
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    return dg.MetadataValue.float(float(value or 0.0))


def materialization_metadata(
    conn, table: Table, partitions: dict[str, list[date]], columns: list[str], same_columns_of: tuple[str, ...] = ()
) -> dict:
    """A markdown preview of the rows these partitions wrote, and the column lineage the UI reads from materializations."""
    rows: list[tuple] = []
    for project_id, days in partitions.items():
        if len(rows) >= PREVIEW_ROWS:
            break
        set_target_days(conn, days)
        rows += conn.execute(
            f"SELECT {', '.join(columns)} FROM {table.name} WHERE project_id = $p "
            f"AND {table.date_column} IN (SELECT target_date FROM target_days) LIMIT {PREVIEW_ROWS}",
            {"p": project_id},
        ).fetchall()
    metadata = {"preview": dg.MetadataValue.md(markdown_table(columns, rows[:PREVIEW_ROWS]))}
    lineage = column_lineage(table, same_columns_of)
    if lineage.deps_by_column:
        metadata["dagster/column_lineage"] = lineage
    return metadata


def markdown_table(columns: list[str], rows: list[tuple]) -> str:
    if not rows:
        return "_no rows_"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join("" if v is None else str(v).replace("|", "\\|")[:60] for v in row) + " |")
    return "\n".join(lines)
