"""Every SQL statement the module generates parses as Redshift SQL, without row constructors."""

from __future__ import annotations

import re

import pytest
import sqlglot
from sqlglot import exp

import lambda_function as lf

TS = lf.Column("updated_at", lf.OID_TIMESTAMP, "timestamp without time zone", True)
ID = lf.Column("id", lf.OID_INT8, "bigint", False)
NUM = lf.Column("Amount ($)", lf.OID_NUMERIC, "numeric(12,2)", True)
ODD = lf.Column('we"ird', 25, '"MyType"', True)
PLAN = lf.TablePlan(
    "Sales Data", "orders", (ID, TS, NUM, ODD), ("updated_at", "Amount ($)"), ("id",)
)
PLAN_ODD = lf.TablePlan("public", "t", (ID, ODD), ('we"ird',), ("id",))


def generated_statements() -> list[tuple[str, str]]:
    """(name, sql) for each statement shape the module can send."""
    statements = [
        ("first page", lf.build_page_sql(PLAN, 1001)[0]),
        ("setup test", lf.build_page_sql(PLAN, 0)[0]),
        ("after values", lf.build_page_sql(PLAN, 5, ("2024-01-01 00:00:00", "1.50", "7"))[0]),
        ("after nulls", lf.build_page_sql(PLAN, 5, (None, None, "7"))[0]),
        ("after mixed", lf.build_page_sql(PLAN, 5, ("2024-01-01 00:00:00", None, "7"))[0]),
        ("start", lf.build_page_sql(PLAN, 5, start="2024-01-01 00:00:00")[0]),
        ("lookback", lf.build_page_sql(PLAN, 5, start="2024-01-01", lookback_s=3600)[0]),
        ("untyped parameter", lf.build_page_sql(PLAN_ODD, 5, ("x", "1"))[0]),
        ("catalog, schema", lf.CATALOG_SQL.format(schema_condition=lf.CATALOG_SCHEMA_GIVEN)),
        (
            "catalog, search path",
            lf.CATALOG_SQL.format(schema_condition=lf.CATALOG_SCHEMA_SEARCH_PATH),
        ),
        ("primary key", lf.PRIMARY_KEY_SQL),
        ("session", lf.SESSION_SQL),
        ("begin", lf.BEGIN_SQL),
    ]
    return statements


def with_literals(sql: str) -> str:
    """Replace pg8000's :name placeholders (outside quotes) with literals for the parser."""
    out, quoted = [], False
    for part in re.split(r'("(?:[^"]|"")*")', sql):
        quoted = part.startswith('"')
        out.append(part if quoted else re.sub(r"(?<![:\w]):[a-z]\w*", "'x'", part))
    return "".join(out)


def row_constructors(sql: str) -> list[exp.Tuple]:
    tree = sqlglot.parse_one(with_literals(sql), read="redshift")
    assert tree is not None
    return list(tree.find_all(exp.Tuple))


@pytest.mark.parametrize(
    "sql", [pytest.param(sql, id=name) for name, sql in generated_statements()]
)
def test_statement_parses_as_redshift_without_row_constructors(sql):
    if sql == lf.BEGIN_SQL:
        assert sql == "BEGIN READ ONLY"  # transaction control, which sqlglot does not model
        return
    assert row_constructors(sql) == []


def test_the_check_catches_a_row_constructor():
    assert row_constructors("SELECT a FROM t WHERE (a, b) > (1, 2) ORDER BY a, b LIMIT 3")


def test_keyset_condition_is_the_or_chain():
    sql, params = lf.build_page_sql(PLAN, 5, ("2024-01-01 00:00:00", "1.50", "7"))
    assert params == {"v0": "2024-01-01 00:00:00", "v1": "1.50", "v2": "7"}
    ts, num, key = (
        "CAST(:v0 AS timestamp without time zone)",
        "CAST(:v1 AS numeric(12,2))",
        "CAST(:v2 AS bigint)",
    )
    assert (
        f'WHERE "updated_at" >= {ts} AND (("updated_at" > {ts}) OR ("updated_at" = {ts} AND'
        f' "Amount ($)" > {num}) OR ("updated_at" = {ts} AND "Amount ($)" = {num}'
        f' AND "id" > {key}))'
    ) in sql
    assert sql.endswith('ORDER BY "updated_at" NULLS FIRST, "Amount ($)" NULLS FIRST, "id" LIMIT 5')
    assert sql.startswith(
        'SELECT "id", "updated_at", "Amount ($)", "we""ird" FROM "Sales Data"."orders"'
    )


def test_null_positions_use_is_null_and_bind_nothing():
    sql, params = lf.build_page_sql(PLAN, 5, (None, None, "7"))
    assert params == {"v2": "7"}
    assert '("updated_at" IS NOT NULL)' in sql
    assert '("updated_at" IS NULL AND "Amount ($)" IS NULL AND "id" > CAST(:v2 AS bigint))' in sql


def test_types_that_cannot_be_named_safely_are_bound_untyped():
    sql, _ = lf.build_page_sql(PLAN_ODD, 5, ("x", "1"))
    assert '"we""ird" > :v0' in sql and "MyType" not in sql
