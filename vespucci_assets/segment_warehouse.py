"""A project's Segment warehouse as its source (SPEC section 2, `--source warehouse`).

Segment loads each source into one schema: `tracks`, `screens`, `pages`, `identifies`
(and `groups`, `aliases`), one row per message, `id` = messageId, `context.*` flattened to
`context_*` columns, properties as columns. Segment has already corrected the timestamps
there, so `timestamp` is used as it is. Rows are pulled per partition window with a
`timestamp` range predicate (which an index on `timestamp` serves) and staged into a
DuckDB temp table of the capture store's shape, so `events` is built by the same SQL.

URLs: `postgresql://user:${PGPASSWORD}@host:5432/db` (Segment's Postgres warehouse;
properties and context are assembled with `jsonb`, which Redshift lacks) or `duckdb:///path/to/file.duckdb`. `${NAME}` is taken
from the environment, so credentials never sit in the registry; they are never printed.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

from vespucci_assets.projects import ENV_REFERENCE, WAREHOUSE_SCHEMES, redact_url

TABLE_TYPES = {"tracks": "track", "screens": "screen", "pages": "page", "identifies": "identify", "groups": "group", "aliases": "alias"}
MEMBER_TABLES = ("tracks", "screens", "pages")
REQUIRED_COLUMNS = ("id", "timestamp", "received_at")
# Columns Segment writes itself; every other column of a table is a property (or a trait).
SEGMENT_COLUMNS = {
    "id", "anonymous_id", "user_id", "timestamp", "original_timestamp", "sent_at", "received_at",
    "uuid_ts", "loaded_at", "uuid", "event", "event_text", "name", "group_id", "previous_id",
}
TRAIT_TABLES = ("identifies", "groups")
STAGED = "warehouse_rows"
JSON_PAIRS_PER_CALL = 50  # Postgres functions take at most 100 arguments


class WarehouseSourceError(RuntimeError):
    """The warehouse cannot be read as configured; the message names the project and what to fix."""


@dataclass(frozen=True)
class SegmentWarehouse:
    project_id: str
    url: str
    schema: str

    @classmethod
    def for_project(cls, project) -> "SegmentWarehouse":
        if not project.warehouse_url or not project.warehouse_schema:
            raise WarehouseSourceError(
                f"project {project.project_id!r} reads a warehouse but has no "
                f"{'--warehouse-url' if not project.warehouse_url else '--warehouse-schema'}: "
                f"set it with `vespucci projects set {project.project_id} ...`"
            )
        return cls(project.project_id, project.warehouse_url, project.warehouse_schema)

    # --- configuration ---------------------------------------------------------------------

    @property
    def kind(self) -> str:
        scheme = urlsplit(self.url).scheme
        if scheme == "duckdb":
            return "duckdb"
        if scheme in WAREHOUSE_SCHEMES:
            return "postgres"
        raise self._error(f"unsupported warehouse URL scheme {scheme!r}: use postgresql://... or duckdb:///path")

    def resolved_url(self) -> str:
        def value(match: re.Match) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise self._error(f"environment variable {name} named in --warehouse-url is not set")
            return os.environ[name]

        return ENV_REFERENCE.sub(value, self.url)

    def redacted_url(self) -> str:
        return redact_url(self.url)

    def _error(self, what: str) -> WarehouseSourceError:
        return WarehouseSourceError(f"project {self.project_id!r}: warehouse {self.redacted_url()}: {what}")

    # --- reading -----------------------------------------------------------------------------

    def stage(self, duck, first_day: date, last_day: date) -> str:
        """Stage the rows with `timestamp` in [first_day, last_day] into a temp table of `duck`; returns its name.

        `duck` is a DuckDB connection, or the warehouse engine's own connection to this
        warehouse: then the rows are staged where they are, and never leave it.
        """
        start = datetime.combine(first_day, datetime.min.time(), timezone.utc)
        end = datetime.combine(last_day + timedelta(days=1), datetime.min.time(), timezone.utc)
        if getattr(duck, "kind", None) == "postgres":
            self._stage_in_place(duck, start, end)
        elif self.kind == "duckdb":
            self._stage_duckdb(duck, start, end)
        else:
            self._stage_postgres(duck, start, end)
        return STAGED

    def event_days(self) -> list[date]:
        """The days that hold member or identity rows (for `vespucci materialize` without --from/--to)."""
        return sorted(
            {d for table in self._tables() for (d,) in self._query(f"SELECT DISTINCT CAST({_q('timestamp')} AS DATE) FROM {self._table(table)}")}
        )

    def changed_days(self, since: datetime | None) -> tuple[set[date], datetime | None]:
        """Days of the rows loaded after `since` (by `received_at`), and the newest `received_at` seen."""
        where = f"WHERE {_q('received_at')} > {self._literal(since)}" if since else ""
        days: set[date] = set()
        newest = since
        for table in self._tables():
            for day, latest in self._query(
                f"SELECT CAST({_q('timestamp')} AS DATE), max({_q('received_at')}) FROM {self._table(table)} {where} GROUP BY 1"
            ):
                days.add(day)
                latest = _aware(latest)
                newest = latest if newest is None or latest > newest else newest
        return days, newest

    # --- engines -----------------------------------------------------------------------------

    def _columns(self) -> dict[str, dict[str, str]]:
        rows = self._query(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            f"WHERE table_schema = {self._literal(self.schema)} ORDER BY table_name, ordinal_position"
        )
        columns: dict[str, dict[str, str]] = {}
        for table, column, data_type in rows:
            columns.setdefault(table, {})[column] = data_type.lower()
        if not columns:
            raise self._error(f"schema {self.schema!r} does not exist or has no tables: check --warehouse-schema")
        if not any(t in columns for t in MEMBER_TABLES):
            raise self._error(f"schema {self.schema!r} has none of Segment's tables {', '.join(MEMBER_TABLES)}")
        for table, cols in columns.items():
            missing = [c for c in REQUIRED_COLUMNS if table in TABLE_TYPES and c not in cols]
            if missing:
                raise self._error(f"table {self.schema}.{table} has no column {missing[0]!r}: is this a Segment schema?")
        return {t: c for t, c in columns.items() if t in TABLE_TYPES}

    def _tables(self) -> list[str]:
        return list(self._columns())

    def _table(self, table: str) -> str:
        prefix = "segment_wh." if self.kind == "duckdb" else ""
        return f"{prefix}{_q(self.schema)}.{_q(table)}"

    def _select(self, table: str, columns: dict[str, str], start: datetime, end: datetime) -> str:
        pg = self.kind == "postgres"
        has = columns.__contains__

        def ts(col: str) -> str:
            if not has(col):
                return "NULL"
            if pg:
                utc = f"{_q(col)} AT TIME ZONE 'UTC'" if "with time zone" in columns[col] else _q(col)
                return f"to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            return f"strftime(CAST({_q(col)} AS TIMESTAMP), '%Y-%m-%dT%H:%M:%S.%fZ')"

        def text(col: str) -> str:
            return f"CAST({_q(col)} AS {'TEXT' if pg else 'VARCHAR'})" if has(col) else "NULL"

        context = {c[len("context_"):]: c for c in columns if c.startswith("context_")}
        others = {c: c for c in columns if c not in SEGMENT_COLUMNS and not c.startswith("context_")}
        properties, traits = ({}, others) if table in TRAIT_TABLES else (others, {})
        received_ns = (
            f"CAST(extract(epoch FROM {_q('received_at')})::numeric * 1000000000 AS BIGINT)" if pg else f"epoch_ns(CAST({_q('received_at')} AS TIMESTAMP))"
        )
        event = text("event_text") if has("event_text") else text("event")
        return f"""
            SELECT {text('id')} AS message_id, '{TABLE_TYPES[table]}' AS type,
                   {event if table == 'tracks' else 'NULL'} AS event,
                   {text('name') if table in ('screens', 'pages') else 'NULL'} AS name,
                   {text('anonymous_id')} AS anonymous_id, {text('user_id')} AS user_id,
                   {ts('timestamp')} AS timestamp, {ts('original_timestamp')} AS original_timestamp,
                   {ts('sent_at')} AS sent_at, {ts('received_at')} AS received_at,
                   {received_ns} AS ingested_ns,
                   {self._json(properties)} AS properties, {self._json(context)} AS context,
                   {self._json(traits)} AS traits, '{{}}' AS extra, '{table}' AS filename
            FROM {self._table(table)}
            WHERE {_q('timestamp')} >= {self._literal(start)} AND {_q('timestamp')} < {self._literal(end)}
        """

    def _window_rows(self, start: datetime, end: datetime) -> str:
        """Every Segment table's rows in [start, end), in the capture store's shape, as one query."""
        return " UNION ALL ".join(self._select(t, c, start, end) for t, c in self._columns().items())

    def _json(self, keys: dict[str, str]) -> str:
        if not keys:
            return "'{}'"
        items = list(keys.items())
        if self.kind == "postgres":
            calls = [
                "jsonb_build_object(" + ", ".join(f"'{k}', {_q(c)}" for k, c in items[i : i + JSON_PAIRS_PER_CALL]) + ")"
                for i in range(0, len(items), JSON_PAIRS_PER_CALL)
            ]
            return f"CAST(jsonb_strip_nulls({' || '.join(calls)}) AS TEXT)"
        return "CAST(json_object(" + ", ".join(f"'{k}', {_q(c)}" for k, c in items) + ") AS VARCHAR)"

    def _literal(self, value) -> str:
        if isinstance(value, datetime):
            text = value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
            return f"TIMESTAMPTZ '{text}+00'" if self.kind == "duckdb" else f"TIMESTAMPTZ '{text}+00'"
        return "'" + str(value).replace("'", "''") + "'"

    # DuckDB file: attached read-only to a connection of our own.
    def _duckdb_path(self) -> Path:
        path = Path(urlsplit(self.resolved_url()).path)
        if not path.is_file():
            raise self._error(f"no DuckDB file at {path}: check --warehouse-url")
        return path

    def _duck_query(self, sql: str) -> list[tuple]:
        import duckdb

        with duckdb.connect() as conn:
            self._attach(conn)
            return conn.execute(sql).fetchall()

    def _attach(self, conn) -> None:
        import duckdb

        try:
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute(f"ATTACH {self._literal(str(self._duckdb_path()))} AS segment_wh (READ_ONLY)")
        except duckdb.Error as exc:
            raise self._error(f"cannot open: {str(exc).splitlines()[0]}") from None

    def _stage_duckdb(self, duck, start: datetime, end: datetime) -> None:
        import duckdb

        union = self._window_rows(start, end)
        self._attach(duck)
        try:
            duck.execute(f"CREATE OR REPLACE TEMP TABLE {STAGED} AS {union}")
        except duckdb.Error as exc:
            raise self._error(f"reading failed: {str(exc).splitlines()[0]}") from None
        finally:
            duck.execute("DETACH segment_wh")

    # Postgres: COPY of the window to a CSV file, loaded by DuckDB in one set-based read.
    def _connect_pg(self):
        import psycopg

        try:
            return psycopg.connect(self.resolved_url(), connect_timeout=10, application_name="vespucci")
        except psycopg.Error as exc:
            raise self._error(f"cannot connect: {str(exc).strip().splitlines()[0]}; check --warehouse-url and its credentials") from None

    def _pg_query(self, sql: str) -> list[tuple]:
        import psycopg

        with self._connect_pg() as conn:
            try:
                return conn.execute(sql).fetchall()
            except psycopg.Error as exc:
                raise self._error(f"query failed: {str(exc).strip().splitlines()[0]}") from None

    def _query(self, sql: str) -> list[tuple]:
        return self._duck_query(sql) if self.kind == "duckdb" else self._pg_query(sql)

    def _stage_in_place(self, engine, start: datetime, end: datetime) -> None:
        import psycopg

        union = self._window_rows(start, end)
        try:
            engine.execute_native(f"DROP TABLE IF EXISTS {STAGED}")
            engine.execute_native(f"CREATE TEMPORARY TABLE {STAGED} AS {union}")
            engine.execute_native(f"ANALYZE {STAGED}")
        except psycopg.Error as exc:
            raise self._error(f"reading failed: {str(exc).strip().splitlines()[0]}") from None

    def _stage_postgres(self, duck, start: datetime, end: datetime) -> None:
        import psycopg

        union = self._window_rows(start, end)
        with tempfile.NamedTemporaryFile(suffix=".csv", delete=False) as out, self._connect_pg() as conn:
            try:
                with conn.cursor().copy(f"COPY ({union}) TO STDOUT WITH (FORMAT csv)") as copy:
                    for chunk in copy:
                        out.write(chunk)
            except psycopg.Error as exc:
                raise self._error(f"reading failed: {str(exc).strip().splitlines()[0]}") from None
        try:
            from vespucci_assets.ingest import CAPTURED_COLUMNS

            spec = "{" + ", ".join(f"'{k}': '{v}'" for k, v in {**CAPTURED_COLUMNS, "filename": "VARCHAR"}.items()) + "}"
            duck.execute(
                f"CREATE OR REPLACE TEMP TABLE {STAGED} AS SELECT * FROM read_csv({self._literal(out.name)}, "
                f"header = false, columns = {spec}, allow_quoted_nulls = false)"
            )
        finally:
            os.unlink(out.name)


def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
