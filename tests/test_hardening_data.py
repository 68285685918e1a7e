"""Regressions for issue 8's data items (1-8): rows lost or refused, endless syncs, memory and time.

Every test drives the handler as Fivetran does, against the suite's real PostgreSQL, and asserts
the fixed behaviour; each docstring names the defect it pins. Objects a test creates (tables,
views, functions, domains, roles, databases) are dropped when it ends.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pg8000.native
import pytest
from helpers import PASSWORDS, ROOT, FakeContext, check_response, secrets_for, sync

import lambda_function as lf


class Scratch:
    """Runs SQL as the admin user and remembers how to undo what it created (undone LIFO)."""

    def __init__(self, pg: Any) -> None:
        self.pg = pg
        self._undo: list[str] = []

    def run(self, sql: str, **params: Any) -> list[list[Any]]:
        return self.pg.execute(sql, **params)

    def undo(self, sql: str) -> None:
        self._undo.append(sql)

    def table(self, name: str, columns: str, fill: str | None = None) -> None:
        """CREATE TABLE ``name`` (``columns``), then ``INSERT INTO name <fill>``."""
        self.run(f"CREATE TABLE {name} ({columns})")
        self.undo(f"DROP TABLE IF EXISTS {name} CASCADE")
        if fill is not None:
            self.run(f"INSERT INTO {name} {fill}")

    def close(self) -> None:
        for sql in reversed(self._undo):
            with contextlib.suppress(Exception):  # best effort: clean up whatever exists
                self.run(sql)
        self._undo.clear()


@pytest.fixture
def db(pg: Any) -> Iterator[Scratch]:
    scratch = Scratch(pg)
    yield scratch
    scratch.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def as_json(value: Any) -> Any:
    """The JSON value the function delivers for a value pg8000 reads with its default adapters."""
    if isinstance(value, bytes):
        return b64(value)
    if isinstance(value, dt.datetime):  # as the server writes it: no trailing zeros
        text = value.isoformat()
        return text.rstrip("0") if "." in text else text
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    return value


def source_rows(db: Scratch, table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` as the JSON the function should deliver for it."""
    con = db.pg.connect()
    try:
        rows = con.run(f"SELECT * FROM {table}")
        names = [c["name"] for c in con.columns]
    finally:
        con.close()
    return [{n: as_json(v) for n, v in zip(names, row, strict=True)} for row in rows]


def canonical(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


# ---------------------------------------------------------------------------------------------
# Item 1: rows committed after a sync at its last cursor value
# ---------------------------------------------------------------------------------------------

T0 = "2024-05-01 12:00:00"
T_LAST = "2024-05-01 12:01:00"


@pytest.mark.parametrize("lookback", [None, "0", "90s"], ids=["no-lookback", "0", "90s"])
def test_a_row_committed_after_a_sync_at_its_last_cursor_value_comes_in_the_next(
    pg, db, table_name, lookback
):
    """Regression (issue 8, item 1): a row committed after a sync ended, with the same
    second-precision cursor value as the last delivered row but a smaller key, was never
    delivered: the next sync resumed strictly after (cursor, key). A new sync must resume
    inclusively at the last cursor value (its tied rows come again, at most once); paging inside
    a sync stays strict."""
    # Even ids 2..40; ids 22..40 share the last cursor value (ties straddle every batch).
    db.table(
        table_name,
        "id int PRIMARY KEY, updated_at timestamp(0) NOT NULL, v text",
        f"SELECT g, CASE WHEN g > 20 THEN timestamp '{T_LAST}'"
        f" ELSE timestamp '{T0}' + g * interval '1 second' END, 'v' || g"
        " FROM generate_series(2, 40, 2) g",
    )
    secrets_ = secrets_for(pg, table_name, limit="3", lookback=lookback)
    tied = set(range(22, 41, 2))
    last = "2024-05-01T12:01:00"

    first = sync(secrets_)
    ids = [r["id"] for r in first.rows]
    assert sorted(ids) == list(range(2, 41, 2)), "the first sync is exact"

    # A writer commits at the last delivered cursor value, with a key below the last one (40).
    db.run(f"INSERT INTO {table_name} VALUES (21, timestamp '{T_LAST}', 'late tie')")
    second = sync(secrets_, first.state)
    ids = [r["id"] for r in second.rows]
    assert 21 in ids, "the row committed at the last cursor value after the sync was lost"
    assert len(ids) == len(set(ids)), f"a row was delivered twice within one sync: {ids}"
    assert {r["id"]: r["v"] for r in second.rows}[21] == "late tie"
    if not lookback or lookback == "0":
        # Inclusive at the last cursor value only: nothing older comes again.
        assert {r["updated_at"] for r in second.rows} == {last}
        assert set(ids) <= tied | {21}

    # Nothing changed since: the next sync re-sends at most the tied rows, once, and ends.
    third = sync(secrets_, second.state, max_calls=20)
    ids = [r["id"] for r in third.rows]
    assert len(ids) == len(set(ids)), f"a row was delivered twice within one sync: {ids}"
    if not lookback or lookback == "0":
        assert set(ids) <= tied | {21}


# ---------------------------------------------------------------------------------------------
# Item 2: domain types in order columns and elsewhere
# ---------------------------------------------------------------------------------------------

# (case id, type of the key, of the cursor, of a column outside the order; key and cursor
# values from g)
DOMAIN_CASES = [
    ("cursor-domain-timestamp", "int", "{p}_d_ts", "int", "g", "{ts}"),
    ("key-domain-integer", "{p}_d_int", "timestamp", "int", "g", "{ts}"),
    ("key-domain-bytea", "{p}_d_bytea", "int", "int", "{bytes}", "g % 4"),
    ("cursor-and-key-domain-over-domain", "{p}_dd_int", "{p}_dd_ts", "int", "g", "{ts}"),
    ("key-domain-numeric", "{p}_d_num", "int", "int", "g * 1.25", "g % 4"),
    ("key-domain-uuid", "{p}_d_uuid", "int", "int", "CAST(md5(CAST(g AS text)) AS uuid)", "g % 4"),
    ("domain-integer-outside-the-order", "int", "timestamp", "{p}_d_int", "g", "{ts}"),
]


def create_domains(db: Scratch, prefix: str) -> None:
    for name, base in (
        ("d_ts", "timestamp"),
        ("dd_ts", f"{prefix}_d_ts"),  # a domain over a domain
        ("d_int", "integer"),
        ("dd_int", f"{prefix}_d_int"),
        ("d_bytea", "bytea"),
        ("d_num", "numeric(12,2)"),
        ("d_uuid", "uuid"),
    ):
        db.run(f"CREATE DOMAIN {prefix}_{name} AS {base}")
        db.undo(f"DROP DOMAIN IF EXISTS {prefix}_{name} CASCADE")


@pytest.mark.parametrize(
    ("key_type", "cursor_type", "other_type", "key_sql", "cursor_sql"),
    [c[1:] for c in DOMAIN_CASES],
    ids=[c[0] for c in DOMAIN_CASES],
)
@pytest.mark.parametrize("limit", ["3", "17"])
def test_domain_typed_columns_sync_exactly_and_end(
    pg, db, table_name, key_type, cursor_type, other_type, key_sql, cursor_sql, limit
):
    """Regression (issue 8, item 2): pg8000 decodes a domain by its base type's OID on the wire
    while the plan used the domain's OID: a domain-typed key made the sync return the same batch
    forever, and a domain over integer in any column made every call fail with an internal
    TypeError. Base types must be resolved in the catalog."""
    prefix = table_name
    create_domains(db, prefix)
    key = key_type.format(p=prefix)
    cursor = cursor_type.format(p=prefix)
    other = other_type.format(p=prefix)
    ts = "timestamp '2024-01-01' + (g % 4) * interval '1 hour' + (g % 3) * interval '0.5 s'"
    key_value = key_sql.format(bytes="decode(lpad(to_hex(g * 7919), 6, '0'), 'hex')")
    cursor_value = cursor_sql.format(ts=ts)
    db.table(
        table_name,
        f"id {key} PRIMARY KEY, updated_at {cursor} NOT NULL, n {other}, v text",
        f"SELECT CAST({key_value} AS {key}), CAST({cursor_value} AS {cursor}),"
        f" CASE WHEN g % 5 = 0 THEN NULL ELSE g * 1000 END, 'row ' || g"
        " FROM generate_series(1, 40) g",
    )
    result = sync(secrets_for(pg, table_name, limit=limit), max_calls=60)
    assert canonical(result.rows) == canonical(source_rows(db, table_name))
    assert all(isinstance(r["n"], int | None) for r in result.rows)  # JSON numbers


def test_a_domain_timestamp_cursor_accepts_lookback(pg, db, table_name):
    """Regression (issue 8, item 2): a cursor whose type is a domain over timestamp was refused
    with lookback ("needs a date or timestamp"), because the domain's OID was not resolved to
    its base type."""
    create_domains(db, table_name)
    db.table(
        table_name,
        f"id int PRIMARY KEY, updated_at {table_name}_d_ts NOT NULL",
        "SELECT g, timestamp '2024-01-01' + (g % 3) * interval '1 min'"
        " FROM generate_series(1, 30) g",
    )
    secrets_ = secrets_for(pg, table_name, limit="4", lookback="1h")
    first = sync(secrets_, max_calls=30)
    assert sorted(r["id"] for r in first.rows) == list(range(1, 31))
    again = sync(secrets_, first.state, max_calls=30)  # the window covers every row
    assert sorted(r["id"] for r in again.rows) == list(range(1, 31))


# ---------------------------------------------------------------------------------------------
# Item 3: bytea_output set for the role or the database
# ---------------------------------------------------------------------------------------------

AWKWARD_BYTES = ["", "00", "5c", "5c5c", "ff", "27", "2200", "5c7830", "0a0d09", "7f80"]


def bytea_fill() -> str:
    awkward = ", ".join(f"(CAST('\\x{h}' AS bytea), {i % 3})" for i, h in enumerate(AWKWARD_BYTES))
    return (
        "SELECT decode(md5(CAST(g AS text)), 'hex') || decode(lpad(to_hex(g), 4, '0'), 'hex'),"
        f" g % 3 FROM generate_series(1, 50) g UNION ALL VALUES {awkward}"
    )


def check_bytea_sync(result: Any, expected: list[bytes]) -> None:
    delivered = [r["k"] for r in result.rows]
    assert len(delivered) == len(set(delivered)), "a key was delivered twice"
    assert sorted(delivered) == sorted(b64(k) for k in expected)


@pytest.mark.parametrize("limit", ["4", "25"])
def test_bytea_keys_page_exactly_when_the_role_sets_bytea_output_escape(pg, db, table_name, limit):
    """Regression (issue 8, item 3): with ``ALTER ROLE ... SET bytea_output = 'escape'`` the
    positions were garbage and the sync ended after one page, and values were not base64 of
    the bytes. Every session setting the encoders depend on must be pinned."""
    db.table(table_name, "k bytea PRIMARY KEY, updated_at int NOT NULL", bytea_fill())
    role, password = f"r_{table_name[-6:]}_bytea", "pw-" + secrets.token_urlsafe(18)
    PASSWORDS.add(password)
    pg.create_user(role, password)
    db.undo(f"DROP ROLE IF EXISTS {role}")
    db.undo(f"DROP OWNED BY {role}")
    db.run(f"GRANT SELECT ON {table_name} TO {role}")
    db.run(f"ALTER ROLE {role} SET bytea_output = 'escape'")
    con = pg.connect(user=role, password=password)  # the setting is in effect for this role
    try:
        assert con.run("SHOW bytea_output") == [["escape"]]
    finally:
        con.close()
    expected = [r[0] for r in db.run(f"SELECT k FROM {table_name}")]
    result = sync(
        secrets_for(pg, table_name, user=role, password=password, primary_key="k", limit=limit),
        max_calls=100,
    )
    check_bytea_sync(result, expected)


def test_bytea_keys_page_exactly_when_the_database_sets_bytea_output_escape(pg, db, table_name):
    """Regression (issue 8, item 3): the same with ``ALTER DATABASE ... SET bytea_output =
    'escape'`` (a database of the test's own)."""
    database = f"{table_name}_db"
    db.run(f"CREATE DATABASE {database}")
    db.undo(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    con = pg.connect(database=database)
    try:
        con.run(f"CREATE TABLE {table_name} (k bytea PRIMARY KEY, updated_at int NOT NULL)")
        con.run(f"INSERT INTO {table_name} {bytea_fill()}")
        expected = [r[0] for r in con.run(f"SELECT k FROM {table_name}")]
        con.run(f"ALTER DATABASE {database} SET bytea_output = 'escape'")
    finally:
        con.close()
    result = sync(
        secrets_for(pg, table_name, dbname=database, primary_key="k", limit="4"), max_calls=100
    )
    check_bytea_sync(result, expected)


# ---------------------------------------------------------------------------------------------
# Item 4: memory of one invocation, measured in a child process
# ---------------------------------------------------------------------------------------------

MEMORY_BUDGET_BYTES = 2_000_000
MEMORY_FACTOR = 30
CHILD = """
import json, sys
import lambda_function as lf

request = json.load(sys.stdin)


def peak():
    # The kernel's peak resident size of this process (VmHWM), which starts afresh at exec;
    # getrusage's ru_maxrss would carry over pytest's own peak across fork and exec.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

before = peak()
outcome = {}
try:
    response = lf.lambda_handler(request, None)
    rows = [r for v in response["insert"].values() for r in v]
    outcome = {"rows": len(rows), "hasMore": response["hasMore"]}
except lf.ConnectorError as e:
    outcome = {"error": type(e).__name__ + ": " + str(e)}
after = peak()
if "rows" in outcome:
    outcome["response_bytes"] = len(json.dumps(response))  # as the Lambda runtime serialises
print(json.dumps({"before": before, "after": after, "after_serialising": peak(), **outcome}))
"""


def invoke_in_child(request: dict[str, Any]) -> dict[str, Any]:
    """One handler invocation in a fresh Python; its peak RSS before and after (bytes)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


def assert_memory_bounded(measured: dict[str, Any], what: str) -> None:
    growth = measured["after"] - measured["before"]
    limit = MEMORY_FACTOR * MEMORY_BUDGET_BYTES
    print(
        f"{what}: peak RSS before {measured['before'] / 1e6:.1f} MB, after the handler "
        f"{measured['after'] / 1e6:.1f} MB (growth {growth / 1e6:.1f} MB, limit "
        f"{limit / 1e6:.0f} MB), after serialising {measured['after_serialising'] / 1e6:.1f} MB;"
        f" outcome { ({k: v for k, v in measured.items() if k in ('rows', 'hasMore', 'error')}) }"
    )
    assert "error" not in measured, measured["error"]
    assert measured["rows"] > 0 and measured["hasMore"] is True
    assert growth <= limit, (
        f"{what}: the invocation's peak memory grew by {growth / 1e6:.1f} MB, more than "
        f"{MEMORY_FACTOR} x max_response_bytes ({limit / 1e6:.0f} MB)"
    )


def test_memory_stays_bounded_when_rows_widen_after_narrow_ones(pg, db, table_name):
    """Regression (issue 8, item 4): the next read's row count came from the previous batch's
    bytes per row, so wide rows after narrow ones were all read at once (548 MB peak for a
    5.5 MB response: an out-of-memory crash in a 512 MB Lambda, retried forever). Peak memory
    must stay within a small multiple of max_response_bytes whatever the row widths."""
    db.table(
        table_name,
        "id int PRIMARY KEY, updated_at int NOT NULL, v text",
        "SELECT g, g, 'n' FROM generate_series(1, 2000) g",
    )
    secrets_ = secrets_for(pg, table_name, max_response_bytes=str(MEMORY_BUDGET_BYTES))
    narrow = sync(secrets_)  # learns the narrow rows' bytes per row
    assert len(narrow.rows) == 2000
    # Then 8,000 rows of 20 kB (160 MB): 80 responses' worth.
    db.run(
        f"INSERT INTO {table_name} SELECT g, g, repeat('w', 20000)"
        " FROM generate_series(2001, 10000) g"
    )
    measured = invoke_in_child({"state": narrow.state, "secrets": secrets_})
    assert_memory_bounded(measured, "narrow then 20 kB rows")


def test_memory_stays_bounded_on_a_first_read_of_wide_rows(pg, db, table_name):
    """Regression (issue 8, item 4): a first invocation (no bytes-per-row estimate yet) read a
    first page of 1,000 rows whatever their width: 100 MB for rows of 100 kB."""
    db.table(
        table_name,
        "id int PRIMARY KEY, updated_at int NOT NULL, v text",
        "SELECT g, g, repeat('w', 100000) FROM generate_series(1, 1000) g",
    )
    secrets_ = secrets_for(pg, table_name, max_response_bytes=str(MEMORY_BUDGET_BYTES))
    measured = invoke_in_child({"state": {}, "secrets": secrets_})
    assert_memory_bounded(measured, "first read of 100 kB rows")


# ---------------------------------------------------------------------------------------------
# Item 5: the tie guard refuses only what cannot be paged
# ---------------------------------------------------------------------------------------------


def test_a_group_of_identical_rows_that_fits_one_response_is_delivered(pg, db, table_name):
    """Regression (issue 8, item 5): 1,200 rows with the same (cursor, key), about 48 kB, were
    refused as "more than fit in one response" because the first page is 1,000 rows. Such a
    group fits a response: it must be delivered, whole, in one response."""
    db.table(
        table_name,
        "id int, updated_at int NOT NULL, v text",  # no enforced key, as on Redshift
        # The group comes first: the first page (no estimate yet) ends inside it.
        "SELECT CASE WHEN g <= 1200 THEN 50 ELSE g END, CASE WHEN g <= 1200 THEN 1 ELSE 2 END,"
        " 'twin row ' || (g % 10) FROM generate_series(1, 1220) g",
    )
    responses = []
    state: dict[str, Any] = {}
    secrets_ = secrets_for(pg, table_name)
    for _ in range(20):
        response = lf.lambda_handler({"state": state, "secrets": secrets_}, None)
        check_response(response)
        responses.append(response["insert"][table_name])
        state = response["state"]
        if not response["hasMore"]:
            break
    rows = [r for batch in responses for r in batch]
    assert len(rows) == 1220
    assert sorted(r["id"] for r in rows if r["id"] != 50) == list(range(1201, 1221))
    groups = [sum(r["id"] == 50 for r in batch) for batch in responses]
    assert sorted(groups)[-1] == 1200, f"the group was split across responses: {groups}"


def case_variants(words: list[str]) -> list[str]:
    out: list[str] = []
    for word in words:
        for mask in range(2 ** len(word)):
            out.append("".join(c.upper() if mask >> i & 1 else c for i, c in enumerate(word)))
    return out


CASE_KEYS = case_variants(["a", "ab", "abc", "abcd", "xyz"])  # 2+4+8+16+8 = 38 distinct keys


@pytest.mark.parametrize(
    "collation", ["", ' COLLATE "C"', ' COLLATE "und-x-icu"'], ids=["default", "C", "icu"]
)
@pytest.mark.parametrize("limit", ["1", "2", "5"])
def test_keys_that_differ_only_in_case_page_exactly(pg, db, table_name, collation, limit):
    """Regression (issue 8, item 5): distinct primary-key values that differ only in case
    ('a' / 'A') under a case-sensitive collation, with an enforced primary key, were refused as
    rows with the same (cursor, key): the tie guard ignored case whatever the collation. Ties
    must be judged the way the column's collation compares."""
    if "icu" in collation and not db.run("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'"):
        pytest.skip("this PostgreSQL has no ICU collations")
    values = ", ".join(f"('{k}', {i % 2})" for i, k in enumerate(CASE_KEYS))
    db.table(
        table_name,
        f"k varchar(10){collation} PRIMARY KEY, updated_at int NOT NULL",
        f"VALUES {values}",
    )
    result = sync(secrets_for(pg, table_name, primary_key="k", limit=limit), max_calls=100)
    delivered = [r["k"] for r in result.rows]
    assert len(delivered) == len(set(delivered)), "a key was delivered twice"
    assert sorted(delivered) == sorted(CASE_KEYS)


def test_a_group_of_identical_rows_larger_than_a_response_is_refused(pg, db, table_name):
    """Regression (issue 8, item 5): only what truly cannot be paged is refused: a group of
    rows with the same (cursor, key) larger than max_response_bytes is a clear error (never a
    silent loss, an endless sync or an internal error)."""
    db.table(
        table_name,
        "id int, updated_at int NOT NULL, v text",
        "SELECT CASE WHEN g <= 5 THEN g ELSE 9 END, CASE WHEN g <= 5 THEN 1 ELSE 2 END,"
        " 'identical twin' FROM generate_series(1, 605) g",  # 600 x ~50 bytes > 10 kB
    )
    secrets_ = secrets_for(pg, table_name, max_response_bytes="10000")
    state: dict[str, Any] = {}
    delivered: list[int] = []
    with pytest.raises(lf.ConnectorError) as err:
        for _ in range(10):
            response = lf.lambda_handler({"state": state, "secrets": secrets_}, None)
            delivered += [r["id"] for r in response["insert"][table_name]]
            state = response["state"]
            assert response["hasMore"], "the sync ended without the group of identical rows"
    # Issue 17 item 12: any ConnectorError passed here; it must be the refusal of the group.
    assert type(err.value) is lf.SourceError, repr(err.value)
    assert re.match(
        rf"table public\.{table_name} has more rows with the same values of \(updated_at, id\) "
        r"than fit in one response of max_response_bytes=10000; the primary_key must identify "
        r"a row for exact paging, or raise max_response_bytes$",
        str(err.value),
    ), str(err.value)
    assert 9 not in delivered, "part of a group that cannot be paged was delivered"
    assert sorted(delivered) == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------------------------
# Item 6: one snapshot per invocation
# ---------------------------------------------------------------------------------------------


def test_every_page_reads_in_a_repeatable_read_read_only_transaction(pg, db, table_name):
    """Regression (issue 8, item 6): ``BEGIN READ ONLY`` is READ COMMITTED on PostgreSQL, so the
    pages of one invocation could see different data. The read must run in REPEATABLE READ (one
    snapshot), read-only."""
    db.table(
        table_name,
        "id int PRIMARY KEY, updated_at int NOT NULL",
        "SELECT g, g / 7 FROM generate_series(1, 2500) g",
    )
    view = f"{table_name}_v"
    db.run(
        f"CREATE VIEW {view} AS SELECT t.*,"
        " current_setting('transaction_isolation') AS iso,"
        f" current_setting('transaction_read_only') AS ro FROM {table_name} t"
    )
    db.undo(f"DROP VIEW IF EXISTS {view}")
    for limit in ("100000", "300"):  # invocations of several pages, and many invocations
        result = sync(secrets_for(pg, view, limit=limit))
        assert sorted(r["id"] for r in result.rows) == list(range(1, 2501))
        assert {r["iso"] for r in result.rows} == {"repeatable read"}
        assert {r["ro"] for r in result.rows} == {"on"}


# ---------------------------------------------------------------------------------------------
# Item 7: an invocation ends within Lambda's time
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_later_slow_page_ends_within_the_lambda_time_left(pg, db, table_name):
    """Regression (issue 8, item 7): the statement timeout was set once per session, so a later
    page started with a little over 3 s left could run for the whole original timeout (12.6 s
    of work in a 12 s function). Each query's timeout must end before the invocation's
    deadline: the handler returns (rows with hasMore, or SourceTimeoutError) in time."""
    remaining_ms = 8000
    db.table(
        table_name,
        "id int PRIMARY KEY, updated_at int NOT NULL",
        "SELECT g, g FROM generate_series(1, 3000) g",
    )
    # An index in the page query's order (a view's columns are nullable: NULLS FIRST), and a
    # function declared STABLE: the server then evaluates it only for the rows each page reads.
    db.run(f"CREATE INDEX ON {table_name} (updated_at NULLS FIRST, id NULLS FIRST)")
    # The first page (1,000 rows and one more) costs 2.5 s; every row after it, 0.2 s.
    db.run(
        f"CREATE FUNCTION {table_name}_slow(x int) RETURNS int LANGUAGE plpgsql STABLE AS $$"
        " BEGIN IF x = 1000 THEN PERFORM pg_sleep(2.5); ELSIF x > 1001 THEN"
        " PERFORM pg_sleep(0.2); END IF; RETURN x; END $$"
    )
    db.undo(f"DROP FUNCTION IF EXISTS {table_name}_slow")
    view = f"{table_name}_v"
    db.run(
        f"CREATE VIEW {view} AS SELECT id, updated_at, {table_name}_slow(id) AS s FROM {table_name}"
    )
    db.undo(f"DROP VIEW IF EXISTS {view}")
    started = time.monotonic()
    try:
        response = lf.lambda_handler(
            {"state": {}, "secrets": secrets_for(pg, view)}, FakeContext(remaining_ms=remaining_ms)
        )
    except lf.SourceTimeoutError:
        response = None
    elapsed = time.monotonic() - started
    assert elapsed < remaining_ms / 1000, (
        f"the invocation took {elapsed:.1f} s with {remaining_ms / 1000:.0f} s left"
    )
    if response is not None:
        check_response(response)
        ids = [r["id"] for r in response["insert"][view]]
        assert response["hasMore"] and ids == list(range(1, len(ids) + 1))


# ---------------------------------------------------------------------------------------------
# Item 8: JSON numbers stay exact, the response strict JSON
# ---------------------------------------------------------------------------------------------

HUGE = "9" * 3000  # an integer of thousands of digits (below Python's int/str limit)
# (json text, the value delivered for a json column: exact text where a double cannot hold it)
JSON_CASES: list[tuple[str, Any]] = [
    ('{"a": 1e400}', {"a": "1e400"}),
    ("-1e400", "-1e400"),
    ("1.23456789012345678901", "1.23456789012345678901"),
    ("0.1", 0.1),
    ("2.5", 2.5),
    ("1E+2", 100.0),
    ("1e22", 1e22),
    ("123456789012345678901234567890", 123456789012345678901234567890),
    (f'{{"n": {HUGE}}}', {"n": int(HUGE)}),
    ("12345678901234567.0", "12345678901234567.0"),
    ("[1.5e-400, 3, -0.25]", ["1.5e-400", 3, -0.25]),
    (
        '{"x": [0.1, {"y": 1e400}], "s": "1e400 as text", "t": true, "z": null}',
        {"x": [0.1, {"y": "1e400"}], "s": "1e400 as text", "t": True, "z": None},
    ),
]


def exact(value: Any) -> Any:
    """Numbers as Decimal (ints and number strings by their digits, floats by their repr)."""
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [exact(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, int):
        return Decimal(value)
    with contextlib.suppress(ArithmeticError):
        return Decimal(value)
    return value


def strict_types(delivered: Any, expected: Any) -> None:
    """The same JSON types: strings where expected, numbers where expected (int == float ok)."""
    if isinstance(expected, dict):
        assert isinstance(delivered, dict) and delivered.keys() == expected.keys()
        for k in expected:
            strict_types(delivered[k], expected[k])
    elif isinstance(expected, list):
        assert isinstance(delivered, list) and len(delivered) == len(expected)
        for d, e in zip(delivered, expected, strict=True):
            strict_types(d, e)
    elif isinstance(expected, str):
        assert delivered == expected, f"expected the exact text {expected!r}, got {delivered!r}"
    elif isinstance(expected, bool) or expected is None:
        assert delivered is expected
    else:
        assert isinstance(delivered, int | float) and not isinstance(delivered, bool), delivered
        assert exact(delivered) == exact(expected), f"{delivered!r} is not {expected!r}"
        if isinstance(expected, int):
            assert isinstance(delivered, int), f"an integer became {delivered!r}"


@pytest.mark.parametrize(
    ("text", "expected"), JSON_CASES, ids=[re.sub(r"\W+", "_", t)[:24] for t, _ in JSON_CASES]
)
def test_json_numbers_stay_exact_and_the_response_strict(pg, db, table_name, text, expected):
    """Regression (issue 8, item 8): a json value holding a number beyond double range (1e400,
    valid JSON) aborted the sync with an internal error, and numbers with more digits than a
    double holds lost digits. Numbers a double cannot hold exactly must arrive as strings of
    their exact digits, others as numbers, integers exact; the response strict JSON."""
    literal = pg8000.native.literal(text)
    db.table(
        table_name,
        "id int PRIMARY KEY, updated_at int NOT NULL, j json, jb jsonb",
        f"SELECT g, g % 2, {literal}, {literal} FROM generate_series(1, 5) g",
    )
    result = sync(secrets_for(pg, table_name, limit="2"), max_calls=10)  # strict JSON checked
    assert sorted(r["id"] for r in result.rows) == [1, 2, 3, 4, 5]
    for row in result.rows:
        strict_types(row["j"], expected)  # json keeps the number text as written
        # jsonb normalises the number text (1e400 -> 1000...0): compare the exact numbers.
        assert exact(row["jb"]) == exact(expected), f"jsonb: {row['jb']!r}"[:300]
        json.dumps(row, allow_nan=False)
