"""``lookback``: each new sync starts again a window before the last cursor, to catch late rows.

A row committed late with a cursor value older than the last delivered one is behind the
position: a strict keyset never reads it. With ``lookback`` each new sync (state entry marked
complete) restarts at the last cursor minus the window, inclusive; rows in the window are
delivered again, which Fivetran's upsert by primary key makes harmless. Inside a sync the paging
stays strict, so a sync with a lookback still ends.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from helpers import secrets_for, sync

import lambda_function as lf

BASE = "2024-03-01 00:00:00"


def make_table(pg: Any, table: str, sql_type: str, step: str, rows: int = 20) -> None:
    """Rows 1..rows with cursor BASE + g * step (strictly increasing)."""
    pg.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, updated_at {sql_type} NOT NULL, v text)")
    pg.execute(
        f"INSERT INTO {table} SELECT g, CAST(timestamp '{BASE}' + g * interval '{step}'"
        f" AS {sql_type}), 'v' || g FROM generate_series(1, {rows}) g"
    )


def insert_late(pg: Any, table: str, sql_type: str, row_id: int, before_last: str) -> None:
    """A row committed now whose cursor is ``before_last`` older than the newest one."""
    pg.execute(
        f"INSERT INTO {table} SELECT :id, CAST(max(updated_at) - interval '{before_last}'"
        f" AS {sql_type}), 'late' FROM {table}",
        id=row_id,
    )


@pytest.mark.parametrize(
    ("sql_type", "step", "lookback", "late_by"),
    [
        ("timestamp", "10 minutes", "1h", "30 minutes"),
        ("timestamp", "10 minutes", "3600", "1 hour"),  # the window's edge is inclusive
        ("timestamp", "1 second", "90s", "90 seconds"),
        ("timestamptz", "10 minutes", "90m", "89 minutes"),
        ("timestamptz", "1 hour", "2h", "2 hours"),
        ("date", "1 day", "1d", "1 day"),
        ("date", "1 day", "3d", "2 days"),
    ],
)
def test_a_late_row_is_caught_by_lookback_and_missed_without(
    pg, table_name, sql_type, step, lookback, late_by
):
    make_table(pg, table_name, sql_type, step)
    first = sync(secrets_for(pg, table_name, limit="7", lookback=lookback))
    assert sorted(r["id"] for r in first.rows) == list(range(1, 21))
    entry = first.state["tables"][table_name]
    assert entry["complete"] is True
    insert_late(pg, table_name, sql_type, 100, late_by)
    state = copy.deepcopy(first.state)

    caught = sync(secrets_for(pg, table_name, limit="7", lookback=lookback), first.state)
    assert 100 in [r["id"] for r in caught.rows]
    ids = [r["id"] for r in caught.rows]
    assert len(ids) == len(set(ids)), "a row was delivered twice within one sync"
    assert caught.state["tables"][table_name]["after"] == entry["after"]  # position kept
    assert first.state == state  # the request's state is not modified in place

    # The trade-off: without a lookback the late row is behind the position, never read; a
    # new sync re-reads only the rows at the last cursor value (here the last row, 20).
    for no_lookback in (None, "0"):
        missed = sync(secrets_for(pg, table_name, limit="7", lookback=no_lookback), first.state)
        assert [r["id"] for r in missed.rows] == [20] and missed.responses == 1


def test_a_row_just_outside_the_window_is_not_caught(pg, table_name):
    make_table(pg, table_name, "timestamp", "10 minutes")
    secrets = secrets_for(pg, table_name, lookback="1h")
    first = sync(secrets)
    insert_late(pg, table_name, "timestamp", 100, "1 hour 1 second")
    again = sync(secrets, first.state)
    assert 100 not in [r["id"] for r in again.rows]
    # The window is exactly the last hour, inclusive: rows 14..20 (140..200 min after BASE).
    assert sorted(r["id"] for r in again.rows) == list(range(14, 21))


def test_paging_inside_a_lookback_sync_is_strict_and_ends(pg, table_name):
    """The window holds many rows with ties; limit 3 pages through it once, then the sync ends."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at timestamptz NOT NULL)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, timestamptz '2024-03-01 00:00:00+00'"
        " + (g % 5) * interval '1 hour' FROM generate_series(1, 50) g"
    )
    secrets = secrets_for(pg, table_name, limit="3", lookback="1d")
    first = sync(secrets)
    assert len(first.rows) == 50
    for _ in range(2):  # every new sync re-reads the same window, once, and ends
        again = sync(secrets, first.state, max_calls=100)
        ids = [r["id"] for r in again.rows]
        assert sorted(ids) == list(range(1, 51)) and len(ids) == 50
        assert again.responses == 17  # ceil(50 / 3): no page repeated, no page lost
        assert again.state == first.state
    # Only the first page of a sync goes back: a mid-sync state pages strictly on.
    response = lf.lambda_handler({"state": first.state, "secrets": secrets}, None)
    middle = response["state"]
    assert middle["tables"][table_name]["complete"] is False
    rest = sync(secrets, middle)
    assert len(rest.rows) == 47 and not {r["id"] for r in rest.rows} & {
        r["id"] for r in response["insert"][table_name]
    }


def test_a_sync_ending_on_an_empty_batch_still_starts_the_next_one_with_the_lookback(
    pg, table_name
):
    make_table(pg, table_name, "timestamp", "10 minutes", rows=10)
    secrets = secrets_for(pg, table_name, limit="5", lookback="1h")
    first = lf.lambda_handler({"state": {}, "secrets": secrets}, None)
    assert first["hasMore"] is True
    pg.execute(f"DELETE FROM {table_name} WHERE id > 5")  # the rest vanishes mid-sync
    empty = lf.lambda_handler({"state": first["state"], "secrets": secrets}, None)
    assert empty["insert"][table_name] == [] and empty["hasMore"] is False
    insert_late(pg, table_name, "timestamp", 100, "20 minutes")
    caught = sync(secrets, empty["state"])
    assert 100 in [r["id"] for r in caught.rows]


def test_rows_with_a_null_cursor_are_not_part_of_the_window(pg, table_name):
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at timestamp)")
    pg.execute(
        f"INSERT INTO {table_name} VALUES (1, NULL), (2, NULL), (3, '{BASE}'),"
        f" (4, timestamp '{BASE}' + interval '1 minute')"
    )
    secrets = secrets_for(pg, table_name, limit="1", lookback="1h")
    first = sync(secrets)
    assert [r["id"] for r in first.rows] == [1, 2, 3, 4]  # NULLs first, initial sync only
    again = sync(secrets, first.state)
    assert [r["id"] for r in again.rows] == [3, 4]


@pytest.mark.parametrize(
    ("columns", "cursor"),
    [
        ("updated_at int NOT NULL", "updated_at"),
        ("updated_at bigint NOT NULL", "updated_at"),
        ("updated_at numeric(12,3) NOT NULL", "updated_at"),
        ("updated_at varchar(30) NOT NULL", "updated_at"),
        ("updated_at int NOT NULL, ts timestamp", "updated_at, ts"),  # time is not leading
    ],
)
def test_lookback_needs_a_date_or_timestamp_leading_cursor(pg, table_name, columns, cursor):
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, {columns})")
    secrets = secrets_for(pg, table_name, cursor=cursor, lookback="1h")
    with pytest.raises(lf.ConfigurationError, match=r"'lookback' needs a date or timestamp"):
        lf.lambda_handler({"state": {}, "secrets": secrets}, None)
    # Without a lookback the same table syncs (an empty table: no rows, no more).
    response = lf.lambda_handler({"state": {}, "secrets": {**secrets, "lookback": "0"}}, None)
    assert response["hasMore"] is False
