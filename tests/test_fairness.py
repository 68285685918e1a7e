"""Fairness across tables (issue 17, item 8): a days-long initial load of one table must not
starve the increments of tables that are caught up."""

from __future__ import annotations

import json
from typing import Any

from helpers import check_response, secrets_for

import lambda_function as lf


def test_a_small_tables_new_rows_arrive_while_a_large_table_is_still_loading(pg, table_name):
    """Regression (issue 17, item 8): tables were served in a fixed order, so the initial load
    of a large first table starved every later table's increments until it finished (and
    Fivetran stops a sync after six hours). Caught-up tables now go first, and once the sync
    has spent max_backfill_s on backfills it ends; the next sync serves the increments first
    again and goes on loading where it stood."""
    big, small = f"{table_name}_big", f"{table_name}_small"
    pg.execute(f"CREATE TABLE {big} (id int PRIMARY KEY, updated_at int, v text)")
    pg.execute(f"INSERT INTO {big} SELECT g, g, repeat('b', 200) FROM generate_series(1, 3000) g")
    pg.execute(f"CREATE TABLE {small} (id int PRIMARY KEY, updated_at int)")
    pg.execute(f"INSERT INTO {small} SELECT g, g FROM generate_series(1, 5) g")

    def secrets(*tables: str) -> dict[str, Any]:
        s = secrets_for(
            pg,
            "x",
            tables=json.dumps([{"table": t, "cursor": "updated_at"} for t in tables]),
            max_response_bytes="60000",
            max_backfill_s="0",
        )
        for key in ("table", "cursor", "primary_key"):
            s.pop(key)
        return s

    def one_sync(config: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        rows: dict[str, list[int]] = {}
        for _ in range(1000):
            response = lf.lambda_handler({"state": state, "secrets": config}, None)
            check_response(response, 60_000)
            for t, got in response["insert"].items():
                rows.setdefault(t, []).extend(r["id"] for r in got)
            state = response["state"]
            if not response["hasMore"]:
                return state, rows
        raise AssertionError("no end")

    state, rows = one_sync(secrets(small), {})  # the small table is caught up
    assert sorted(rows[small]) == [1, 2, 3, 4, 5]
    config = secrets(big, small)  # the large table comes first in the configuration
    delivered: list[int] = []
    for n in range(100):
        pg.execute(f"INSERT INTO {small} VALUES ({100 + n}, {100 + n})")
        state, rows = one_sync(config, state)
        assert 100 + n in rows[small], f"sync {n}: the small table's new row did not arrive"
        delivered += rows.get(big, [])
        if state["tables"][big]["loaded"]:
            break
    else:
        raise AssertionError("the large table never finished loading")
    assert n >= 3, "the load took several syncs"
    assert sorted(delivered) == list(range(1, 3001)), "every row of the large table, once"


def test_one_table_loads_in_one_sync_whatever_max_backfill_s(pg, table_name):
    """The sync ends early only to serve caught-up tables: a connector whose tables are all
    loading (or one table) loads in one sync."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int, v text)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, g, repeat('b', 200) FROM generate_series(1, 2000) g"
    )
    config = secrets_for(pg, table_name, max_response_bytes="60000", max_backfill_s="0")
    state: dict[str, Any] = {}
    calls = 0
    while True:
        response = lf.lambda_handler({"state": state, "secrets": config}, None)
        calls += 1
        state = response["state"]
        if not response["hasMore"]:
            break
    assert calls > 3 and state["tables"][table_name]["loaded"]
