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
        ("catalog, any schema", lf.CATALOG_SQL.format(schema_condition=lf.CATALOG_SCHEMA_ANY)),
        ("domain", lf.DOMAIN_SQL),
        ("search path", lf.SEARCH_PATH_SQL),
        ("primary key", lf.PRIMARY_KEY_SQL),
        ("session", lf.session_sql(lf.SESSION_SETTINGS)[0]),
        ("optional session", lf.session_sql(lf.OPTIONAL_SESSION_SETTINGS)[0]),
        ("timeout", lf.TIMEOUT_SQL),
        (
            "new sync, inclusive",
            lf.build_page_sql(PLAN, 5, ("2024-01-01 00:00:00", "1.50"), inclusive=True)[0],
        ),
        ("group", lf.build_group_sql(PLAN, ("2024-01-01 00:00:00", None, "7"))[0]),
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
        # Transaction control, which sqlglot does not model; Redshift's grammar is
        # BEGIN [TRANSACTION] [ISOLATION LEVEL ...] [READ ONLY].
        assert sql == "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"
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


def test_inclusive_resume_adds_the_equal_term():
    """A new sync resumes at the last cursor value with its tied rows (issue 8, item 1)."""
    sql, params = lf.build_page_sql(PLAN, 5, ("2024-01-01 00:00:00", "1.50"), inclusive=True)
    assert params == {"v0": "2024-01-01 00:00:00", "v1": "1.50"}
    ts, num = "CAST(:v0 AS timestamp without time zone)", "CAST(:v1 AS numeric(12,2))"
    assert f'OR ("updated_at" = {ts} AND "Amount ($)" = {num}))' in sql


def test_group_query_is_equality_on_every_order_column():
    sql, params = lf.build_group_sql(PLAN, ("2024-01-01 00:00:00", None, "7"))
    assert params == {"v0": "2024-01-01 00:00:00", "v2": "7"}
    assert (
        'WHERE "updated_at" = CAST(:v0 AS timestamp without time zone) AND "Amount ($)" IS NULL'
        ' AND "id" = CAST(:v2 AS bigint) ORDER BY'
    ) in sql
    assert "LIMIT" not in sql


def test_every_function_is_schema_qualified():
    """Regression (issue 8, item 9): an unqualified function call (lower()) let a role that
    can create functions in public hijack the catalog lookup."""
    for name, sql in generated_statements():
        text = re.sub(r" as [a-z ]+\(", " as t(", with_literals(sql).lower())  # CAST types
        calls = re.findall(r'(?<![."\w])([a-z_]+)\s*\(', text)
        allowed = {"cast", "in", "and", "or", "select", "not", "where", "t"}
        assert not set(calls) - allowed, (name, set(calls) - allowed)


def test_user_defined_types_are_never_named_in_a_cast():
    user = lf.Column("k", lf.FIRST_USER_OID + 5, "mytype", False)
    assert lf._bound(user, "v0") == ":v0"
    assert lf._bound(ID, "v0") == "CAST(:v0 AS bigint)"
