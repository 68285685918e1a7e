"""Full refresh at any size (issue 16): a table's key set lives in the state while small and in
an S3 key store beyond (SeaweedFS on loopback here), deletes are found range by range as the
re-read advances and go out beside rows, every response keeps the state bounded, and whatever
cannot work is refused up front by name. Each test's docstring names the bug it pins."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import ROOT, check_response, secrets_for, sync
from s3server import SeaweedS3

import lambda_function as lf

sys.path.insert(0, str(ROOT / "scripts"))
from warehouse import Warehouse

TABLE_BOUND = 64_000
CONNECTOR_BOUND = 1_000_000


@pytest.fixture
def schema(pg: Any, table_name: str) -> Iterator[str]:
    pg.execute(f"CREATE SCHEMA {table_name}")
    yield table_name
    pg.execute(f"DROP SCHEMA {table_name} CASCADE")


@pytest.fixture
def wh() -> Iterator[Warehouse]:
    with Warehouse() as warehouse:
        yield warehouse


@pytest.fixture
def store(s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> tuple[SeaweedS3, str]:
    """A bucket of the loopback S3 server, the function's S3 client pointed at it."""
    for name, value in s3.aws_env().items():
        monkeypatch.setenv(name, value)
    return s3, s3.new_bucket()


def full_secrets(pg: Any, tables: list[Any], **overrides: Any) -> dict[str, Any]:
    secrets = secrets_for(pg, "x", tables=json.dumps(tables), **overrides)
    for key in ("table", "cursor", "primary_key"):
        secrets.pop(key)
    return secrets


def assert_state_bounded(state: dict[str, Any]) -> None:
    assert len(json.dumps(state)) <= CONNECTOR_BOUND
    for destination, entry in state["tables"].items():
        assert len(json.dumps(entry)) <= TABLE_BOUND, destination


def sync_checked(secrets: dict[str, Any], state: dict[str, Any] | None = None, **kw: Any) -> Any:
    """Invoke as Fivetran does until hasMore is false; the state bound asserted on every
    response. Returns helpers.SyncResult."""
    also = kw.pop("on_response", None)

    def check(response: dict[str, Any]) -> None:
        assert_state_bounded(response["state"])
        if also is not None:
            also(response)

    return sync(secrets, state, on_response=check, **kw)


def store_objects(s3: SeaweedS3, bucket: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listed.get("Contents", ()))


def uuid_table(pg: Any, table: str, rows: int) -> None:
    pg.execute(f"CREATE TABLE {table} (id uuid PRIMARY KEY, v int)")
    pg.execute(
        f"INSERT INTO {table} SELECT md5(g::text)::uuid, g FROM generate_series(1, {rows}) g"
    )


def test_a_large_uuid_table_syncs_again_and_again_through_the_key_store(pg, schema, store, wh):
    """Regression (issue 16): 70,000 uuid keys put 2.94 MB of keys in every response's state;
    the second sync delivered fewer rows each invocation until every invocation failed with
    StateError, for good. Now the keys go to the key store and the state stays bounded."""
    s3, bucket = store
    uuid_table(pg, f"{schema}.u", 70_000)
    secrets = full_secrets(
        pg,
        [{"table": f"{schema}.u", "mode": "full"}],
        key_store=f"s3://{bucket}/keys/a",
        max_response_bytes="1500000",
    )
    first = sync_checked(secrets, warehouse=wh)
    assert wh.count("u") == 70_000 and first.responses >= 3
    entry = first.state["tables"]["u"]
    assert entry["keys"]["count"] == 70_000 and "gen" in entry["keys"]
    assert all(k.startswith("keys/a/") for k in store_objects(s3, bucket))
    second = sync_checked(secrets, first.state, warehouse=wh)  # unchanged source
    assert len(second.rows) == 70_000 and not second.deletes
    pg.execute(f"DELETE FROM {schema}.u WHERE v % 7 = 0")
    third = sync_checked(secrets, second.state, warehouse=wh)
    gone = {r["id"] for r in third.deletes["u"]}
    assert len(gone) == 70_000 // 7
    live = {str(r[0]) for r in pg.execute(f"SELECT id FROM {schema}.u")}
    assert {r["id"] for r in wh.rows("u")} == live
    # A sync's start removes every generation but the one its state names: after the fourth
    # sync only the third's (the stored set it began from) and its own are left. Each holds
    # its parts and at most two manifests (the one a state names, and the one before it).
    fourth = sync_checked(secrets, third.state, warehouse=wh)
    names = store_objects(s3, bucket)
    gens = {k.split("/")[3] for k in names}
    assert gens == {
        third.state["tables"]["u"]["keys"]["gen"],
        fourth.state["tables"]["u"]["keys"]["gen"],
    }
    for gen in gens:
        manifests = [k for k in names if k.split("/")[3] == gen and "/manifest-" in k]
        parts = [k for k in names if k.split("/")[3] == gen and "/part-" in k]
        assert 1 <= len(manifests) <= 2 and len(parts) >= 3, (gen, len(manifests), len(parts))


def test_a_table_too_large_for_the_state_is_refused_up_front_by_name(pg, schema):
    """Regression (issue 16): without a key store, a large full table failed mid-sync, or
    jammed later syncs. Now the setup test and the first invocation refuse it, naming the
    table, its key count and what to do; no state is written."""
    uuid_table(pg, f"{schema}.u", 20_000)
    secrets = full_secrets(pg, [{"table": f"{schema}.u", "mode": "full"}])
    pattern = rf"table {schema}\.u has about 20,000 keys, too many for the state.*key_store"
    with pytest.raises(lf.ConfigurationError, match=pattern):
        lf.lambda_handler({"state": {}, "secrets": secrets, "setup_test": True}, None)
    with pytest.raises(lf.ConfigurationError, match=pattern):
        lf.lambda_handler({"state": {}, "secrets": secrets}, None)


def test_deletes_go_out_beside_rows_as_the_re_read_advances(pg, schema, wh):
    """Regression (issue 16): deletes were materialised at once after the whole re-read (5M
    deletes took 1.6 GB) and sent in one final phase. Now each range's deletes go out as the
    re-read passes it, in the same responses as rows."""
    pg.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v text)")
    pg.execute(
        f"INSERT INTO {schema}.t SELECT g * 2, repeat('x', 40) FROM generate_series(1, 12000) g"
    )
    secrets = full_secrets(
        pg, [{"table": f"{schema}.t", "mode": "full"}], max_response_bytes="100000"
    )
    first = sync_checked(secrets, warehouse=wh)
    pg.execute(f"DELETE FROM {schema}.t WHERE id % 6 = 0")
    responses: list[dict[str, Any]] = []
    second = sync_checked(secrets, first.state, warehouse=wh, on_response=responses.append)
    assert len(second.deletes["t"]) == 4000
    mixed = [r for r in responses if r["insert"].get("t") and r.get("delete", {}).get("t")]
    assert len(mixed) >= 3, "deletes travel with rows, range by range"
    assert {r["id"] for r in wh.rows("t")} == {
        r[0] for r in pg.execute(f"SELECT id FROM {schema}.t")
    }


def test_deletes_are_exact_under_a_collation_python_does_not_share(pg, schema, wh):
    """Issue 16: stored keys and read keys are never ordered by Python. Under an ICU
    collation (case and punctuation sort unlike Python's code points) the ranges follow the
    database's order and every candidate delete is checked by equality."""
    pg.execute(f'CREATE TABLE {schema}.w (k text COLLATE "und-x-icu" PRIMARY KEY, v int)')
    pg.execute(
        f"INSERT INTO {schema}.w SELECT (ARRAY['a','B','c','-d','É','_f','g h'])[1 + g % 7]"
        " || g::text, g FROM generate_series(1, 9000) g"
    )
    secrets = full_secrets(
        pg, [{"table": f"{schema}.w", "mode": "full"}], max_response_bytes="60000"
    )
    first = sync_checked(secrets, warehouse=wh)
    pg.execute(f"DELETE FROM {schema}.w WHERE v % 5 = 0 OR k LIKE 'B%'")
    pg.execute(f"INSERT INTO {schema}.w VALUES ('b1', -1), ('zz', -2)")
    second = sync_checked(secrets, first.state, warehouse=wh)
    want = {r[0] for r in pg.execute(f"SELECT k FROM {schema}.w")}
    assert {r["k"] for r in wh.rows("w")} == want
    deleted = {r["k"] for r in second.deletes["w"]}
    assert not deleted & want and len(deleted) == 9000 - (len(want) - 2)


def test_a_tampered_key_store_object_is_an_error_not_a_wrong_delete(pg, schema, store):
    """Issue 16: the state names a generation and its manifest's digest; a changed object in
    the key store is refused before any key of it is used."""
    s3, bucket = store
    uuid_table(pg, f"{schema}.u", 30_000)
    secrets = full_secrets(
        pg,
        [{"table": f"{schema}.u", "mode": "full"}],
        key_store=f"s3://{bucket}/k",
        max_response_bytes="1000000",
    )
    state = sync_checked(secrets).state
    part = next(k for k in store_objects(s3, bucket) if "/part-" in k)
    s3.client().put_object(Bucket=bucket, Key=part, Body=lf.encode_keys([("x",)]))
    with pytest.raises(lf.StateError, match="does not match the digest the state names"):
        sync(secrets, state)


def test_a_failed_invocation_leaves_nothing_the_retry_misreads(pg, schema, store, wh):
    """Issue 16: an invocation whose response never reached Fivetran wrote key-store objects;
    the retry, with the older state, must not be misled by them."""
    _, bucket = store
    uuid_table(pg, f"{schema}.u", 30_000)
    secrets = full_secrets(
        pg,
        [{"table": f"{schema}.u", "mode": "full"}],
        key_store=f"s3://{bucket}/k",
        max_response_bytes="600000",
    )
    state = sync_checked(secrets, warehouse=wh).state
    pg.execute(f"DELETE FROM {schema}.u WHERE v % 3 = 0")
    first = lf.lambda_handler({"state": state, "secrets": secrets}, None)
    assert first["hasMore"]
    lost = lf.lambda_handler({"state": first["state"], "secrets": secrets}, None)  # lost
    assert lost["hasMore"]
    wh.apply(first)
    rest = sync_checked(secrets, first["state"], warehouse=wh)  # the retry goes on from first
    live = {str(r[0]) for r in pg.execute(f"SELECT id FROM {schema}.u")}
    assert {r["id"] for r in wh.rows("u")} == live
    assert rest.state["tables"]["u"]["keys"]["count"] == len(live)


def test_a_selected_table_missing_for_one_sync_keeps_its_key_set(pg, schema, wh):
    """Regression (issue 16): an invocation that did not list a table dropped its entry and
    key set; a row deleted meanwhile stayed live in the destination for ever. Its entry now
    stays while the configuration still matches it, and its deletes are found on its return."""
    pg.execute(f"CREATE TABLE {schema}.a (id int PRIMARY KEY)")
    pg.execute(f"INSERT INTO {schema}.a SELECT generate_series(1, 50)")
    pg.execute(f"CREATE TABLE {schema}.b (id int PRIMARY KEY)")
    pg.execute(f"INSERT INTO {schema}.b SELECT generate_series(1, 30)")
    secrets = secrets_for(pg, "x", schema=schema)
    for key in ("table", "cursor", "primary_key"):
        secrets.pop(key)
    first = sync_checked(secrets, warehouse=wh)
    pg.execute(f"ALTER TABLE {schema}.b RENAME TO b_rebuilding")
    hidden = sync_checked(secrets, first.state, warehouse=wh)
    assert "b" in hidden.state["tables"]
    pg.execute(f"DELETE FROM {schema}.b_rebuilding WHERE id > 20")
    pg.execute(f"ALTER TABLE {schema}.b_rebuilding RENAME TO b")
    back = sync_checked(secrets, hidden.state, warehouse=wh)
    assert {r["id"] for r in back.deletes["b"]} == set(range(21, 31))
    assert wh.count("b") == 20


def test_a_view_or_keyless_table_in_the_schema_does_not_block_the_others(pg, schema, wh):
    """Regression (issue 16): one view or key-less table in a schema selection made every
    invocation fail for all tables. The setup test names every such table and how to include
    or leave it out; a sync skips them with a warning."""
    pg.execute(f"CREATE TABLE {schema}.a (id int PRIMARY KEY)")
    pg.execute(f"INSERT INTO {schema}.a SELECT generate_series(1, 10)")
    pg.execute(f"CREATE TABLE {schema}.heap (x int)")
    pg.execute(f"CREATE VIEW {schema}.v AS SELECT id FROM {schema}.a")
    secrets = secrets_for(pg, "x", schema=schema)
    for key in ("table", "cursor", "primary_key"):
        secrets.pop(key)
    with pytest.raises(
        lf.ConfigurationError,
        match=rf"2 table\(s\) or view\(s\) declare no primary key: {schema}\.heap, "
        rf"{schema}\.v; list each in 'tables' with a 'primary_key'.*'exclude'",
    ):
        lf.lambda_handler({"state": {}, "secrets": secrets, "setup_test": True}, None)
    result = sync_checked(secrets, warehouse=wh)
    assert wh.count("a") == 10 and set(result.state["tables"]) == {"a"}


def test_the_sample_functions_state_with_a_full_first_table(pg, schema, wh):
    """Regression (issue 16): a state from Fivetran's sample function ({"cursor": "10"}) with a
    full first table wrote an incremental entry for it; the next invocation raised
    StateError. The seed now belongs to the first incremental table."""
    pg.execute(f"CREATE TABLE {schema}.f (id int PRIMARY KEY)")
    pg.execute(f"INSERT INTO {schema}.f SELECT generate_series(1, 30)")
    pg.execute(f"CREATE TABLE {schema}.i (id int PRIMARY KEY, updated_at int)")
    pg.execute(f"INSERT INTO {schema}.i SELECT g, g FROM generate_series(1, 30) g")
    secrets = full_secrets(
        pg,
        [
            {"table": f"{schema}.f", "mode": "full"},
            {"table": f"{schema}.i", "cursor": "updated_at"},
        ],
        limit="7",
    )
    result = sync_checked(secrets, {"cursor": "10"}, warehouse=wh)
    assert wh.count("f") == 30
    assert sorted(r["id"] for r in result.by_table["i"]) == list(range(10, 31))
    assert result.state["tables"]["f"]["mode"] == "full"


def test_limit_is_the_maximum_rows_per_response_across_tables(pg, schema):
    """Regression (issue 16): ``limit`` was applied per table per response (3 tables gave
    responses of 60 rows with limit=40); README says it is the maximum rows per response."""
    tables = []
    for name in ("a", "b", "c"):
        pg.execute(f"CREATE TABLE {schema}.{name} (id int PRIMARY KEY, updated_at int)")
        pg.execute(f"INSERT INTO {schema}.{name} SELECT g, g FROM generate_series(1, 30) g")
        tables.append({"table": f"{schema}.{name}", "cursor": "updated_at"})
    tables[2] = {"table": f"{schema}.c", "mode": "full"}
    counts: list[int] = []
    secrets = full_secrets(pg, tables, limit="40")
    result = sync(secrets, on_response=lambda r: counts.append(sum(map(len, r["insert"].values()))))
    assert len(result.rows) == 90 and max(counts) == 40


def test_hundreds_of_full_tables_cost_linear_state_work(pg, schema, monkeypatch):
    """Regression (issue 16): 300 full tables x 300 rows took 136 s for one invocation against
    2.3 s for the same rows in one table: every size estimate re-serialised the whole state.
    Entry sizes are now kept as entries change; what an invocation serialises to measure is
    a small multiple of what it returns."""
    pg.execute(
        "DO $$ BEGIN FOR i IN 1..120 LOOP EXECUTE format("
        f"'CREATE TABLE {schema}.t%s (id int PRIMARY KEY, v int)', i); EXECUTE format("
        f"'INSERT INTO {schema}.t%s SELECT g * 3, g FROM generate_series(1, 50) g', i);"
        " END LOOP; END $$"
    )
    secrets = secrets_for(pg, "x", schema=schema)
    for key in ("table", "cursor", "primary_key"):
        secrets.pop(key)
    measured = [0]
    real = lf.json_size

    def counting(value: Any) -> int:
        n = real(value)
        measured[0] += n
        return n

    monkeypatch.setattr(lf, "json_size", counting)
    response = lf.lambda_handler({"state": {}, "secrets": secrets}, None)
    size = check_response(response)
    assert not response["hasMore"] and len(response["state"]["tables"]) == 120
    assert measured[0] < 12 * size, (measured[0], size)


def test_deletes_in_an_s3_object_stay_within_s3_max_bytes(pg, schema, s3, monkeypatch, wh):
    """Regression (issue 17, item 3): deletes were sized against the bytes before the table,
    and rows counted 0 in S3 mode: objects of 1,296,930 bytes with s3_max_bytes=1,048,576."""
    for name, value in s3.aws_env().items():
        monkeypatch.setenv(name, value)
    bucket = s3.new_bucket()
    pg.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v text)")
    pg.execute(
        f"INSERT INTO {schema}.t SELECT g * 2, repeat('y', 30) FROM generate_series(1, 150000) g"
    )
    secrets = full_secrets(
        pg,
        [{"table": f"{schema}.t", "mode": "full"}],
        s3_max_bytes=str(1_048_576),
        key_store=f"s3://{bucket}/keys",
    )
    state: dict[str, Any] = {}
    for phase in ("load", "deletes"):
        for i in range(1000):
            key = f"{phase}/{i:04d}.json"
            response = lf.lambda_handler(
                {"state": state, "secrets": secrets, "bucket": bucket, "file": key}, None
            )
            body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
            assert len(body) <= 1_048_576, (phase, i, len(body))
            wh.apply({**json.loads(body), **response})
            state = response["state"]
            if not response["hasMore"]:
                break
        pg.execute(f"DELETE FROM {schema}.t WHERE id % 4 = 0")
    assert wh.count("t") == 75_000


def test_a_response_one_byte_short_of_a_row_holds_it_not(pg, table_name):
    """Regression (issue 17, item 5): one row of 20,000 bytes with max_response_bytes = the
    response's size minus one was delivered, one byte over the budget (hasMore's "false" is a
    byte longer than the "true" the size was measured with)."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int, v text)")
    pg.execute(f"INSERT INTO {table_name} VALUES (1, 1, repeat('z', 20000))")
    secrets = secrets_for(pg, table_name)
    size = check_response(lf.lambda_handler({"state": {}, "secrets": secrets}, None))
    tight = secrets_for(pg, table_name, max_response_bytes=str(size - 1))
    with pytest.raises(lf.RowTooLargeError):
        lf.lambda_handler({"state": {}, "secrets": tight}, None)
    # Sizes are an upper bound whatever the batch turns out to be: a response that ends the
    # sync drops the state's start time and its table's place in "done", counted all the same
    # (a few dozen bytes and the table's name of slack, never a byte over).
    roomy = secrets_for(pg, table_name, max_response_bytes=str(size + 64 + len(table_name)))
    assert check_response(lf.lambda_handler({"state": {}, "secrets": roomy}, None), size) == size


def test_the_setup_test_answer_stays_small_whatever_the_configuration(pg, schema):
    """Regression (issue 17, item 2): the setup test echoed the whole state and listed every
    table in insert and schema: 99,655 bytes for 1,200 tables, 74,232 bytes for one table with
    5,000 text keys in its state, past the setup-test channel's 64 KiB."""
    pg.execute(
        "DO $$ BEGIN FOR i IN 1..1200 LOOP EXECUTE format("
        f"'CREATE TABLE {schema}.table_with_a_long_name_%s (id int PRIMARY KEY)', i);"
        " END LOOP; END $$"
    )
    secrets = secrets_for(pg, "x", schema=schema)
    for key in ("table", "cursor", "primary_key"):
        secrets.pop(key)
    answer = lf.lambda_handler({"state": {}, "secrets": secrets, "setup_test": True}, None)
    assert answer == {"state": {}, "insert": {}, "hasMore": False}
    keys = sorted((f"{i:05d}-{hash(str(i)) % 10**12:012d}",) for i in range(5_000))
    inline, sizes = lf.inline_parts(keys)
    entry = lf.TableState(
        f"{schema}.x",
        (),
        ("id",),
        mode="full",
        complete=True,
        keys=lf.StoredSet(len(keys), inline, sizes),
    )
    large = lf.write_state(lf.SyncState({"x": entry}))
    assert len(json.dumps(large)) > lf.SETUP_STATE_MAX_BYTES
    answer = lf.lambda_handler({"state": large, "secrets": secrets, "setup_test": True}, None)
    assert len(json.dumps(answer)) < 1_000
