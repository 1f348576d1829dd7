"""One SQL definition, every engine: Vespucci's DuckDB-dialect SQL rewritten for Postgres and Spark SQL.

The build modules (ingest, sessionize, reporting, quality) are written once, in DuckDB's
dialect. `to_engine` turns a statement into the statements another engine runs: sqlglot's
transpiler plus the rewrites it lacks, each checked against real Postgres 15 and Spark 4.3
(`vespucci_assets_tests/test_engines.py`):

- `$name` parameters become literals (Spark cannot bind inside a view body);
- `GROUP BY ALL` becomes the ordinals of the non-aggregate projections (Postgres);
- `SEMI JOIN` / `ANTI JOIN ... ON` become `EXISTS` / `NOT EXISTS` (Postgres);
- every derived table gets an alias (Postgres 15);
- `epoch_us(ts)` and `make_timestamp(us)` become exact microsecond arithmetic;
- `arg_min` / `arg_max` keep DuckDB's meaning (rows whose value is NULL are skipped);
- `last_value(x IGNORE NULLS)` becomes `max(x)` (Postgres has no IGNORE NULLS): Vespucci
  takes the latest non-null only of marks that grow with the window's order;
- named windows are written out in full (Spark rejects `OVER (w ROWS ...)`);
- `CREATE OR REPLACE TEMP TABLE x AS q` becomes a session temp table (Postgres) or an
  eagerly cached view (Spark); transactions are dropped on Spark, which has none.
"""

from __future__ import annotations

import datetime as dt

import sqlglot
from sqlglot import exp

from vespucci_assets.tables import ALL_TABLES

DUCKDB, POSTGRES, SPARK = "duckdb", "postgres", "spark"
_US = exp.Literal.number(1_000_000)


def to_engine(sql: str, engine: str, params: dict | None = None) -> list[str]:
    """The statements `engine` runs for one DuckDB statement (parameters inlined unless DuckDB)."""
    if engine == DUCKDB:
        return [sql]
    tree = _inline_params(sqlglot.parse_one(sql, read="duckdb"), params or {})
    if isinstance(tree, (exp.Transaction, exp.Commit, exp.Rollback)):
        return [] if engine == SPARK else [tree.sql(POSTGRES)]
    if engine == POSTGRES:
        tree = _aliased_derived_tables(_exists_joins(_group_by_all(tree)))
        tree = tree.transform(_postgres_functions).transform(_postgres_functions)  # nested calls
        name = _temp_table(tree)
        if name:
            # Autovacuum never analyzes temp tables: without statistics the planner picks nested loops.
            return [f"DROP TABLE IF EXISTS {name}", f"CREATE TEMPORARY TABLE {name} AS {tree.expression.sql(POSTGRES)}",
                    f"ANALYZE {name}"]
        return [tree.sql(POSTGRES)]
    if engine == SPARK:
        tree = _named_insert_columns(_inlined_windows(tree)).transform(_spark_functions)
        name = _temp_table(tree)
        if name:
            body = tree.expression.sql(SPARK)
            return [f"CACHE TABLE {name} AS {body}"]  # SparkEngine materializes it
        return [tree.sql(SPARK)]
    raise ValueError(f"unknown engine {engine!r}")


def _literal(value) -> exp.Expression:
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, (int, float)):
        return exp.Literal.number(value)
    if isinstance(value, dt.datetime):
        return exp.cast(exp.Literal.string(value.isoformat(sep=" ")), "TIMESTAMP")
    if isinstance(value, dt.date):
        return exp.cast(exp.Literal.string(value.isoformat()), "DATE")
    if isinstance(value, (list, tuple)):
        return exp.Array(expressions=[_literal(v) for v in value])
    return exp.Literal.string(str(value))


def _inline_params(tree: exp.Expression, params: dict) -> exp.Expression:
    def inline(node):
        if isinstance(node, exp.Placeholder) and node.name in params:
            return _literal(params[node.name])
        return node

    return tree.transform(inline) if params else tree


def _from(select: exp.Select):
    return select.args.get("from_") or select.args.get("from")


def _aliased_derived_tables(tree):
    for n, subquery in enumerate(list(tree.find_all(exp.Subquery)), 1):
        if isinstance(subquery.parent, (exp.From, exp.Join)) and not subquery.alias:
            subquery.set("alias", exp.TableAlias(this=exp.to_identifier(f"_q{n}")))
    return tree


def _group_by_all(tree):
    for group in list(tree.find_all(exp.Group)):
        if not group.args.get("all"):
            continue
        select = group.parent
        ordinals = [
            exp.Literal.number(i)
            for i, p in enumerate(select.expressions, 1)
            if not p.find(exp.AggFunc) and not p.find(exp.Window)
        ]
        group.set("all", None)
        if ordinals:
            group.set("expressions", ordinals)
        else:
            select.set("group", None)
    return tree


def _exists_joins(tree):
    for select in list(tree.find_all(exp.Select)):
        joins = select.args.get("joins") or []
        for join in list(joins):
            kind = (join.args.get("kind") or "").upper()
            if kind not in ("SEMI", "ANTI"):
                continue
            left, right = _from(select).this.alias_or_name, join.this.alias_or_name
            conditions = [exp.column(c.name, right).eq(exp.column(c.name, left)) for c in join.args.get("using") or []]
            if join.args.get("on"):
                conditions.append(join.args["on"])
            exists = exp.Exists(this=exp.select("1").from_(join.this.copy()).where(exp.and_(*conditions)))
            joins.remove(join)
            select.where(exists if kind == "SEMI" else exp.Not(this=exists), copy=False)
    return tree


def _inlined_windows(tree):
    for select in list(tree.find_all(exp.Select)):
        named = {w.name: w for w in select.args.get("windows") or []}
        if not named:
            continue
        for window in list(select.find_all(exp.Window)):
            ref = window.args.get("alias")
            base = named.get(ref.name) if ref else None
            if window.find_ancestor(exp.Select) is not select or base is None:
                continue
            for key in ("partition_by", "order", "spec"):
                if base.args.get(key) and not window.args.get(key):
                    value = base.args[key]
                    window.set(key, value.copy() if hasattr(value, "copy") else [v.copy() for v in value])
            window.set("alias", None)
        select.set("windows", None)
    return tree


def _not_null(node):
    node = node.copy()
    if not isinstance(node, (exp.Column, exp.Literal, exp.Paren)):
        node = exp.Paren(this=node)
    return exp.Not(this=exp.Is(this=node, expression=exp.Null()))


def _postgres_functions(node):
    if isinstance(node, exp.Round) and node.args.get("decimals") is not None and not node.this.find(exp.Cast):
        # Postgres rounds to n places only NUMERIC; doubles are converted exactly.
        return exp.cast(exp.Round(this=exp.cast(node.this, "NUMERIC"), decimals=node.args["decimals"]), "DOUBLE PRECISION")
    if isinstance(node, exp.Anonymous) and node.name.upper() == "EPOCH_US":
        # EXTRACT(EPOCH ...) is exact numeric since Postgres 14; a timestamp without zone is taken as UTC.
        return exp.cast(exp.Mul(this=exp.Extract(this=exp.var("EPOCH"), expression=node.expressions[0]), expression=_US), "BIGINT")
    if isinstance(node, exp.UnixToTime):  # make_timestamp(us)
        return exp.Add(
            this=exp.cast(exp.Literal.string("1970-01-01 00:00:00"), "TIMESTAMP"),
            expression=exp.Mul(this=node.this, expression=exp.Interval(this=exp.Literal.string("1"), unit=exp.var("MICROSECOND"))),
        )
    if isinstance(node, exp.IgnoreNulls) and isinstance(node.this, exp.LastValue):
        return exp.Max(this=node.this.this.copy())
    if isinstance(node, (exp.ArgMax, exp.ArgMin)):
        # (array_agg(x ORDER BY key) FILTER (WHERE x IS NOT NULL AND key IS NOT NULL))[1]
        value, key = node.this, node.expression
        struct = isinstance(key, exp.Struct)
        keys = [e.expression if isinstance(e, exp.PropertyEQ) else e for e in key.expressions] if struct else [key]
        ordered = [exp.Ordered(this=k.copy(), desc=isinstance(node, exp.ArgMax), nulls_first=False) for k in keys]
        agg = exp.ArrayAgg(this=exp.Order(this=value.copy(), expressions=ordered))
        present = exp.and_(*[_not_null(e) for e in [value] + ([] if struct else [key])])
        return exp.Bracket(this=exp.Paren(this=exp.Filter(this=agg, expression=exp.Where(this=present))), expressions=[exp.Literal.number(0)])
    return node


def _spark_functions(node):
    if isinstance(node, exp.Anonymous) and node.name.upper() == "EPOCH_US":
        return exp.Anonymous(this="UNIX_MICROS", expressions=node.expressions)
    if isinstance(node, exp.Window) and isinstance(node.this, exp.RowNumber) and not node.args.get("partition_by") \
            and not node.args.get("order"):
        # row_number() OVER () as a row id: Spark would funnel every row through one task for it.
        return exp.Anonymous(this="MONOTONICALLY_INCREASING_ID", expressions=[])
    if isinstance(node, exp.PercentileCont) and node.expression is not None:  # quantile_cont(x, q)
        return exp.Anonymous(this="PERCENTILE", expressions=[node.this, node.expression])
    if isinstance(node, (exp.ArgMax, exp.ArgMin)):
        # Spark's max_by returns NULL when the max row's value is NULL; DuckDB skips such rows.
        node.set("expression", exp.If(this=_not_null(node.this), true=node.expression.copy(), false=exp.Null()))
    return node


def _named_insert_columns(tree):
    """`INSERT INTO t SELECT` by position: Spark moves partition columns last, so name them all."""
    if isinstance(tree, exp.Insert) and isinstance(tree.this, exp.Table):
        table = next((t for t in ALL_TABLES if t.name == tree.this.name), None)
        if table is not None:
            tree.set("this", exp.Schema(this=tree.this, expressions=[exp.to_identifier(c) for c in table.column_names]))
    return tree


def _temp_table(tree) -> str | None:
    if isinstance(tree, exp.Create) and (tree.args.get("kind") or "").upper() == "TABLE":
        properties = tree.args.get("properties")
        if properties and any(isinstance(p, exp.TemporaryProperty) for p in properties.expressions):
            return tree.this.sql()
    return None
