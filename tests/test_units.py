"""Table-driven tests of the pure functions: names, settings, state, encoders, sizes."""

from __future__ import annotations

import json

import pytest

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
    "bytes_per_row": 10,
}


def test_state_round_trip():
    state = {"version": 2, "tables": {"t": {**STATE_ENTRY, "mode": "incremental"}}, "done": []}
    sync = lf.read_state(state)
    assert sync.tables["t"].after == ("1", None)
    assert lf.write_state(sync) == state


def test_a_v1_state_migrates_to_v2():
    sync = lf.read_state({"version": 1, "tables": {"t": STATE_ENTRY}})
    assert sync.tables["t"].mode == "incremental" and sync.done == ()
    assert lf.write_state(sync)["version"] == 2


def test_seed_style_state_resumes_from_its_cursor():
    """Users moving from Fivetran's sample function keep their position (ties re-sent)."""
    seed = lf.read_state({"cursor": "2024-01-01 00:00:00"}).seed
    assert seed is not None and seed.start == "2024-01-01 00:00:00"
    assert seed.after is None and seed.source is None


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ([(1,), (2,), (3,), (7,), (8,)], [(2,), (3,), (8,), (9,)]),
        ([(5,)], []),
        ([], [(1,)]),
        ([(1,), (2,), (3,), (4,), (5,), (6,)], [(3,)]),
        ([("a",), ("b",), ("c",)], [("b",), ("d",)]),
        ([(1, "x"), (1, "y"), (2, "x")], [(1, "y")]),
        ([(1,), (2,)], [(1,), ("two",)]),  # mixed: falls back to values
    ],
)
def test_key_sets_find_what_disappeared(first, second):
    """A full table's key set: runs for one integer column, values otherwise."""
    old, new = lf.KeySet().extended(first), lf.KeySet().extended(second)
    gone = old.minus(new)
    assert list(gone.keys()) == [k for k in first if k not in set(second)]
    assert len(old) == len(set(first))
    again = lf.KeySet.from_json(json.loads(json.dumps(old.to_json())), "keys")
    assert list(again.keys()) == list(old.keys())
    taken, rest = old.split(2)
    assert taken + list(rest.keys()) == list(old.keys()) and len(taken) == min(2, len(old))


def test_dense_integer_keys_are_a_few_runs():
    keys = lf.KeySet().extended([(k,) for k in range(1, 1_000_001) if k != 500_000])
    assert keys.to_json() == {"runs": [[1, 499_999], [500_001, 1_000_000]]}
