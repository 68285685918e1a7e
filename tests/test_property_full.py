"""The several-tables invariant for full-refresh tables at any size (issue 16): key sets split
into many small parts (ranges of the re-read), kept in the state or spilled to the S3 key store
(SeaweedFS on loopback), a table hidden for one sync (renamed away, as during a rebuild) while
rows of it are deleted, and the state's bounds asserted on every response.

Each example builds one to three full tables of a schema selection (an integer, text or
composite key; NULL-free, as primary keys are), with tiny parts (2 to 7 keys) so that every
sync crosses many ranges, a small byte budget, soft or hard deletes, and with or without a key
store (then a key set of more than a few hundred bytes goes to S3). Between syncs: deletes,
re-inserts of deleted keys, updates and inserts. After every sync in which no table was hidden:
every destination equals its source, the sync's deletes are exactly the keys gone since the
last complete sync, and no key was delivered twice.

``PROPERTY_FULL_EXAMPLES`` sets the number of examples (default 25); derandomised as in
test_property.py unless ``PROPERTY_RANDOM=1``.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pg8000.native
import pytest
from helpers import ROOT, check_response, secrets_for
from hypothesis import given, note, settings
from hypothesis import strategies as st
from test_property import BULK_SETTINGS
from test_property import admin as admin  # a fixture: one setup connection per module

import lambda_function as lf

sys.path.insert(0, str(ROOT / "scripts"))
from warehouse import Warehouse

FULL_SETTINGS = settings(
    BULK_SETTINGS, max_examples=int(os.environ.get("PROPERTY_FULL_EXAMPLES", "25"))
)
KEY_KINDS = ["int", "text", "composite"]
WORDS = st.text(alphabet="aAbB-é_ z", min_size=1, max_size=4)


@dataclass
class Step:
    deletes: list[int]
    reinserts: int
    updates: list[int]
    inserts: int
    hidden: int | None  # the table renamed away during this step's sync


@dataclass
class Case:
    kinds: list[str]
    rows: list[int]
    part_keys: int
    key_store: bool
    max_response_bytes: int
    deletes: str
    steps: list[Step]


@st.composite
def cases(draw: Any) -> Case:
    n = draw(st.integers(1, 3))
    steps = [
        Step(
            deletes=draw(st.lists(st.integers(0, 10_000), max_size=12)),
            reinserts=draw(st.integers(0, 3)),
            updates=draw(st.lists(st.integers(0, 10_000), max_size=4)),
            inserts=draw(st.integers(0, 6)),
            # (with one table, hiding it leaves the selection empty: a configuration error)
            hidden=draw(st.none() | st.integers(0, n - 1)) if n > 1 else None,
        )
        for _ in range(draw(st.integers(1, 4)))
    ]
    return Case(
        kinds=[draw(st.sampled_from(KEY_KINDS)) for _ in range(n)],
        rows=[draw(st.integers(0, 40)) for _ in range(n)],
        part_keys=draw(st.integers(2, 7)),
        key_store=draw(st.booleans()),
        max_response_bytes=draw(st.sampled_from([10_000, 14_000, 30_000])),
        deletes=draw(st.sampled_from(["soft", "hard"])),
        steps=steps,
    )


@pytest.fixture(scope="module")
def bucket(s3: Any) -> Iterator[str]:
    saved = dict(os.environ)
    os.environ.update(s3.aws_env())
    yield s3.new_bucket()
    os.environ.clear()
    os.environ.update(saved)


class World:
    def __init__(self, con: pg8000.native.Connection, schema: str, case: Case) -> None:
        self.con, self.schema, self.case = con, schema, case
        self.next_id = 0
        self.gone: list[list[tuple[Any, ...]]] = [[] for _ in case.kinds]

    def key_columns(self, i: int) -> list[str]:
        return ["a", "b"] if self.case.kinds[i] == "composite" else ["k"]

    def new_key(self, i: int, word: str) -> list[Any]:
        self.next_id += 1
        kind = self.case.kinds[i]
        if kind == "int":
            return [self.next_id * 3]
        if kind == "text":
            return [f"{word}{self.next_id}"]
        return [self.next_id % 4, f"{word}{self.next_id}"]

    def create(self, i: int) -> None:
        kind = self.case.kinds[i]
        columns = {
            "int": "k bigint PRIMARY KEY",
            "text": 'k text COLLATE "und-x-icu" PRIMARY KEY',
            "composite": "a int, b varchar(20), PRIMARY KEY (a, b)",
        }[kind]
        self.con.run(f"CREATE TABLE {self.schema}.t{i} ({columns}, v text)")
        for r in range(self.case.rows[i]):
            self.insert(i, self.new_key(i, "aBé-_ z"[r % 7]))

    def insert(self, i: int, key: list[Any]) -> None:
        cols = self.key_columns(i)
        params = {f"p{j}": v for j, v in enumerate(key)}
        self.con.run(
            f"INSERT INTO {self.schema}.t{i} ({', '.join(cols)}, v) VALUES "
            f"({', '.join(':p' + str(j) for j in range(len(key)))}, 'v')",
            **params,
        )

    def keys(self, i: int) -> list[tuple[Any, ...]]:
        cols = ", ".join(self.key_columns(i))
        return sorted(
            (tuple(r) for r in self.con.run(f"SELECT {cols} FROM {self.schema}.t{i}")), key=repr
        )

    def where(self, i: int, key: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
        cols = self.key_columns(i)
        return " AND ".join(f"{c} = :w{j}" for j, c in enumerate(cols)), {
            f"w{j}": v for j, v in enumerate(key)
        }

    def write(self, step: Step) -> None:
        for i in range(len(self.case.kinds)):
            keys = self.keys(i)
            for pick in sorted({p % len(keys) for p in step.deletes} if keys else ()):
                cond, params = self.where(i, keys[pick])
                self.con.run(f"DELETE FROM {self.schema}.t{i} WHERE {cond}", **params)
                self.gone[i].append(keys[pick])
            for key in self.gone[i][: step.reinserts]:
                if key not in self.keys(i):
                    self.insert(i, list(key))
            live = self.keys(i)
            for pick in {p % len(live) for p in step.updates} if live else ():
                cond, params = self.where(i, live[pick])
                self.con.run(f"UPDATE {self.schema}.t{i} SET v = v || 'u' WHERE {cond}", **params)
            for _ in range(step.inserts):
                self.insert(i, self.new_key(i, "zA"))

    def rows(self, i: int) -> dict[tuple[Any, ...], str]:
        cols = self.key_columns(i)
        got = self.con.run(f"SELECT {', '.join(cols)}, v FROM {self.schema}.t{i}")
        return {tuple(r[:-1]): r[-1] for r in got}


def assert_state_bounded(state: dict[str, Any]) -> None:
    assert len(json.dumps(state)) <= lf.CONNECTOR_STATE_MAX_BYTES
    for destination, entry in state["tables"].items():
        assert len(json.dumps(entry)) <= lf.TABLE_STATE_MAX_BYTES, destination


def run_case(pg: Any, con: pg8000.native.Connection, bucket: str, case: Case) -> None:
    schema = f"s_full_{secrets.token_hex(3)}"
    con.run(f"CREATE SCHEMA {schema}")
    try:
        world = World(con, schema, case)
        for i in range(len(case.kinds)):
            world.create(i)
        secrets_ = secrets_for(
            pg,
            "x",
            schema=schema,
            exclude="hidden_*",  # a table renamed away is not selected
            deletes=case.deletes,
            max_response_bytes=str(case.max_response_bytes),
            key_store=f"s3://{bucket}/{schema}" if case.key_store else None,
        )
        for key in ("table", "cursor", "primary_key"):
            secrets_.pop(key)
        state: dict[str, Any] = {}
        with Warehouse() as wh:
            live_before = [set(world.rows(i)) for i in range(len(case.kinds))]
            for number, step in enumerate([Step([], 0, [], 0, None), *case.steps]):
                world.write(step)
                if step.hidden is not None:
                    con.run(f"ALTER TABLE {schema}.t{step.hidden} RENAME TO hidden_t{step.hidden}")
                delivered: dict[str, list[tuple[Any, ...]]] = {}
                deleted: dict[str, list[tuple[Any, ...]]] = {}
                for _ in range(2_000):
                    response = lf.lambda_handler({"state": state, "secrets": secrets_}, None)
                    check_response(response, case.max_response_bytes)
                    assert_state_bounded(response["state"])
                    for d, rows in response["insert"].items():
                        cols = world.key_columns(int(d[1:]))
                        delivered.setdefault(d, []).extend(tuple(r[c] for c in cols) for r in rows)
                    for d, keys in response.get("delete", {}).items():
                        cols = world.key_columns(int(d[1:]))
                        deleted.setdefault(d, []).extend(tuple(k[c] for c in cols) for k in keys)
                    wh.apply(response)
                    state = response["state"]
                    if not response["hasMore"]:
                        break
                else:
                    raise AssertionError("the sync did not end")
                if step.hidden is not None:
                    con.run(f"ALTER TABLE {schema}.hidden_t{step.hidden} RENAME TO t{step.hidden}")
                    assert f"t{step.hidden}" in state["tables"], "a hidden table keeps its entry"
                note(f"sync {number}: {sum(map(len, deleted.values()))} deletes")
                for i in range(len(case.kinds)):
                    if i == step.hidden:
                        continue  # checked after its next sync, against what it had before
                    d = f"t{i}"
                    source = world.rows(i)
                    live = (
                        {tuple(r[c] for c in world.key_columns(i)): r["v"] for r in wh.rows(d)}
                        if d in wh.tables()
                        else {}
                    )
                    assert live == source, f"{d}: destination differs from the source"
                    keys = delivered.get(d, [])
                    assert len(keys) == len(set(keys)), f"{d}: a key delivered twice"
                    gone = live_before[i] - set(source)
                    assert set(deleted.get(d, [])) == gone, f"{d}: deletes differ from keys gone"
                    live_before[i] = set(source)
    finally:
        con.run(f"DROP SCHEMA {schema} CASCADE")


@FULL_SETTINGS
@given(case=cases())
def test_full_tables_equal_their_source_with_parts_key_stores_and_hidden_tables(
    pg,
    admin,
    bucket,
    case,
):
    with (
        mock.patch.object(lf, "INLINE_PART_KEYS", case.part_keys),
        mock.patch.object(lf, "STORE_PART_KEYS", case.part_keys),
        mock.patch.object(lf, "INLINE_SET_MAX_BYTES", 300 if case.key_store else 24_000),
        mock.patch.object(lf, "CONFIRM_KEYS", 3),
    ):
        run_case(pg, admin, bucket, case)
