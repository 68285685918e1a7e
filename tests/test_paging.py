"""Exact paging against a real PostgreSQL: nothing lost, nothing repeated, whatever the batches."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import FakeContext, secrets_for, sync

import lambda_function as lf


def ids(rows: list[dict[str, Any]], key: str = "id") -> list[Any]:
    return [r[key] for r in rows]


def test_ties_across_batch_boundaries(pg, table_name):
    """Regression: the seed's `cursor > last` lost rows sharing the cursor value at a boundary."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at timestamp NOT NULL)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, timestamp '2024-01-01' + (g % 3) * interval '1 day'"
        " FROM generate_series(1, 1000) g"
    )
    result = sync(secrets_for(pg, table_name, limit="7"))
    assert sorted(ids(result.rows)) == list(range(1, 1001))
    assert len(result.rows) == 1000  # no repeats
    assert result.responses == 143  # ceil(1000 / 7): full batches, last one ends the sync
    keys = [(r["updated_at"], r["id"]) for r in result.rows]
    assert keys == sorted(keys)  # delivered in (cursor, key) order


def test_composite_cursor_and_composite_key(pg, table_name):
    pg.execute(
        f"CREATE TABLE {table_name} (region text, n int, day date NOT NULL, seq int NOT NULL,"
        " PRIMARY KEY (region, n))"
    )
    pg.execute(
        f"INSERT INTO {table_name} SELECT (ARRAY['eu','us','ap'])[1 + g % 3], g / 3,"
        " date '2024-01-01' + (g % 4), g % 5 FROM generate_series(0, 599) g"
    )
    secrets = secrets_for(pg, table_name, cursor="day, seq", primary_key=None, limit="11")
    result = sync(secrets)
    got = sorted((r["region"], r["n"]) for r in result.rows)
    want = sorted((r[0], r[1]) for r in pg.execute(f"SELECT region, n FROM {table_name}"))
    assert got == want
    schema = lf.lambda_handler({"state": {}, "secrets": secrets}, None)["schema"]
    assert schema == {table_name: {"primary_key": ["region", "n"]}}  # the declared key


def test_same_state_gives_same_rows(pg, table_name):
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL)")
    pg.execute(f"INSERT INTO {table_name} SELECT g, g / 10 FROM generate_series(1, 200) g")
    secrets = secrets_for(pg, table_name, limit="25")
    first = lf.lambda_handler({"state": {}, "secrets": secrets}, None)
    request = {"state": first["state"], "secrets": secrets}
    again = [lf.lambda_handler(request, FakeContext()) for _ in range(3)]
    assert all(r == again[0] for r in again)
    assert ids(again[0]["insert"][table_name]) == list(range(26, 51))


def test_empty_table_returns_unchanged_state_and_no_more(pg, table_name):
    """Regression: the seed returned `{}` at the end of a table, which Fivetran cannot parse."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at timestamp)")
    for state in ({}, {"version": 1, "tables": {}}, {"version": 2, "tables": {}, "done": []}):
        response = lf.lambda_handler({"state": state, "secrets": secrets_for(pg, table_name)}, None)
        assert response == {
            "state": {"version": lf.STATE_VERSION, "tables": {}, "done": []},
            "insert": {table_name: []},
            "schema": {table_name: {"primary_key": ["id"]}},
            "hasMore": False,
        }


def test_incremental_sync_delivers_exactly_new_and_changed_rows(pg, table_name):
    pg.execute(
        f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at timestamp NOT NULL, v text)"
    )
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, timestamp '2024-01-01' + (g / 10) * interval '1 s',"
        " 'a' FROM generate_series(1, 300) g"
    )
    secrets = secrets_for(pg, table_name, limit="40")
    first = sync(secrets)
    assert len(first.rows) == 300
    # Nothing changed: the next sync re-sends only the rows at the last cursor value (here
    # row 300 alone) and keeps the position.
    idle = sync(secrets, first.state)
    assert ids(idle.rows) == [300] and idle.responses == 1
    entry, was = idle.state["tables"][table_name], first.state["tables"][table_name]
    assert entry["after"] == was["after"] and entry["complete"] is True
    pg.execute(
        f"UPDATE {table_name} SET v = 'b', updated_at = timestamp '2025-01-01' WHERE id IN (3, 150)"
    )
    pg.execute(
        f"INSERT INTO {table_name} VALUES (301, timestamp '2025-01-02', 'new'),"
        " (302, timestamp '2025-01-01', 'tie with an update')"
    )
    second = sync(secrets, first.state)
    assert sorted(ids(second.rows)) == [3, 150, 300, 301, 302]
    assert {r["id"]: r["v"] for r in second.rows}[3] == "b"


def test_null_cursor_rows_come_first_in_the_initial_sync(pg, table_name):
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at timestamp, k2 int)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, CASE WHEN g % 4 = 0 THEN NULL"
        " ELSE timestamp '2024-01-01' + (g % 3) * interval '1 h' END,"
        " CASE WHEN g % 5 = 0 THEN NULL ELSE g % 2 END FROM generate_series(1, 400) g"
    )
    result = sync(secrets_for(pg, table_name, limit="9"))
    assert sorted(ids(result.rows)) == list(range(1, 401))
    first_non_null = next(i for i, r in enumerate(result.rows) if r["updated_at"] is not None)
    assert all(r["updated_at"] is None for r in result.rows[:first_non_null])
    assert first_non_null == 100
    # A composite cursor whose second column has NULLs pages exactly too.
    result = sync(secrets_for(pg, table_name, cursor="k2, updated_at", limit="6"))
    assert sorted(ids(result.rows)) == list(range(1, 401))


def test_null_in_the_primary_key_still_pages_exactly(pg, table_name):
    """Redshift does not enforce keys: a NULL key column must not stop or skip the paging."""
    pg.execute(f"CREATE TABLE {table_name} (id int, sub int, updated_at int NOT NULL)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, CASE WHEN g % 3 = 0 THEN NULL ELSE g END, g % 2"
        " FROM generate_series(1, 60) g"
    )
    result = sync(secrets_for(pg, table_name, primary_key="sub, id", limit="4"))
    assert sorted(ids(result.rows)) == list(range(1, 61))


@pytest.mark.parametrize(
    ("table_setting", "cursor", "key"),
    [
        ('"Sales Data"."Order Lines"', '"Updated At"', '"Order Id"'),
        ('"Sales Data"."Order Lines"', '"we:ird"', '"quo""te"'),
    ],
)
def test_schema_qualified_and_quoted_names(pg, table_setting, cursor, key):
    pg.execute('CREATE SCHEMA IF NOT EXISTS "Sales Data"')
    pg.execute('DROP TABLE IF EXISTS "Sales Data"."Order Lines"')
    pg.execute(
        'CREATE TABLE "Sales Data"."Order Lines" ("Order Id" int, "Updated At" timestamp,'
        ' "we:ird" int, "quo""te" int, "select" text)'
    )
    pg.execute(
        'INSERT INTO "Sales Data"."Order Lines" SELECT g, timestamp \'2024-01-01\' + (g % 2)'
        " * interval '1 h', g % 3, g, 'x' FROM generate_series(1, 50) g"
    )
    secrets = secrets_for(pg, table_setting, cursor=cursor, primary_key=key, limit="7")
    result = sync(secrets)
    assert sorted(r["Order Id"] for r in result.rows) == list(range(1, 51))
    assert set(result.rows[0]) == {"Order Id", "Updated At", "we:ird", 'quo"te', "select"}
    assert list(result.state["tables"]) == ["Order Lines"]  # destination: the name without schema


def test_unquoted_names_fold_to_lower_case_and_destination_can_be_renamed(pg, table_name):
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL)")
    pg.execute(f"INSERT INTO {table_name} VALUES (1, 1), (2, 2)")
    secrets = secrets_for(
        pg,
        f"PUBLIC.{table_name.upper()}",
        cursor="UPDATED_AT",
        primary_key="Id",
        destination_table="Orders Copy",
    )
    result = sync(secrets)
    assert ids(result.rows) == [1, 2]
    assert list(result.state["tables"]) == ["Orders Copy"]


def test_rows_many_times_the_byte_budget(pg, table_name):
    pg.execute(
        f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL, blob text)"
    )
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, g / 7, repeat(chr(19968 + g % 50), 300 + g % 200)"
        " FROM generate_series(1, 600) g"
    )
    budget = 40_000
    result = sync(secrets_for(pg, table_name, max_response_bytes=str(budget)))
    assert sorted(ids(result.rows)) == list(range(1, 601))
    assert result.responses > 30  # ~1.4 MB of JSON (escaped unicode) through 40 kB responses
    assert max(result.sizes) <= budget
    full = [s / budget for s in result.sizes[:-1]]
    assert min(full) >= 0.9, f"a non-final response was only {min(full):.0%} of the budget"


def test_a_single_row_over_the_budget_is_a_clear_error(pg, table_name):
    pg.execute(
        f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL, blob text)"
    )
    pg.execute(
        f"INSERT INTO {table_name} VALUES (1, 1, 'small'), (2, 2, repeat('secret-ish', 5000))"
    )
    secrets = secrets_for(pg, table_name, max_response_bytes="10000")
    first = lf.lambda_handler({"state": {}, "secrets": secrets}, None)
    assert ids(first["insert"][table_name]) == [1] and first["hasMore"] is True
    with pytest.raises(lf.RowTooLargeError, match=table_name) as err:
        lf.lambda_handler({"state": first["state"], "secrets": secrets}, None)
    assert "secret-ish" not in str(err.value)
    assert "max_response_bytes" in str(err.value)


def test_limit_of_one_and_has_more_only_when_rows_remain(pg, table_name):
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL)")
    pg.execute(f"INSERT INTO {table_name} VALUES (1, 1), (2, 1), (3, 2)")
    secrets = secrets_for(pg, table_name, limit="1")
    result = sync(secrets)
    assert ids(result.rows) == [1, 2, 3] and result.responses == 3
    # The last row is known to be last: no empty response is needed to end the sync.
    secrets = secrets_for(pg, table_name, limit="3")
    assert sync(secrets).responses == 1


def test_state_is_plain_json_with_exact_positions(pg, table_name):
    pg.execute(
        f"CREATE TABLE {table_name} (id numeric(30,10) PRIMARY KEY,"
        " updated_at timestamptz NOT NULL)"
    )
    pg.execute(
        f"INSERT INTO {table_name} VALUES (12345678901234567890.0123456789,"
        " timestamptz '2024-05-06 07:08:09.123456+02')"
    )
    result = sync(secrets_for(pg, table_name))
    entry = result.state["tables"][table_name]
    assert entry["after"] == ["2024-05-06 05:08:09.123456+00", "12345678901234567890.0123456789"]
    assert json.loads(json.dumps(result.state)) == result.state
    assert result.rows[0]["updated_at"] == "2024-05-06T05:08:09.123456Z"


def test_repeated_cursor_and_key_never_straddle_a_batch_boundary(pg, table_name):
    """Redshift does not enforce keys: twins with the same (cursor, key) travel together."""
    pg.execute(f"CREATE TABLE {table_name} (id int, updated_at int NOT NULL, copy int)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT g / 2, (g / 2) % 3, g FROM generate_series(0, 119) g"
    )  # every (updated_at, id) appears twice
    for limit in ("2", "3", "7"):
        result = sync(secrets_for(pg, table_name, limit=limit))
        assert sorted(r["copy"] for r in result.rows) == list(range(120)), limit
    # Regression (issue 8, item 5): a group larger than the first page, or than 'limit', was
    # refused; it is delivered whole, even past 'limit' when a batch holds nothing else.
    pg.execute(f"INSERT INTO {table_name} SELECT 1000, 9, g FROM generate_series(1, 5) g")
    result = sync(secrets_for(pg, table_name, limit="3"))
    assert sorted(r["copy"] for r in result.rows) == sorted([*range(1, 6), *range(120)])
    # Only what truly cannot be paged is refused: twins that do not fit one response.
    pg.execute(f"INSERT INTO {table_name} SELECT 2000, 10, g FROM generate_series(1, 400) g")
    pg.execute(f"ALTER TABLE {table_name} ADD COLUMN pad text DEFAULT repeat('x', 100)")
    with pytest.raises(
        lf.SourceError, match=r"more rows with the same values of \(updated_at, id\) than fit"
    ):
        sync(secrets_for(pg, table_name, limit="3", max_response_bytes="20000"))


def test_a_sync_ending_on_an_empty_batch_is_marked_complete(pg, table_name):
    """Rows deleted mid-sync can leave the last batch empty; the next sync must still know
    that a sync ended (it applies the lookback then)."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL)")
    pg.execute(f"INSERT INTO {table_name} SELECT g, g FROM generate_series(1, 10) g")
    secrets = secrets_for(pg, table_name, limit="5")
    first = lf.lambda_handler({"state": {}, "secrets": secrets}, None)
    assert first["hasMore"] and not first["state"]["tables"][table_name]["complete"]
    pg.execute(f"DELETE FROM {table_name} WHERE id > 5")
    last = lf.lambda_handler({"state": first["state"], "secrets": secrets}, None)
    assert last["insert"][table_name] == [] and last["hasMore"] is False
    entry = last["state"]["tables"][table_name]
    assert entry["complete"] is True
    assert entry["after"] == first["state"]["tables"][table_name]["after"]


def test_a_select_only_user_gets_the_declared_primary_key(pg, table_name):
    pg.execute(f"CREATE TABLE {table_name} (a int, b int, updated_at int, PRIMARY KEY (b, a))")
    pg.execute(f"INSERT INTO {table_name} VALUES (1, 2, 3)")
    user = f"reader_{table_name[-6:]}"
    pg.create_user(user, "reader-pass")
    pg.execute(f"GRANT SELECT ON {table_name} TO {user}")
    secrets = secrets_for(pg, table_name, user=user, password="reader-pass", primary_key=None)
    response = lf.lambda_handler({"state": {}, "secrets": secrets}, None)
    assert response["schema"] == {table_name: {"primary_key": ["b", "a"]}}
    assert response["insert"][table_name] == [{"a": 1, "b": 2, "updated_at": 3}]


def test_a_row_committed_later_at_the_last_cursor_value_is_not_lost(pg, table_name):
    """Regression (issue 8, item 1): a row committed after a sync with the same cursor value as
    the last delivered row but a smaller key was never delivered (the next sync resumed
    strictly after (cursor, key)). A new sync resumes inclusively at the last cursor value."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at timestamp(0) NOT NULL)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, timestamp '2024-01-01' + (g / 4) * interval '1 s'"
        " FROM generate_series(10, 49) g"
    )
    secrets = secrets_for(pg, table_name, limit="6")
    first = sync(secrets)
    assert sorted(ids(first.rows)) == list(range(10, 50))
    assert len(ids(first.rows)) == 40  # strict inside a sync: nothing twice
    pg.execute(f"INSERT INTO {table_name} VALUES (1, timestamp '2024-01-01 00:00:12')")
    second = sync(secrets, first.state)
    assert sorted(ids(second.rows)) == [1, 48, 49]  # the new row, and its tied rows re-sent
