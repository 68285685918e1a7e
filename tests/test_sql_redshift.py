"""Every SQL statement the function can send parses as Redshift SQL (sqlglot, dialect
'redshift'): generated from varied plans and settings, and recorded from syncs against the
Redshift stand-in (issue 20)."""

from __future__ import annotations

import itertools
import re

import pg8000.native
import pytest
import sqlglot
from helpers import sync
from redshift_standin import INT4, VARCHAR, Column, RedshiftStandIn, Table
from sqlglot import exp

import lambda_function as lf

# Column types the order columns can have (format_type's text, as the catalog gives it).
ORDER_TYPES = [
    (lf.OID_INT4, "integer"),
    (lf.OID_INT8, "bigint"),
    (lf.OID_NUMERIC, "numeric(12,2)"),
    (lf.OID_NUMERIC, "numeric"),
    (lf.OID_DATE, "date"),
    (lf.OID_TIMESTAMP, "timestamp without time zone"),
    (lf.OID_TIMESTAMPTZ, "timestamp with time zone"),
    (1043, "character varying(256)"),
    (1042, "character(10)"),
    (lf.OID_BOOL, "boolean"),
    (lf.OID_TIMETZ, "time with time zone"),
    (lf.OID_INTERVAL_Y2M, "interval year to month"),
    (lf.OID_INTERVAL_D2S, "interval day to second"),
    (16_390, "citext"),  # a user type: bound without a cast
]
# Names the quoting helper must make safe: a quote, a space, non-ASCII, a reserved word, a
# dollar sign, the longest Redshift allows.
NAMES = ['we"ird Name', "ünïcode", "select", "a$b", "x" * 126, "id"]  # + a digit: 127


def parses(sql: str) -> exp.Expression:
    """The statement parsed as Redshift; sqlglot falls back to an opaque Command only when
    it cannot parse, which counts as a failure here."""
    tree = sqlglot.parse_one(sql, read="redshift")
    assert not isinstance(tree, exp.Command), sql
    return tree


def plans() -> list[lf.TablePlan]:
    out = []
    for width, (nullable, names) in itertools.product(
        (1, 2, 3), [(False, NAMES), (True, list(reversed(NAMES)))]
    ):
        for start in range(0, len(ORDER_TYPES), width):
            types = (ORDER_TYPES * 2)[start : start + width]
            columns = (
                *(
                    lf.Column(names[i % len(names)] + str(i), oid, sql_type, nullable)
                    for i, (oid, sql_type) in enumerate(types)
                ),
                lf.Column("payload", lf.OID_SUPER, "super", True),
            )
            keys = tuple(c.name for c in columns[:width])
            out.append(lf.TablePlan(names[start % len(names)], names[-1], columns, keys[:1], keys))
    return out


def page_statements(plan: lf.TablePlan) -> list[tuple[str, dict[str, str | None]]]:
    order = plan.order
    values = [f"v{i}" for i in range(len(order))]
    with_nulls = [None if i % 2 else v for i, v in enumerate(values)]
    out = [
        lf.build_page_sql(plan, 1001),
        lf.build_page_sql(plan, 1001, start="2024-01-01"),
        lf.build_page_sql(plan, 1001, after=values),
        lf.build_page_sql(plan, 1001, after=with_nulls),
        lf.build_page_sql(plan, 1001, after=[None] * len(order)),
        lf.build_page_sql(plan, 1001, after=values[:1], inclusive=True),
        lf.build_group_sql(plan, values),
        lf.build_group_sql(plan, with_nulls),
        lf.build_page_sql(plan, 0),  # the setup test's
        # Full refresh (issue 16): a range of the re-read, the key sample, the deletes check.
        lf.build_page_sql(plan, 1001, after=values, until=with_nulls),
        lf.build_page_sql(plan, 1001, until=values),
        lf._key_sample_sql(plan, 1000),
        lf.build_keys_sql(plan, [tuple(f"k{i}" for i in range(len(plan.primary_key)))] * 3),
    ]
    if order[0].type_oid in (lf.OID_DATE, lf.OID_TIMESTAMP, lf.OID_TIMESTAMPTZ):
        out.append(lf.build_page_sql(plan, 1001, start="2024-01-01", lookback_s=3600))
    return out


def fixed_statements() -> list[tuple[str, dict[str, str | None]]]:
    return [
        (lf.CATALOG_SQL.format(schema_condition=lf.CATALOG_SCHEMA_GIVEN), {}),
        (lf.CATALOG_SQL.format(schema_condition=lf.CATALOG_SCHEMA_ANY), {}),
        (lf.LATE_BINDING_SQL.format(schema_condition=lf.LATE_BINDING_SCHEMA_GIVEN), {}),
        (lf.LATE_BINDING_SQL.format(schema_condition=lf.CATALOG_SCHEMA_ANY), {}),
        (lf.DOMAIN_SQL, {}),
        (lf.PRIMARY_KEY_SQL, {}),
        (lf.CATALOG_OF_SCHEMA_SQL, {}),
        (lf.PRIMARY_KEYS_OF_SCHEMA_SQL, {}),
        (lf.SCHEMA_TABLES_SQL, {}),
        (lf.SEARCH_PATH_SQL, {}),
        (lf.TIMEOUT_SQL, {}),
        lf.session_sql(lf.SESSION_SETTINGS),
        lf.session_sql(lf.OPTIONAL_SESSION_SETTINGS),
        *(lf.session_sql({k: v}) for k, v in lf.OPTIONAL_SESSION_SETTINGS.items()),
    ]


def test_every_generated_statement_parses_as_redshift():
    """Regression (issue 20): nothing checked the function's SQL against Redshift's grammar;
    every statement, as written and as sent (placeholders $1, $2...), now parses."""
    statements = fixed_statements() + [s for p in plans() for s in page_statements(p)]
    assert len(statements) > 300
    for sql, _ in statements:
        tree = parses(sql)
        assert isinstance(tree, exp.Select), sql
        sent, _ = pg8000.native.to_statement(sql)
        parses(sent)


def test_every_sql_constant_is_covered():
    """A statement added to the module later must be added here too."""
    constants = {name for name in dir(lf) if name.endswith("_SQL")}
    covered = {
        "CATALOG_SQL",
        "LATE_BINDING_SQL",
        "DOMAIN_SQL",
        "PRIMARY_KEY_SQL",
        "CATALOG_OF_SCHEMA_SQL",
        "PRIMARY_KEYS_OF_SCHEMA_SQL",
        "SCHEMA_TABLES_SQL",
        "SEARCH_PATH_SQL",
        "TIMEOUT_SQL",
        "BEGIN_SQL",
    }
    assert constants == covered


# Redshift's BEGIN (AWS documentation, BEGIN): BEGIN [ WORK | TRANSACTION ] [ ISOLATION LEVEL
# option ] [ READ WRITE | READ ONLY ], option one of SERIALIZABLE, READ UNCOMMITTED, READ
# COMMITTED, REPEATABLE READ. sqlglot 30.30 has no access mode (READ ONLY) in any dialect, so
# the statement is checked against that grammar, and its part without the mode with sqlglot.
_REDSHIFT_BEGIN = re.compile(
    r"(BEGIN( WORK| TRANSACTION)?|START TRANSACTION)"
    r"( ISOLATION LEVEL (SERIALIZABLE|READ UNCOMMITTED|READ COMMITTED|REPEATABLE READ))?"
    r"( READ WRITE| READ ONLY)?"
)


def test_begin_follows_redshifts_documented_grammar():
    assert _REDSHIFT_BEGIN.fullmatch(lf.BEGIN_SQL)
    assert lf.BEGIN_SQL.endswith(" READ ONLY")
    tree = parses(lf.BEGIN_SQL.removesuffix(" READ ONLY"))
    assert isinstance(tree, exp.Transaction)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"limit": "2"},
        {"primary_key": None},
        {"max_response_bytes": "10000"},
        {"table": "public.rs_rows"},
        {"table": "lbv", "primary_key": "id"},
        {"table": None, "cursor": None, "primary_key": None, "schema": "public"}
        | {"include": "rs_*"},
    ],
)
def test_every_statement_sent_to_the_stand_in_parses(overrides):
    """What the function actually sends in syncs (catalog, session, pages, tie groups, a
    late-binding view), as sent: each parses as Redshift."""
    tables = [
        Table(
            "public",
            "rs_rows",
            [Column("id", INT4, "integer", True), Column("name", VARCHAR, "character varying(99)")],
            [[str(i), "x" * 90] for i in range(1, 300)],
        ),
        Table(
            "public",
            "lbv",
            [Column("id", INT4, "integer"), Column("name", VARCHAR, "character varying(9)")],
            [["1", "a"], ["2", "b"]],
            primary_key=False,
            late_binding=True,
        ),
    ]
    with RedshiftStandIn(tables) as rs:
        settings = dict(overrides)
        result = sync(rs.secrets(settings.pop("table", "rs_rows"), **settings))
        statements = list(rs.statements)
    assert result.rows
    for sql in set(statements):
        if sql == lf.BEGIN_SQL:
            assert _REDSHIFT_BEGIN.fullmatch(sql)
        else:
            parses(sql)
