"""What PostgreSQL cannot show, against the Redshift stand-in (tests/redshift_standin.py):
SHA-256 logins (authentication request 13), Redshift's types and their text forms, session
settings Redshift lacks, late-binding views, XX000 errors (issue 20)."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from helpers import SENSITIVE, secrets_for, sync
from redshift_standin import (
    BPCHAR,
    GEOGRAPHY,
    GEOMETRY,
    HLLSKETCH,
    INT4,
    INTERVAL_D2S,
    INTERVAL_Y2M,
    SUPER,
    TIMESTAMP,
    TIMETZ,
    VARBYTE,
    VARCHAR,
    Column,
    RedshiftStandIn,
    ScriptedError,
    Table,
)

import lambda_function as lf


def rows_table(count: int = 5, width: int = 8) -> Table:
    return Table(
        "public",
        "rs_rows",
        [Column("id", INT4, "integer", True), Column("name", VARCHAR, "character varying(256)")],
        [[str(i), f"n{i:0{width}d}"] for i in range(1, count + 1)],
    )


# Text output forms as Redshift sends them, each delivered as that text (a JSON string, as
# tests/test_redshift.py expects of SUPER and VARBYTE): SUPER as JSON, VARBYTE as
# hexadecimal (redshift_connector's varbytehex_recv), GEOMETRY/GEOGRAPHY as hexadecimal EWKB
# (AWS documentation's ST_GeomFromText examples: POINT(1 2)), HLLSKETCH as its sparse JSON
# (AWS documentation's HLL_CREATE_SKETCH example), intervals and timetz in the postgres style.
MYSTERY_OID = 9999  # a type the function does not know
POINT_EWKB = "0101000000000000000000F03F0000000000000040"
POINT_4326 = "0101000020E6100000000000000000F03F0000000000000040"
SKETCH = '{"version":1,"logm":15,"sparse":{"indices":[4878,9559,14523],"values":[1,2,1]}}'
WIDE_CHAR = "ab" + " " * 4094  # character(4096), blank-padded to Redshift's widest CHAR
WIDE_VARCHAR = "é" * 32767  # 65,534 bytes: Redshift's widest VARCHAR is 65,535 bytes
TYPE_COLUMNS = [
    Column("id", INT4, "integer", True),
    Column("doc", SUPER, "super"),
    Column("bytes", VARBYTE, "varbyte(64000)"),
    Column("shape", GEOMETRY, "geometry"),
    Column("place", GEOGRAPHY, "geography"),
    Column("sketch", HLLSKETCH, "hllsketch"),
    Column("at_tz", TIMETZ, "time with time zone"),
    Column("y2m", INTERVAL_Y2M, "interval year to month"),
    Column("d2s", INTERVAL_D2S, "interval day to second"),
    Column("wide_char", BPCHAR, "character(4096)"),
    Column("wide_varchar", VARCHAR, "character varying(65535)"),
    Column("mystery", MYSTERY_OID, "mystery_type"),
]
TYPE_ROWS: list[list[str | None]] = [
    [
        "1",
        '{"a":1,"b":[1.5,"x",null],"c":12345678901234567890123}',
        "616263ff",
        POINT_EWKB,
        POINT_4326,
        SKETCH,
        "04:05:06+00",
        "1 year 2 mons",
        "13 days 01:01:01.123",
        WIDE_CHAR,
        WIDE_VARCHAR,
        "opaque-value-1",
    ],
    [
        "2",
        '"plain text"',
        "",
        None,
        None,
        None,
        "23:59:59.999999-08",
        "-3 mons",
        "00:00:00",
        *[None, "", "opaque-value-2"],
    ],
    ["3", "3.14159265358979323846", None, None, None, None, None, None, None, None, None, None],
    ["4", *[None] * 11],
]
EXPECTED = [
    {
        "id": 1,
        "doc": '{"a":1,"b":[1.5,"x",null],"c":12345678901234567890123}',
        "bytes": "616263ff",
        "shape": POINT_EWKB,
        "place": POINT_4326,
        "sketch": SKETCH,
        "at_tz": "04:05:06+00",
        "y2m": "1 year 2 mons",
        "d2s": "13 days 01:01:01.123",
        "wide_char": WIDE_CHAR,
        "wide_varchar": WIDE_VARCHAR,
        "mystery": "opaque-value-1",
    },
    {
        "id": 2,
        "doc": '"plain text"',
        "bytes": "",
        "shape": None,
        "place": None,
        "sketch": None,
        "at_tz": "23:59:59.999999-08",
        "y2m": "-3 mons",
        "d2s": "00:00:00",
        "wide_char": None,
        "wide_varchar": "",
        "mystery": "opaque-value-2",
    },
    {"id": 3, "doc": "3.14159265358979323846"}
    | dict.fromkeys([c.name for c in TYPE_COLUMNS[2:]], None),
    {"id": 4} | dict.fromkeys([c.name for c in TYPE_COLUMNS[1:]], None),
]


def test_sha256_password_login():
    """Regression (issue 20): a Redshift user whose password is stored as SHA-256 gets
    authentication request 13, which pg8000 does not handle: such users could not connect."""
    with RedshiftStandIn([rows_table()], auth="sha256") as rs:
        result = sync(rs.secrets("rs_rows"))
        assert rs.logins == ["sha256"]
    assert [r["id"] for r in result.rows] == [1, 2, 3, 4, 5]


def test_md5_password_login_still_works():
    with RedshiftStandIn([rows_table()], auth="md5") as rs:
        assert len(sync(rs.secrets("rs_rows")).rows) == 5
        assert rs.logins == ["md5"]


@pytest.mark.parametrize("auth", ["sha256", "md5"])
def test_wrong_password_gives_the_clear_error_without_echoing_it(auth):
    """Regression (issue 20): a wrong SHA-256 password gets the same clear error as an MD5 one,
    and the hint no longer says SHA-256 passwords are unsupported."""
    with RedshiftStandIn([rows_table()], auth=auth) as rs:
        secrets = rs.secrets("rs_rows", password="Wr0ng-Pa55word!")
        with pytest.raises(lf.SourceError) as err:
            lf.lambda_handler({"state": {}, "secrets": secrets}, None)
        assert rs.logins == []
    message = str(err.value)
    assert "authentication failed for user 'rs_user'" in message
    assert "check 'user' and 'password' (SQLSTATE 28P01)" in message
    assert "SHA-256" not in message
    assert "Wr0ng-Pa55word!" not in message and rs.password not in message


def test_unknown_digest_algorithm_is_refused_clearly():
    """Regression (issue 20): a request 13 for an algorithm other than SHA-256 is named in
    the error, not a bare driver failure."""
    with (
        RedshiftStandIn([rows_table()], digest_algorithm=7) as rs,
        pytest.raises(lf.SourceError) as err,
    ):
        lf.lambda_handler({"state": {}, "secrets": rs.secrets("rs_rows")}, None)
    message = str(err.value)
    assert "asks for a login method the function cannot do" in message
    assert "digest algorithm 7" in message
    assert "MD5 or SHA-256" in message and rs.password not in message


def test_redshift_types_arrive_exact_and_json_safe(caplog):
    """Regression (issue 20): Redshift's own types (SUPER, VARBYTE, GEOMETRY, GEOGRAPHY,
    HLLSKETCH, TIMETZ, the interval column types, the widest CHAR and VARCHAR) each arrive
    exact and JSON-safe; an unknown type arrives as its text with a logged note, no value."""
    table = Table("public", "rs_types", TYPE_COLUMNS, TYPE_ROWS)
    with RedshiftStandIn([table]) as rs:
        result = sync(rs.secrets("rs_types"))
    assert result.rows == EXPECTED
    json.dumps(result.rows, allow_nan=False)  # strict JSON
    notes = [json.loads(r.getMessage()) for r in caplog.records if "unknown_type" in r.getMessage()]
    assert [(n["column"], n["oid"], n["type"]) for n in notes] == [
        ("mystery", MYSTERY_OID, "mystery_type")
    ]
    assert all(
        r.levelno == logging.INFO for r in caplog.records if "unknown_type" in r.getMessage()
    )
    assert not any("opaque-value" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("column", ["doc", "bytes", "shape", "place", "sketch"])
def test_redshift_types_without_an_order_cannot_be_the_cursor(column):
    table = Table("public", "rs_types", TYPE_COLUMNS, TYPE_ROWS)
    with (
        RedshiftStandIn([table]) as rs,
        pytest.raises(lf.ConfigurationError, match=rf"setting 'cursor': column {column} "),
    ):
        lf.lambda_handler({"state": {}, "secrets": rs.secrets("rs_types", cursor=column)}, None)


def test_session_starts_without_the_settings_redshift_lacks():
    """Regression (issue 20): Redshift has no bytea_output or intervalstyle (set_config answers
    42704) and reports client_encoding UNICODE: the session still starts, and every other
    setting is set and checked."""
    with RedshiftStandIn([rows_table()]) as rs:
        assert len(sync(rs.secrets("rs_rows")).rows) == 5
        statements = list(rs.statements)
    settings = [s for s in statements if "set_config($1" in s]
    assert len(settings) == 3  # the required ones, then each optional one alone (one trip)
    assert statements.index(lf.BEGIN_SQL) > statements.index(settings[-1])


def test_paging_in_chunks_across_invocations():
    """Rows stream in chunks (Execute with a row limit, PortalSuspended between them) and the
    next invocation resumes strictly after the last row, on the stand-in as on PostgreSQL."""
    with RedshiftStandIn([rows_table(count=400, width=200)]) as rs:
        result = sync(rs.secrets("rs_rows", max_response_bytes="10000"))
        pages = [s for s in rs.statements if s.startswith('SELECT "id", "name"')]
    assert [r["id"] for r in result.rows] == list(range(1, 401))
    assert result.responses > 5
    assert any("WHERE" in p for p in pages)


def test_late_binding_view_columns_come_from_pg_get_late_binding_view_cols():
    """Regression (issue 20): a late-binding view has no pg_attribute rows, so it was 'not
    found'; its columns now come from pg_get_late_binding_view_cols()."""
    view = Table(
        "analytics",
        "lbv_orders",
        [
            Column("id", INT4, "integer"),
            Column("note", VARCHAR, "character varying(20)"),
            Column("placed_at", TIMESTAMP, "timestamp without time zone"),
            Column("doc", SUPER, "super"),
        ],
        [["1", "first", "2024-01-02 03:04:05", '{"k":[1,2]}'], ["2", None, None, None]],
        primary_key=False,
        late_binding=True,
    )
    with RedshiftStandIn([view]) as rs:
        result = sync(rs.secrets("analytics.lbv_orders"))
        assert any("pg_get_late_binding_view_cols()" in s for s in rs.statements)
    assert result.rows == [
        {"id": 1, "note": "first", "placed_at": "2024-01-02T03:04:05", "doc": '{"k":[1,2]}'},
        {"id": 2, "note": None, "placed_at": None, "doc": None},
    ]
    with (
        RedshiftStandIn([view]) as rs,
        pytest.raises(lf.ConfigurationError, match="lbv_missing was not found"),
    ):
        lf.lambda_handler({"state": {}, "secrets": rs.secrets("analytics.lbv_missing")}, None)


def test_type_oid_by_name_covers_the_late_binding_types():
    assert lf.type_oid_by_name("character varying(20)") == 1043
    assert lf.type_oid_by_name("numeric(12, 2)") == lf.OID_NUMERIC
    assert lf.type_oid_by_name("timestamp without time zone") == lf.OID_TIMESTAMP
    assert lf.type_oid_by_name("interval year to month") == lf.OID_INTERVAL_Y2M
    assert lf.type_oid_by_name("SUPER") == lf.OID_SUPER
    assert lf.type_oid_by_name("something_new") == 0  # text, with the unknown-type note


def test_xx000_message_is_passed_on_without_values():
    """Regression (issue 20): Redshift reports its own failures as XX000, whose message was
    withheld entirely (undiagnosable); it is now passed on with quoted texts and numbers
    taken out, since they may be row values. The state does not advance."""
    secret = "S3cr3t-row-value"
    SENSITIVE.update({secret, "98765432"})
    error = ScriptedError(
        'FROM "public"."rs_rows"',
        "XX000",
        f"Invalid digit, Value '{secret}', Pos 0, Type: Integer, row 98765432",
        detail=f"error:  Invalid digit  raw_field_value: {secret}",
    )
    with (
        RedshiftStandIn([rows_table()], errors=[error]) as rs,
        pytest.raises(lf.SourceError) as err,
    ):
        lf.lambda_handler({"state": {}, "secrets": rs.secrets("rs_rows")}, None)
    message = str(err.value)
    assert err.value.sqlstate == "XX000"
    assert "Redshift reported an internal error: Invalid digit, Value '', Pos #" in message
    assert "Type: Integer, row #" in message
    assert secret not in message and "98765432" not in message


def test_safe_class_errors_from_redshift_pass_on_as_before():
    error = ScriptedError(
        'FROM "public"."rs_rows"', "42P01", 'relation "public.rs_rows" does not exist'
    )
    with (
        RedshiftStandIn([rows_table()], errors=[error]) as rs,
        pytest.raises(lf.SourceError, match=r'relation "public.rs_rows" does not exist'),
    ):
        lf.lambda_handler({"state": {}, "secrets": rs.secrets("rs_rows")}, None)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # What a node restart or a resize does to open sessions: the PostgreSQL-derived FATAL
        # (class 57, passed on) or a connection closed without a word.
        (
            ScriptedError(
                'FROM "public"."rs_rows"',
                "57P01",
                "terminating connection due to administrator command",
                severity="FATAL",
            ),
            r"reading rows: the database said: terminating connection due to administrator "
            r"command \(SQLSTATE 57P01\)",
        ),
        (
            ScriptedError('FROM "public"."rs_rows"', "", "", disconnect=True),
            r"reading rows: cannot talk to 127\.0\.0\.1:\d+: InterfaceError",
        ),
    ],
)
def test_a_connection_the_cluster_ends_gives_a_clear_error(error, expected):
    """Regression (issue 20): a FATAL error (57P01 when a node restarts or a resize ends the
    sessions) was reported as 'cannot talk to ...: InterfaceError', the server's message lost:
    the server sends it and then closes the connection."""
    with (
        RedshiftStandIn([rows_table()], errors=[error]) as rs,
        pytest.raises(lf.SourceError, match=expected),
    ):
        lf.lambda_handler({"state": {}, "secrets": rs.secrets("rs_rows")}, None)


def test_a_terminated_session_on_postgresql_says_why(pg, table_name):
    """The same FATAL on a real server: the function's backend is terminated mid-query."""
    pg.execute(
        f"CREATE VIEW {table_name} AS SELECT g AS id, g AS updated_at"
        " FROM generate_series(1, 3) g, (SELECT pg_catalog.pg_sleep(20)) s"
    )
    done = threading.Event()

    def terminate() -> None:
        while not done.is_set():
            rows = pg.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'redshift-lambda' AND query LIKE '%ORDER BY%'"
                " AND state = 'active'"
            )
            if rows:
                return
            done.wait(0.1)

    killer = threading.Thread(target=terminate)
    killer.start()
    try:
        secrets = secrets_for(pg, table_name)
        with pytest.raises(lf.SourceError, match=r"terminating connection.*SQLSTATE 57P01"):
            lf.lambda_handler({"state": {}, "secrets": secrets}, None)
    finally:
        done.set()
        killer.join()


def test_the_stand_in_answers_the_simple_query_protocol_too():
    """The simple query protocol (pg8000's own client; the function uses the extended one)."""
    with RedshiftStandIn([rows_table()], auth="md5") as rs:
        con = lf.RedshiftConnection(
            rs.user, host=rs.host, port=rs.port, database=rs.database, password=rs.password
        )
        try:
            assert con.parameter_statuses["server_version"] == "8.0.2"
            context = con.execute_simple("SELECT pg_catalog.current_schemas(false)")
            assert context.rows == [[["public"]]]  # pg8000 decodes name[] itself
            assert con.execute_simple(lf.BEGIN_SQL).rows is None
        finally:
            con.close()
