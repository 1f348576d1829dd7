"""Segment's warehouse layout, written from captured messages, in a real Postgres schema or DuckDB file.

As Segment's loader does: one table per call type (`tracks`, `screens`, `pages`,
`identifies`, `groups`, `aliases`) plus one table per track event (snake-cased name),
`id` = messageId, nested objects flattened with `_` (`context.app.version` ->
`context_app_version`), arrays stringified, strings cut at 512 characters, a column only
once some row has a value for it, property names that collide with Segment's own dropped.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict

TABLES = {"track": "tracks", "screen": "screens", "page": "pages", "identify": "identifies", "group": "groups", "alias": "aliases"}
TIMESTAMP_COLUMNS = ("timestamp", "original_timestamp", "sent_at", "received_at", "uuid_ts")
RESERVED = {"id", "anonymous_id", "user_id", "event", "event_text", "name", *TIMESTAMP_COLUMNS}
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _flatten(value, prefix: str, out: dict) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(inner, f"{prefix}_{snake(key)}" if prefix else snake(key), out)
    elif value is not None:
        out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)[:512]


def layout(records: list[dict]) -> dict[str, list[dict]]:
    """Capture-store records -> {table: rows} in Segment's warehouse layout."""
    tables: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        row = {"id": r["message_id"], "anonymous_id": r["anonymous_id"], "user_id": r["user_id"],
               **{c: r.get(c) for c in TIMESTAMP_COLUMNS if c != "uuid_ts"}, "uuid_ts": r["received_at"]}
        flat: dict = {}
        _flatten(r.get("context") or {}, "context", flat)
        payload = r.get("traits") if r["type"] in ("identify", "group") else r.get("properties")
        _flatten(payload or {}, "", flat)
        row.update({k: v for k, v in flat.items() if k not in RESERVED})
        if r["type"] == "track":
            row.update(event=snake(r["event"]), event_text=r["event"])
            tables[snake(r["event"])].append(dict(row))
        elif r["type"] in ("screen", "page") and r.get("name") is not None:
            row["name"] = r["name"]
        tables[TABLES[r["type"]]].append(row)
    return dict(tables)


def _columns(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if value is not None:
                seen.setdefault(key)
    return list(seen)


def load_postgres(schema: str, tables: dict[str, list[dict]], url: str = PG_URL) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        for table, rows in tables.items():
            append_postgres(conn, schema, table, rows, create=True)


def append_postgres(conn, schema: str, table: str, rows: list[dict], create: bool = False) -> None:
    from psycopg import sql

    columns = _columns(rows)
    if create:
        defs = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL("timestamptz" if c in TIMESTAMP_COLUMNS else "text"))
                for c in columns]
        conn.execute(sql.SQL("CREATE TABLE {}.{} ({})").format(sql.Identifier(schema), sql.Identifier(table), sql.SQL(", ").join(defs)))
    copy_sql = sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
        sql.Identifier(schema), sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
    with conn.cursor().copy(copy_sql) as copy:
        for row in rows:
            copy.write_row([row.get(c) for c in columns])


def load_duckdb(path, schema: str, tables: dict[str, list[dict]]) -> None:
    import duckdb

    with duckdb.connect(str(path)) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute(f'CREATE SCHEMA "{schema}"')
        for table, rows in tables.items():
            columns = _columns(rows)
            defs = ", ".join(f'"{c}" {"TIMESTAMPTZ" if c in TIMESTAMP_COLUMNS else "VARCHAR"}' for c in columns)
            conn.execute(f'CREATE TABLE "{schema}"."{table}" ({defs})')
            conn.executemany(
                f'INSERT INTO "{schema}"."{table}" VALUES ({", ".join("?" for _ in columns)})',
                [[row.get(c) for c in columns] for row in rows],
            )
