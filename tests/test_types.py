"""Every type arrives with its exact value, as strict JSON, and every orderable type can page."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from helpers import secrets_for, sync

import lambda_function as lf

# (SQL type, SQL literal, expected JSON value)
CASES: list[tuple[str, str, Any]] = [
    ("smallint", "32767", 32767),
    ("integer", "-2147483648", -2147483648),
    ("bigint", "9223372036854775807", 9223372036854775807),
    (
        "numeric(38,10)",
        "'1234567890123456789012345678.0123456789'",
        "1234567890123456789012345678.0123456789",
    ),
    ("numeric(5,2)", "'0.10'", "0.10"),
    ("numeric", "'NaN'", "NaN"),
    ("real", "'1.5'", 1.5),
    ("double precision", "'0.30000000000000004'", 0.30000000000000004),
    ("double precision", "'1e308'", 1e308),
    ("double precision", "'NaN'", None),
    ("double precision", "'Infinity'", None),
    ("double precision", "'-Infinity'", None),
    ("boolean", "true", True),
    ("boolean", "false", False),
    ("char(5)", "'ab'", "ab   "),
    ("varchar(20)", "'héllo 🌍'", "héllo 🌍"),
    ("text", "E'line\\nbreak \"quoted\" \\\\ back'", 'line\nbreak "quoted" \\ back'),
    ("date", "'2024-02-29'", "2024-02-29"),
    ("date", "'infinity'", "infinity"),
    ("date", "'0044-03-15 BC'", "0044-03-15 BC"),
    ("timestamp", "'2024-01-02 03:04:05.123456'", "2024-01-02T03:04:05.123456"),
    ("timestamp", "'2024-01-02 03:04:05'", "2024-01-02T03:04:05"),
    ("timestamp(3)", "'2024-01-02 03:04:05.1239'", "2024-01-02T03:04:05.124"),
    ("timestamp", "'infinity'", "infinity"),
    ("timestamp", "'0044-03-15 10:00:00 BC'", "0044-03-15 10:00:00 BC"),
    ("timestamptz", "'2024-01-02 03:04:05.5+05:30'", "2024-01-01T21:34:05.5Z"),
    ("timestamptz", "'1999-12-31 23:59:59.999999-08'", "2000-01-01T07:59:59.999999Z"),
    ("time", "'23:59:59.999999'", "23:59:59.999999"),
    ("timetz", "'12:00:00+02'", "12:00:00+02"),
    ("interval", "'1 year 2 mons 3 days 04:05:06'", "1 year 2 mons 3 days 04:05:06"),
    ("bytea", "'\\x00ff10'", "AP8Q"),
    ("uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("json", '\'{"a": [1, 2.5, null], "b": "x"}\'', {"a": [1, 2.5, None], "b": "x"}),
    ("jsonb", '\'[true, {"k": "v"}]\'', [True, {"k": "v"}]),
    ("inet", "'10.1.2.3/8'", "10.1.2.3/8"),
    ("integer[]", "'{1,2,3}'", "{1,2,3}"),
]


@pytest.fixture(scope="module")
def delivered(pg) -> dict[str, list[dict[str, Any]]]:
    """One sync of a table with a column per case: a row of values and a row of NULLs."""
    columns = ", ".join(f"c{i} {sql_type}" for i, (sql_type, _, _) in enumerate(CASES))
    values = ", ".join(literal for _, literal, _ in CASES)
    pg.execute("DROP TABLE IF EXISTS all_types")
    pg.execute(f"CREATE TABLE all_types (id int PRIMARY KEY, updated_at int NOT NULL, {columns})")
    pg.execute(
        f"INSERT INTO all_types VALUES (1, 1, {values}), (2, 2, {', '.join(['NULL'] * len(CASES))})"
    )
    result = sync(secrets_for(pg, "all_types", limit="1"))  # one row per response
    return {"rows": result.rows}


@pytest.mark.parametrize(
    ("index", "case"), list(enumerate(CASES)), ids=[f"{t} {lit}" for t, lit, _ in CASES]
)
def test_exact_value(delivered, index, case):
    _, _, expected = case
    value_row, null_row = delivered["rows"]
    value = value_row[f"c{index}"]
    assert value == expected
    assert type(value) is type(expected)  # e.g. an int stays an int, a decimal stays a string
    assert null_row[f"c{index}"] is None
    json.dumps(value, allow_nan=False)  # strict JSON


def test_decimals_never_become_floats(delivered):
    """Regression: the seed turned Decimal into float and lost digits beyond ~15."""
    assert json.loads(json.dumps(delivered["rows"][0]))["c3"] == CASES[3][2]


# Cursor columns of every orderable type: few distinct values, NULLs, ties across tiny batches.
CURSOR_TYPES = {
    "c_int": ("integer", "g % 4"),
    "c_big": ("bigint", "9000000000000000000 + g % 3"),
    "c_num": ("numeric(12,3)", "(g % 5) / 7.0"),
    "c_ts": ("timestamp", "timestamp '2024-01-01 00:00:00.000001' + (g % 3) * interval '1.5 s'"),
    "c_tstz": ("timestamptz", "timestamptz '2024-01-01 00:00:00.5+03' + (g % 3) * interval '1 h'"),
    "c_date": ("date", "date '2024-01-01' + g % 3"),
    "c_text": ("varchar(20)", "(ARRAY['b', 'a', 'ä', 'A b', '''q'''])[1 + g % 5]"),
    "c_char": ("char(4)", "(ARRAY['x', 'y'])[1 + g % 2]"),
    "c_bool": ("boolean", "g % 2 = 0"),
    "c_uuid": (
        "uuid",
        "(ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',"
        " '00000000-0000-0000-0000-000000000000'])[1 + g % 2]::uuid",
    ),
    "c_bytea": ("bytea", "decode(lpad(to_hex(g % 3), 2, '0'), 'hex')"),
    "c_time": ("time", "time '10:00:00.25' + (g % 3) * interval '1 min'"),
}


@pytest.fixture(scope="module")
def cursor_table(pg) -> str:
    columns = ", ".join(f"{name} {sql_type}" for name, (sql_type, _) in CURSOR_TYPES.items())
    exprs = ", ".join(
        f"CASE WHEN g % 11 = 0 THEN NULL ELSE {expr} END" for _, expr in CURSOR_TYPES.values()
    )
    pg.execute("DROP TABLE IF EXISTS cursor_types")
    pg.execute(f"CREATE TABLE cursor_types (id int PRIMARY KEY, {columns})")
    pg.execute(f"INSERT INTO cursor_types SELECT g, {exprs} FROM generate_series(1, 60) g")
    return "cursor_types"


@pytest.mark.parametrize("cursor", list(CURSOR_TYPES))
def test_each_orderable_type_pages_exactly(pg, cursor_table, cursor):
    result = sync(secrets_for(pg, cursor_table, cursor=cursor, limit="4"))
    assert sorted(r["id"] for r in result.rows) == list(range(1, 61))
    # And as the second column of a composite cursor, after a column with ties.
    lead = "c_char" if cursor == "c_bool" else "c_bool"
    result = sync(secrets_for(pg, cursor_table, cursor=f"{lead}, {cursor}", limit="3"))
    assert sorted(r["id"] for r in result.rows) == list(range(1, 61))


@pytest.mark.parametrize("sql_type", ["real", "double precision", "json", "jsonb"])
def test_types_that_cannot_page_exactly_are_refused(pg, table_name, sql_type):
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at {sql_type})")
    with pytest.raises(
        lf.ConfigurationError, match=r"setting 'cursor': column updated_at has type"
    ):
        lf.lambda_handler({"state": {}, "secrets": secrets_for(pg, table_name)}, None)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM public.all_types ORDER BY id",
        "SELECT g, repeat('é', g % 7), NULL::text, g::numeric / 3, now() + g * interval '1 s',"
        " repeat('x', g % 9000) FROM generate_series(1, 3000) g",
    ],
)
def test_fast_row_reader_returns_exactly_what_pg8000_returns(pg, delivered, sql):
    config = lf.parse_config(secrets_for(pg, "all_types"))
    with lf.Source(config, time.monotonic() + 60) as source:
        assert source.con is not None
        fast = source.query("test", sql, {})
        slow = source.con.run(sql)  # pg8000's own message loop, same adapters
        # Streamed in chunks under a byte cap: a prefix of the same rows, plus a look-ahead.
        capped = source.query("test", sql, {}, max_bytes=2_000)
    assert fast.complete and fast.rows == slow and fast.rows
    if len(slow) > 100:
        assert not capped.complete and 2 <= len(capped.rows) < len(slow)
        assert capped.rows == slow[: len(capped.rows)]
    else:
        assert capped.complete and capped.rows == slow
