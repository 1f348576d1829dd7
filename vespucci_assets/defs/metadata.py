"""Materialization metadata shared by the assets: schema, row counts, a markdown preview."""

from __future__ import annotations

from datetime import date

import dagster as dg

from vespucci_assets.sql_utils import set_target_days
from vespucci_assets.tables import Table

PREVIEW_ROWS = 10


def table_schema(table: Table) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name=c.name, type=c.type, description=c.description) for c in table.columns]
    )


def asset_metadata(table: Table) -> dict:
    return {"dagster/column_schema": table_schema(table), "dagster/table_name": f"vespucci.main.{table.name}"}


def partition_metadata(conn, table: Table, days_by_project: dict[str, list[date]], preview_columns: list[str]) -> dict:
    """Row count and a small preview of the rows these partitions wrote."""
    total = 0
    previews = []
    for project_id, days in days_by_project.items():
        set_target_days(conn, days)
        where = f"project_id = $p AND {table.date_column} IN (SELECT target_date FROM target_days)"
        total += conn.execute(f"SELECT count(*) FROM {table.name} WHERE {where}", {"p": project_id}).fetchone()[0]
        if len(previews) < PREVIEW_ROWS:
            previews += conn.execute(
                f"SELECT {', '.join(preview_columns)} FROM {table.name} WHERE {where} LIMIT {PREVIEW_ROWS}",
                {"p": project_id},
            ).fetchall()
    return {
        "dagster/row_count": dg.MetadataValue.int(total),
        "preview": dg.MetadataValue.md(markdown_table(preview_columns, previews[:PREVIEW_ROWS])),
    }


def markdown_table(columns: list[str], rows: list[tuple]) -> str:
    if not rows:
        return "_no rows_"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join("" if v is None else str(v).replace("|", "\\|")[:60] for v in row) + " |")
    return "\n".join(lines)
