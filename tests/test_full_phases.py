"""Each phase of a full-refresh table's lifecycle (issue 16, item 3: FullRefresh.start,
read_range, delete_range, flush, finish), one at a time, against a real PostgreSQL."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from helpers import secrets_for

import lambda_function as lf


@contextlib.contextmanager
def full_table(pg: Any, table: str, **settings: Any) -> Iterator[lf.FullRefresh]:
    secrets = secrets_for(pg, table, cursor=None, primary_key="id", mode="full", **settings)
    config = lf.parse_config(secrets)
    spec = config.tables[0]
    with lf.Source(config, time.monotonic() + 60) as source:
        plan = lf.load_plan(source, spec, config)
        response = lf.Response(config, lf.SyncState(), [spec])
        response.begin(spec.destination, plan.primary_key)
        yield lf.FullRefresh(source, spec, plan, response, None, response.inline_max)


def stored(keys: list[tuple[Any, ...]], part_keys: int) -> lf.StoredSet:
    parts = [keys[i : i + part_keys] for i in range(0, len(keys), part_keys)]
    inline = tuple(lf.base64.b64encode(lf.encode_keys(p)).decode() for p in parts)
    return lf.StoredSet(len(keys), inline, tuple(map(len, parts)))


@pytest.fixture
def ints(pg: Any, table_name: str) -> str:
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v text)")
    pg.execute(f"INSERT INTO {table_name} SELECT g, 'v' FROM generate_series(1, 40) g")
    return table_name


def test_start_carries_the_stored_keys_into_a_new_sync_and_goes_on_with_an_unfinished_one(pg, ints):
    with full_table(pg, ints) as full:
        keys = stored([(1,), (2,)], 5)
        finished = lf.TableState(
            f"public.{ints}", (), ("id",), mode="full", complete=True, keys=keys
        )
        entry = full.start(finished)
        assert entry.keys == keys and entry.next is None and not entry.complete
        assert (entry.phase, entry.part, entry.after) == ("reading", 0, None)
        going = replace(entry, after=("7",), part=1)
        assert full.start(going) is going


def test_read_range_stops_at_the_parts_last_key_and_marks_the_keys_it_meets(pg, ints):
    """A range ends at its stored part's last key (compared by the database); stored keys the
    read meets are settled; every read key joins the new set."""
    with full_table(pg, ints) as full:
        keys = stored([(k,) for k in (2, 3, 5, 99, 10)] + [(k,) for k in range(11, 30)], 5)
        entry = full.start(
            lf.TableState(f"public.{ints}", (), ("id",), mode="full", complete=True, keys=keys)
        )
        entry, more = full.read_range(entry)
        assert not more
        assert entry.pending == tuple((k,) for k in range(1, 11))  # up to 10, the last key
        assert lf.decode_bits(entry.settled, 5) == [True, True, True, False, True]


def test_delete_range_deletes_only_keys_the_table_lacks_checked_by_equality(pg, ints):
    """A stored key no row matched is a delete only if the table does not have it: a key out
    of the database's order (here 35, in the first part) is found by equality and kept."""
    pg.execute(f"DELETE FROM {ints} WHERE id IN (3, 4)")
    with full_table(pg, ints) as full:
        keys = stored([(k,) for k in (1, 2, 3, 35, 4)], 5)
        entry = full.start(
            lf.TableState(f"public.{ints}", (), ("id",), mode="full", complete=True, keys=keys)
        )
        entry = replace(
            entry, phase="deleting", settled=lf.encode_bits([True, False, False, False, False])
        )
        entry, more = full.delete_range(entry)
        assert not more and entry.settled is None
        assert full.response.deletes[full.destination] == [{"id": 3}, {"id": 4}]


def test_delete_range_sends_what_fits_and_keeps_the_rest_settled_for_later(pg, ints):
    pg.execute(f"DELETE FROM {ints}")
    with full_table(pg, ints, max_response_bytes="10000") as full:
        keys = stored([(k,) for k in range(1000)], 1000)
        entry = full.start(
            lf.TableState(f"public.{ints}", (), ("id",), mode="full", complete=True, keys=keys)
        )
        entry = replace(entry, phase="deleting")
        entry, more = full.delete_range(entry)
        sent = full.response.deletes[full.destination]
        assert more and 100 < len(sent) < 1000
        assert full.response.size() <= 10_000
        bits = lf.decode_bits(entry.settled, 1000)
        assert bits == [i < len(sent) for i in range(1000)]


def test_flush_keeps_small_sets_inline_and_refuses_large_ones_without_a_key_store(pg, ints):
    with full_table(pg, ints) as full:
        entry = lf.TableState(f"public.{ints}", (), ("id",), mode="full", pending=((1,), (2,)))
        flushed = full.flush(entry)
        assert flushed.pending == () and flushed.next is not None and flushed.next.count == 2
        text = tuple((lf.secrets.token_hex(12),) for _ in range(5_000))
        with pytest.raises(lf.KeySetTooLarge, match="about 5,002 keys, too many for the state"):
            full.flush(replace(flushed, pending=text))


def test_finish_makes_this_syncs_keys_the_stored_set(pg, ints):
    with full_table(pg, ints) as full:
        entry = lf.TableState(
            f"public.{ints}",
            (),
            ("id",),
            mode="full",
            after=("40",),
            keys=stored([(1,)], 5),
            pending=((7,), (8,)),
        )
        done = full.finish(entry)
        assert done.complete and done.after is None and done.next is None
        assert done.keys is not None and lf.inline_part(done.keys, 0) == [(7,), (8,)]
