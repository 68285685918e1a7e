"""Table-driven tests of the pure functions: names, settings, state, encoders, sizes."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lambda_function as lf


@pytest.mark.parametrize(
    ("text", "separator", "expected"),
    [
        ("orders", ".", ("orders",)),
        ("Public.Orders", ".", ("public", "orders")),
        ('"Sales Data"."Order Lines"', ".", ("Sales Data", "Order Lines")),
        (' "a""b" . c ', ".", ('a"b', "c")),
        ('"x.y"', ".", ("x.y",)),
        ("updated_at", ",", ("updated_at",)),
        ("updated_at, ID", ",", ("updated_at", "id")),
        ('"Order Id",seq', ",", ("Order Id", "seq")),
        ('"a,b" , "c"', ",", ("a,b", "c")),
        ("col$1", ",", ("col$1",)),
    ],
)
def test_parse_identifiers(text, separator, expected):
    assert lf.parse_identifiers(text, separator, "setting") == expected


@pytest.mark.parametrize(
    ("text", "separator", "message"),
    [
        ("", ".", "an empty name"),
        ("a..b", ".", "an empty name"),
        ("a,", ",", "an empty name"),
        ('"abc', ".", "unbalanced double quote"),
        ('"a"b', ".", "unexpected character after a name"),
        ("a b", ",", "unexpected character after a name"),
        ("1abc", ".", "characters that need quoting"),
        ("a-b", ".", "characters that need quoting"),
        ('""', ".", "a name is empty"),
        ('"a\x00b"', ".", "NUL character"),
        ("x" * 128, ".", "128 bytes long; Redshift allows at most 127"),
        ('"' + "é" * 64 + '"', ".", "128 bytes long"),
    ],
)
def test_parse_identifiers_rejects(text, separator, message):
    with pytest.raises(lf.ConfigurationError, match=message):
        lf.parse_identifiers(text, separator, "table")


@pytest.mark.parametrize(
    ("name", "quoted"), [("a", '"a"'), ('we"ird', '"we""ird"'), ("Sales Data", '"Sales Data"')]
)
def test_quote_identifier(name, quoted):
    assert lf.quote_identifier(name) == quoted


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, 0),
        ("", 0),
        (0, 0),
        (3600, 3600),
        ("3600", 3600),
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        (" 2 h ", 7200),
    ],
)
def test_parse_duration(value, seconds):
    assert lf.parse_duration_s(value, "lookback") == seconds


@pytest.mark.parametrize("value", ["5 weeks", "-1", "1.5h", "h", True, [], "400d"])
def test_parse_duration_rejects(value):
    with pytest.raises(lf.ConfigurationError, match="setting 'lookback'"):
        lf.parse_duration_s(value, "lookback")


BASE = {"host": "h", "dbname": "d", "user": "u", "password": "p", "table": "t", "cursor": "c"}


def test_defaults():
    config = lf.parse_config(BASE)
    assert (config.port, config.sslmode, config.limit) == (5439, "verify-full", lf.DEFAULT_LIMIT)
    assert (
        config.max_response_bytes == lf.DEFAULT_MAX_RESPONSE_BYTES < lf.LAMBDA_RESPONSE_LIMIT_BYTES
    )
    assert config.tables == (lf.TableSpec(("t",), ("c",), None, "incremental", "t"),)
    secret = lf.parse_config({**BASE, "password": "S3cr3t-value"})
    assert "S3cr3t-value" not in repr(secret) and "S3cr3t-value" not in str(secret)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"port": 5440}, ("port", 5440)),  # JSON numbers are accepted too
        ({"port": " 5440 "}, ("port", 5440)),
        ({"limit": "10"}, ("limit", 10)),
        ({"database": "d"}, ("database", "d")),
        ({"dbname": None, "database": "other"}, ("database", "other")),
        ({"sslmode": "REQUIRE"}, ("sslmode", "require")),
        ({"statement_timeout_s": "2.5"}, ("statement_timeout_s", 2.5)),
        ({"lookback": "1h"}, ("lookback_s", 3600)),
        ({"destination_table": "Orders"}, ("destination", "Orders")),
        ({"table": "s.t"}, ("destination", "t")),
    ],
)
def test_settings_parse(overrides, expected):
    secrets = {k: v for k, v in {**BASE, **overrides}.items() if v is not None}
    attribute, value = expected
    config = lf.parse_config(secrets)
    holder = config.tables[0] if attribute in ("destination", "cursor", "primary_key") else config
    assert getattr(holder, attribute) == value


def test_unknown_settings_are_named_in_a_warning(caplog):
    lf.parse_config({**BASE, "primary_keys": "id"})
    assert '"event": "unknown settings ignored", "names": ["\'primary_keys\'"]' in caplog.text


def test_normalize_pem_rebuilds_lines():
    body = "QUJD" * 40
    flat = f"-----BEGIN CERTIFICATE----- {body} -----END CERTIFICATE-----"
    pem = lf.normalize_pem(flat)
    lines = pem.splitlines()
    assert lines[0] == "-----BEGIN CERTIFICATE-----" and lines[-1] == "-----END CERTIFICATE-----"
    assert "".join(lines[1:-1]) == body and max(map(len, lines[1:-1])) == 64


@pytest.mark.parametrize(
    ("oid", "server_text"),
    [
        (lf.OID_TIMESTAMP, "2024-01-02 03:04:05.123456"),
        (lf.OID_TIMESTAMP, "infinity"),
        (lf.OID_TIMESTAMPTZ, "2024-01-02 03:04:05+00"),
        (lf.OID_TIMESTAMPTZ, "2024-01-02 03:04:05.5+00"),
        (lf.OID_NUMERIC, "-12345678901234567890.000000001"),
        (lf.OID_INT8, "-9223372036854775808"),
        (lf.OID_BOOL, "t"),
        (lf.OID_BYTEA, "\\x00ff"),
        (1082, "2024-02-29"),
        (25, "any text, even 2024-01-02T03:04:05"),
    ],
)
def test_position_text_round_trips_the_servers_text(oid, server_text):
    encoded = lf.ALL_IN_ADAPTERS[oid](server_text)
    expected = "true" if oid == lf.OID_BOOL else server_text
    assert lf.position_text(oid, encoded) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"a": 'ü€😀\n"\\\x7f'},
        {"n": 1.5e300, "i": -(2**63), "b": True, "z": None},
        {"j": {"x": [1, {}]}},
    ],
)
def test_json_size_is_the_serialised_size(value):
    assert lf.json_size(value) == len(json.dumps(value).encode("utf-8"))
    assert lf.json_size(value) >= len(json.dumps(value, ensure_ascii=False).encode("utf-8"))


STATE_ENTRY = {
    "source": "public.t",
    "cursor": ["c"],
    "primary_key": ["id"],
    "after": ["1", None],
    "complete": False,
    "loaded": False,
    "bytes_per_row": 10,
}


def test_state_round_trip():
    state = {
        "version": lf.STATE_VERSION,
        "tables": {"t": {**STATE_ENTRY, "mode": "incremental"}},
        "done": [],
    }
    sync = lf.read_state(state)
    assert sync.tables["t"].after == ("1", None)
    assert lf.write_state(sync) == state


def test_a_v1_state_migrates():
    sync = lf.read_state({"version": 1, "tables": {"t": STATE_ENTRY}})
    assert sync.tables["t"].mode == "incremental" and sync.done == ()
    assert lf.write_state(sync)["version"] == lf.STATE_VERSION


def test_a_v2_full_entry_becomes_a_stored_key_set():
    """Issue 16: a version 2 full-refresh entry (its key set and pending deletes as JSON) is
    migrated: both become the stored set, and the table's sync starts over."""
    entry = {**STATE_ENTRY, "cursor": [], "after": ["4"], "mode": "full"}
    entry |= {"keys": {"runs": [[1, 3]]}, "seen": {"runs": [[1, 1]]}, "deleting": {"items": [[9]]}}
    table = lf.read_state({"version": 2, "tables": {"t": entry}, "done": []}).tables["t"]
    assert table.complete and table.after is None and table.keys is not None
    assert lf.inline_part(table.keys, 0) == [(1,), (2,), (3,), (9,)]


def test_seed_style_state_resumes_from_its_cursor():
    """Users moving from Fivetran's sample function keep their position (ties re-sent)."""
    seed = lf.read_state({"cursor": "2024-01-01 00:00:00"}).seed
    assert seed is not None and seed.start == "2024-01-01 00:00:00"
    assert seed.after is None and seed.source is None


@pytest.mark.parametrize(
    "keys",
    [
        [],
        [(5,)],
        [(1,), (2,), (3,), (7,), (8,)],
        [(None,), (None,), (-3,), (-2,), (10,), (2**70,)],  # NULLs first keep the runs
        [(1,), (None,)],  # a NULL elsewhere: the general form
        [("a",), ("ab",), ("abc",), ("b",), ("",), ('é😀\n"',)],
        [(1, "x"), (1, "y"), (2, None)],
        [(1,), ("two",), (True,), (1.5,)],  # mixed: the general form
    ],
)
def test_key_sets_encode_exactly(keys):
    """Issue 16: key parts round-trip exactly, whatever the key types."""
    assert lf.decode_keys(lf.encode_keys(keys)) == keys
    inline, sizes = lf.inline_parts(keys)
    stored = lf.StoredSet(len(keys), inline, sizes)
    again = lf.StoredSet.from_json(json.loads(json.dumps(stored.to_json())), "keys")
    assert again is not None
    assert [k for i in range(again.parts) for k in lf.inline_part(again, i)] == keys


def test_dense_and_sparse_integer_keys_are_compact():
    """Regression (issue 17 item 11): one NULL in a nullable integer key turned the integer runs
    into a full list; now NULLs are counted before the runs. Sparse keys are delta-coded."""
    dense = [(None,)] + [(k,) for k in range(1, 1_000_001) if k != 500_000]
    assert len(lf.encode_keys(dense)) < 40
    sparse = [(k,) for k in range(0, 3_000_000, 3)]  # 1M keys, none consecutive
    assert len(lf.encode_keys(sparse)) < 50_000


def test_uuid_and_text_keys_are_front_coded_and_compressed():
    """Issue 16: other keys are front-coded, then compressed."""
    import uuid

    rng = random.Random(7)
    uuids = sorted((str(uuid.UUID(int=rng.getrandbits(128))),) for _ in range(10_000))
    assert len(lf.encode_keys(uuids)) < 10_000 * 22
    skus = [(f"SKU-{g:07d}",) for g in range(100_000)]
    assert len(lf.encode_keys(skus)) < 100_000 * 1


@pytest.mark.parametrize("bad", ["", "!!!", "eJwDAAAAAAE=", lf.base64.b64encode(b"Tx").decode()])
def test_a_damaged_inline_part_is_a_state_error(bad):
    stored = lf.StoredSet(1, (bad,), (1,))
    with pytest.raises(lf.StateError, match="inline key part 0 is damaged"):
        lf.inline_part(stored, 0)


def test_bitmaps_round_trip():
    bits = [i % 3 == 0 for i in range(1001)]
    text = lf.encode_bits(bits)
    assert lf.decode_bits(text, 1001) == bits
    assert len(text) <= lf._bits_text_bound(1001)
    noisy = [random.Random(1).random() < 0.5 for _ in range(100_000)]
    assert len(lf.encode_bits(noisy)) <= lf._bits_text_bound(100_000)


@pytest.mark.parametrize(
    ("name", "destination"),
    [
        ("orders", "orders"),
        ("OrderLines", "order_lines"),
        ("order_lines", "order_lines"),
        ("Order Lines", "order_lines"),
        ("order-lines", "order_lines"),
        ("order__lines", "order_lines"),
        ("userData", "user_data"),
        ("user.data", "user_data"),
        ("HTTPServer", "httpserver"),  # a word starts at a capital after a lower-case letter
        ("Café", "cafe"),
        ("ÀÖÜ", "aou"),
        ("orders2024", "orders_2024"),
        ("2024orders", "_2024_orders"),  # a leading digit is prefixed with _
        ("_orders", "orders"),  # leading _ before a letter dropped (tables only)
        ("__Orders", "orders"),
        ("_2024", "_2024"),
        ("表", "_"),  # not romanised: not a letter Fivetran keeps
        ("x_", "x_"),
    ],
)
def test_fivetran_table_name(name, destination):
    """Issue 17 item 1: the destination name Fivetran's documented naming rules give."""
    assert lf.fivetran_table_name(name) == destination


@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=30))
def test_fivetran_table_name_agrees_with_the_sdk_tester(name):
    """The SDK's local tester implements the same rules (fivetran_connector_sdk_core's
    renaming, what `fivetran debug` applies with Fivetran naming): same name for any text."""
    from fivetran_connector_sdk_core.renaming import safe_drop_underscores

    assert lf.fivetran_table_name(name) == safe_drop_underscores(name)


@pytest.mark.parametrize(
    ("tables", "pattern"),
    [
        (
            '["\\"OrderLines\\"", "order_lines"]',
            r"^tables \"OrderLines\" and order_lines both write to destination tables "
            r"'OrderLines' and 'order_lines', which Fivetran's naming makes the same table "
            r"'order_lines'; their rows would end up in one table",
        ),
        (
            '["s.\\"Café\\"", "t.cafe"]',
            r"^tables s\.\"Café\" and t\.cafe both write to destination tables 'Café' and "
            r"'cafe', which Fivetran's naming makes the same table 'cafe'",
        ),
        (
            '["a", {"table": "b", "destination": "A"}]',
            r"^tables a and b both write to destination tables 'a' and 'A'",
        ),
        (
            '["s.\\"Order Lines\\"", "t.\\"order-lines\\""]',
            r"'order_lines'; their rows would end up in one table: give one of them another "
            r"destination \('destination' in 'tables', 'destination_table' with 'table'\)$",
        ),
    ],
)
def test_destinations_that_fivetrans_naming_merges_are_refused(tables, pattern):
    """Issue 17 item 1: _check_destinations folded case only, so "OrderLines" and order_lines
    (or names differing in spaces, punctuation or accents) were merged into one destination
    table. Refused before connecting, naming both sources and the shared name."""
    secrets = {"host": "127.0.0.1", "dbname": "d", "user": "u", "password": "p", "tables": tables}
    with pytest.raises(lf.ConfigurationError, match=pattern):
        lf.parse_config(secrets)


@pytest.mark.parametrize(
    ("value", "blank"),
    [
        (None, True),
        ("", True),
        ("  \t\n", True),
        ("x", False),
        (" x ", False),
        (0, False),
        (False, False),
        ([], False),
    ],
)
def test_one_rule_says_when_a_setting_is_not_given(value, blank):
    """Issue 17 item 11: three helpers (_text_setting, _table_spec's text, _given) each had
    their own copy of this rule; now _blank is the one, and every setting follows it."""
    assert lf._blank(value) is blank
    base = {"host": "h", "dbname": "d", "user": "u", "password": "p", "table": "t"}
    if blank:  # a blank setting is an absent one, at the top level and in 'tables' alike
        assert lf.parse_config({**base, "cursor": "c", "mode": value}).tables[0].mode == (
            "incremental"
        )
        item = {"table": "t", "cursor": value}
        tables = {k: v for k, v in base.items() if k != "table"}
        spec = lf.parse_config({**tables, "tables": json.dumps([item])}).tables[0]
        assert spec.mode == "full" and spec.cursor == ()
        assert (
            lf.parse_auth(
                {"auth": "iam", "region": value, "cluster_identifier": "c"},
                "h",
                {"AWS_REGION": "eu-west-1"},
            ).region
            == "eu-west-1"
        )


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("my-bucket/keys", r"must start with s3://"),
        ("s3://", r"the bucket '' "),
        ("s3://a/keys", r"the bucket 'a' "),
        ("s3://bucket/../keys", r"the prefix '\.\./keys' may hold only"),
        ("s3://bucket/a//b", r"the prefix 'a//b' may hold only"),
        ("s3://bucket/k e y", r"the prefix 'k e y' may hold only"),
    ],
)
def test_a_bad_key_store_names_what_is_wrong(text, pattern):
    """Issue 16: the key_store setting is checked before anything connects."""
    with pytest.raises(lf.ConfigurationError, match=rf"^setting 'key_store'.*{pattern}"):
        lf.parse_key_store(text)


def test_a_key_store_prefix_is_kept_without_its_slashes():
    store = lf.parse_key_store("s3://my-bucket/redshift-lambda/keys/")
    assert store == lf.KeyStoreConfig("my-bucket", "redshift-lambda/keys")
    assert lf.parse_key_store("s3://my-bucket") == lf.KeyStoreConfig("my-bucket", "")
