"""Where a project's tables are computed: the embedded DuckDB file, its own warehouse, or Apache Spark.

The build modules run their DuckDB-dialect SQL through a connection. DuckDB's own
connection is used as it is; `PostgresEngine` and `SparkEngine` look the same to them
(`execute(sql, params)`, `fetchone`, `fetchall`) and run each statement as
`dialects.to_engine` rewrites it, so every engine computes from one definition.

- `warehouse` (Postgres, e.g. Segment's Postgres warehouse): the tables live in a
  Vespucci schema of the customer's database (`VESPUCCI_ENGINE_SCHEMA`, default
  `vespucci`), next to the Segment schema it reads; only figures travel back.
- `spark`: the tables are Parquet datasets partitioned by project and day (Hive layout)
  under `VESPUCCI_SPARK_LOCATION` (default `<VESPUCCI_HOME>/spark`; any Hadoop URL, e.g.
  `s3a://bucket/vespucci`), computed by the Spark master `VESPUCCI_SPARK_MASTER`
  (default `local[2]`; `spark://host:7077` or `yarn` in production).
"""

from __future__ import annotations

import contextlib
import decimal
import os
import re
from pathlib import Path

from vespucci_assets.dialects import POSTGRES, SPARK, to_engine
from vespucci_assets.tables import ALL_TABLES, SESSIONS_VIEW, Table

DUCKDB_ENGINE, WAREHOUSE_ENGINE, SPARK_ENGINE = "duckdb", "warehouse", "spark"
DEFAULT_ENGINE_SCHEMA = "vespucci"
DEFAULT_SPARK_MASTER = "local[2]"
_CACHE_TABLE = re.compile(r"CACHE TABLE (\w+) AS (.*)", re.DOTALL)
_INSERT_INTO = re.compile(r"\s*INSERT INTO (\w+)", re.IGNORECASE)
# Lookups by messageId (duplicates across days, members in two sessions), besides each table's days.
_POSTGRES_INDEXES = {"events": {"message": "project_id, message_id"}, "session_events": {"message": "project_id, message_id"}}
_POSTGRES_TYPES = {"JSON": "TEXT", "VARCHAR": "TEXT", "TINYINT": "SMALLINT", "DOUBLE": "DOUBLE PRECISION"}
_SPARK_TYPES = {"JSON": "STRING", "VARCHAR": "STRING", "INTEGER": "INT"}


class EngineError(RuntimeError):
    """The engine cannot be reached or used as configured; the message says what to fix."""


def _plain(value):
    # Postgres returns NUMERIC for sums and epochs; the callers expect Python numbers as DuckDB gives them.
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


class _Rows:
    """The result of the last statement, read the way a DuckDB connection is read."""

    _rows: list[tuple] = []

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple]:
        return list(self._rows)

    def _keep(self, rows) -> None:
        self._rows = [tuple(_plain(v) for v in row) for row in rows]


def _columns_ddl(table: Table, types: dict[str, str]) -> str:
    return ", ".join(f"{c.name} {types.get(c.type, c.type)}" for c in table.columns)


class PostgresEngine(_Rows):
    """Vespucci's tables in a schema of the customer's Postgres; temp tables live in the session."""

    kind = POSTGRES

    def __init__(self, url: str, schema: str = DEFAULT_ENGINE_SCHEMA):
        import psycopg

        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10, application_name="vespucci")
        except psycopg.Error as exc:
            raise EngineError(f"cannot connect to the warehouse engine: {str(exc).strip().splitlines()[0]}") from None
        self.schema = schema
        quoted = '"' + schema.replace('"', '""') + '"'
        with contextlib.suppress(psycopg.errors.UniqueViolation):  # two runs creating it at once
            self._conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        self._conn.execute(f"SET search_path TO {quoted}")
        self._conn.execute("SET TIME ZONE 'UTC'")
        for table in ALL_TABLES:
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                self._conn.execute(f"CREATE TABLE IF NOT EXISTS {table.name} ({_columns_ddl(table, _POSTGRES_TYPES)})")
                indexes = {"days": f"project_id, {table.date_column}", **_POSTGRES_INDEXES.get(table.name, {})}
                for name, columns in indexes.items():
                    self._conn.execute(f"CREATE INDEX IF NOT EXISTS {table.name}_{name} ON {table.name} ({columns})")
        self.execute(SESSIONS_VIEW)

    def execute(self, sql: str, params: dict | None = None) -> "PostgresEngine":
        for statement in to_engine(sql, POSTGRES, params):
            self.execute_native(statement)
            inserted = _INSERT_INTO.match(statement)
            if inserted:
                # Fresh statistics for the next statement's plan; autovacuum comes too late.
                self._conn.execute(f"ANALYZE {inserted.group(1)}")
        return self

    def execute_native(self, sql: str) -> "PostgresEngine":
        """A statement already in Postgres' dialect (e.g. the Segment-schema staging query)."""
        cursor = self._conn.execute(sql)
        self._keep(cursor.fetchall() if cursor.description else [])
        return self

    def close(self) -> None:
        self._conn.close()


_SPARK_SESSIONS: dict[str, object] = {}
# The location whose tables each session's catalog names (the catalog is the process's own).
_REGISTERED_LOCATION: dict[str, str] = {}


def spark_session(master: str):
    """One SparkSession per process and master, configured for exact, UTC results."""
    if master not in _SPARK_SESSIONS:
        from pyspark.sql import SparkSession

        builder = (
            SparkSession.builder.master(master).appName("vespucci")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.shuffle.partitions", os.environ.get("VESPUCCI_SPARK_SHUFFLE_PARTITIONS", "4"))
            .config("spark.ui.enabled", "false")
            .config("spark.log.level", "ERROR")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.ansi.enabled", "false")
        )
        if master.startswith("local"):
            builder = builder.config("spark.driver.memory", os.environ.get("VESPUCCI_SPARK_DRIVER_MEMORY", "1g"))
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("ERROR")
        _SPARK_SESSIONS[master] = session
    return _SPARK_SESSIONS[master]


class SparkEngine(_Rows):
    """Vespucci's tables as Parquet under `location`, partitioned by project_id and day; Spark computes them."""

    kind = SPARK

    def __init__(self, master: str, location: str):
        try:
            self.spark = spark_session(master)
        except Exception as exc:  # a JVM that will not start, an unreachable master
            raise EngineError(f"cannot start Spark (master {master}): {str(exc).strip().splitlines()[0]}") from None
        self.location = location.rstrip("/")
        if _REGISTERED_LOCATION.get(master) != self.location:
            self._register_tables()
            _REGISTERED_LOCATION[master] = self.location

    def _register_tables(self) -> None:
        """Name the location's tables in this session's catalog, with the partitions already written there."""
        for table in ALL_TABLES:
            self._path(f"{self.location}/{table.name}", lambda path, fs: fs.mkdirs(path))
            # Dropping an external table forgets its name and keeps its files.
            self.spark.sql(f"DROP TABLE IF EXISTS {table.name}")
            self.spark.sql(
                f"CREATE TABLE {table.name} ({_columns_ddl(table, _SPARK_TYPES)}) USING parquet "
                f"PARTITIONED BY (project_id, {table.date_column}) LOCATION '{self.location}/{table.name}'"
            )
            self.spark.sql(f"ALTER TABLE {table.name} RECOVER PARTITIONS")
        self.execute(SESSIONS_VIEW)

    def execute(self, sql: str, params: dict | None = None) -> "SparkEngine":
        for statement in to_engine(sql, SPARK, params):
            temp = _CACHE_TABLE.fullmatch(statement)
            if temp:
                # A temp table is data, not a view over tables that later statements replace.
                self.spark.sql(temp.group(2)).localCheckpoint(eager=True).createOrReplaceTempView(temp.group(1))
                self._keep([])
            else:
                frame = self.spark.sql(statement)
                self._keep(frame.collect() if frame.columns and not statement.lstrip().upper().startswith("INSERT") else [])
        return self

    def delete_days(self, table: str, date_column: str, project_id: str) -> None:
        """Drop the project's partitions for the days in `target_days`, files included."""
        days = [row[0] for row in self.spark.sql("SELECT target_date FROM target_days").collect()]
        for day in days:
            self._path(f"{self.location}/{table}/project_id={project_id}/{date_column}={day}",
                       lambda path, fs: fs.delete(path, True))
            self.spark.sql(
                f"ALTER TABLE {table} DROP IF EXISTS PARTITION (project_id = '{project_id}', {date_column} = DATE'{day}')"
            )
        self.spark.sql(f"REFRESH TABLE {table}")

    def _path(self, url: str, action) -> None:
        """`action(path, filesystem)` through Hadoop's FileSystem, so any store Spark writes to works."""
        path = self.spark.sparkContext._jvm.org.apache.hadoop.fs.Path(url)
        action(path, path.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration()))

    def capture_source(self, files: list[Path], columns: dict[str, str]) -> str:
        """The capture store's NDJSON files as a temp view; a torn last line is skipped, as DuckDB does."""
        from pyspark.sql import functions as F
        from pyspark.sql.types import LongType, StringType, StructField, StructType

        schema = StructType([StructField(name, LongType() if kind == "BIGINT" else StringType()) for name, kind in columns.items()])
        frame = (
            self.spark.read.schema(schema).option("mode", "DROPMALFORMED").json([str(f) for f in files])
            .withColumn("filename", F.col("_metadata.file_path"))
        )
        frame.createOrReplaceTempView("captured_rows")
        return "captured_rows"

    def close(self) -> None:
        """The session stays up for the next connection of this process (start-up takes seconds)."""


def connect_engine(project, home_root: Path) -> PostgresEngine | SparkEngine:
    """The engine connection of a project whose engine is not the embedded DuckDB; the caller closes it."""
    if project.engine == WAREHOUSE_ENGINE:
        from vespucci_assets.segment_warehouse import SegmentWarehouse

        return PostgresEngine(SegmentWarehouse.for_project(project).resolved_url(),
                              os.environ.get("VESPUCCI_ENGINE_SCHEMA", DEFAULT_ENGINE_SCHEMA))
    if project.engine == SPARK_ENGINE:
        return SparkEngine(os.environ.get("VESPUCCI_SPARK_MASTER", DEFAULT_SPARK_MASTER),
                           os.environ.get("VESPUCCI_SPARK_LOCATION", str(Path(home_root) / "spark")))
    raise EngineError(f"project {project.project_id!r}: engine {project.engine!r} has no engine connection")
