"""connector.py under the real Fivetran Connector SDK (3.0): `fivetran debug` runs it in its own
process and writes what it emits to files/warehouse.db (DuckDB), which is read back here and
compared value for value with the source. Nothing is downloaded: HOME is a temporary directory
whose SDK settings say the version checks were just done, telemetry is off (DO_NOT_TRACK=1),
and HTTP(S) proxies point at a closed port, so any request would fail at once.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pg8000.native
import pytest
from helpers import ROOT, secrets_for
from test_types import CASES

import connector
import lambda_function as lf

VENV_BIN = Path(sys.executable).parent
FIVETRAN = VENV_BIN / "fivetran"
RUN_TIMEOUT_S = 240
DEAD_PROXY = "http://127.0.0.1:9"  # discard port: nothing listens, a request fails at once


@pytest.fixture(scope="session")
def sdk_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOME whose SDK and core settings record a version check just now: none is made."""
    home = tmp_path_factory.mktemp("sdk_home")
    now = int(time.time()) + 24 * 3600  # "checked" for the next day: the tests never ask
    sdk = home / ".fivetran" / "connector_sdk"
    sdk.mkdir(parents=True)
    (sdk / "_last_version_check").write_text(str(now))
    (sdk / "_config.json").write_text(json.dumps({"is_telemetry_enabled": False}))
    core_dir = home / ".fivetran" / "connector_sdk_core"
    core_dir.mkdir(parents=True)
    (core_dir / "_config.json").write_text(
        json.dumps({"lastVersionCheck": now, "licenseNoticeShown": True})
    )
    return home


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The SDK project as scripts/sdk_project.sh lays it out."""
    out = subprocess.run(
        [str(ROOT / "scripts" / "sdk_project.sh"), str(tmp_path / "sdk")],
        check=True,
        capture_output=True,
        text=True,
    )
    path = Path(out.stdout.strip())
    assert sorted(p.name for p in path.iterdir()) == [
        "configuration.json",
        "connector.py",
        "lambda_function.py",
        "requirements.txt",
    ]
    return path


def sdk_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDSHIFT_LAMBDA_")}
    env.update(
        HOME=str(home),
        DO_NOT_TRACK="1",
        # The SDK runs pipreqs from PATH: the stand-in of scripts/sdk.sh first, as the docs
        # run it (the real one would ask PyPI about pg8000 and, offline, retry for 12 s).
        PATH=os.pathsep.join(
            [str(ROOT / "scripts" / "sdk-bin"), str(VENV_BIN), env.get("PATH", "")]
        ),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        HTTP_PROXY=DEAD_PROXY,
        HTTPS_PROXY=DEAD_PROXY,
        http_proxy=DEAD_PROXY,
        https_proxy=DEAD_PROXY,
        NO_PROXY="",
    )
    return env


def debug_command(
    project: Path, configuration: dict[str, str], naming: str = "SOURCE"
) -> list[str]:
    (project / "configuration.json").write_text(json.dumps(configuration), encoding="utf-8")
    # SOURCE naming: table and column names as in the source (FIVETRAN naming, the default,
    # would turn t_..._5d290f into t_..._5_d_290_f), so the tests can find them.
    return [str(FIVETRAN), "debug", "--configuration", "configuration.json", "--naming", naming]


@pytest.fixture
def run_sdk(project: Path, sdk_home: Path):
    """Run `fivetran debug` in the project to the end; its output (stdout and stderr)."""

    def run(
        configuration: dict[str, str],
        *,
        expect_ok: bool = True,
        naming: str = "SOURCE",
        env: dict[str, str] | None = None,
    ) -> str:
        done = subprocess.run(
            debug_command(project, configuration, naming),
            cwd=project,
            env={**sdk_env(sdk_home), **(env or {})},
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        output = done.stdout + done.stderr
        if expect_ok:
            assert done.returncode == 0, output[-4000:]
            assert "SYNC SUCCEEDED" in output, output[-4000:]
        assert configuration["password"] not in output
        return output

    return run


def upserts(output: str) -> int:
    return int(re.findall(r"Upserts\s*\|\s*(\d+)", output)[-1])


def checkpoints(output: str) -> int:
    return int(re.findall(r"Checkpoints\s*\|\s*(\d+)", output)[-1])


# ---------------------------------------------------------------------------------------------
# Comparing the destination with the source, value for value
# ---------------------------------------------------------------------------------------------


def source_rows(pg: Any, table: str) -> tuple[list[str], list[tuple[Any, ...]], list[str]]:
    """Columns, rows as the server's text (its own output of each value), and sql types."""
    con = pg.connect()
    try:
        meta = con.run(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid FROM pg_attribute a"
            " WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped"
            " ORDER BY a.attnum",
            t=table,
        )
        for _, _, oid in meta:
            con.register_in_adapter(oid, str)
        for oid in (16, 17, 20, 21, 23, 700, 701, 1082, 1114, 1184, 1700, 114, 3802):
            con.register_in_adapter(oid, str)
        rows = con.run(f"SELECT * FROM {pg8000.native.identifier(table)}")
    finally:
        con.close()
    return [m[0] for m in meta], [tuple(r) for r in rows], [m[1] for m in meta]


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def _instant(text: str) -> int:
    """A timestamptz's server text (UTC session) as microseconds since the epoch."""
    text = text.replace(" ", "T", 1)
    text = text + ":00" if re.search(r"[+-]\d\d$", text) else text
    moment = datetime.fromisoformat(text)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // _US


_US = datetime(1970, 1, 1, 0, 0, 0, 1) - datetime(1970, 1, 1)
_MAX_TS, _MIN_TS = datetime(9999, 12, 31, 23, 59, 59, 999999), datetime(1, 1, 1)


def expected(sdk_type: Any, text: str | None) -> Any:
    """The destination value for a value's server text: the test's own reading of it."""
    if text is None:
        return None
    kind = sdk_type["type"] if isinstance(sdk_type, dict) else sdk_type
    if kind == "BOOLEAN":
        return text == "t"
    if kind in ("SHORT", "INT", "LONG"):
        return int(text)
    if kind in ("FLOAT", "DOUBLE"):
        value = float(text)
        if not math.isfinite(value):
            return None
        return _float32(value) if kind == "FLOAT" else value
    if kind == "DECIMAL":
        return None if text == "NaN" else Decimal(text)
    if kind == "NAIVE_DATETIME":
        if text.endswith(" BC"):
            return None
        return {"infinity": _MAX_TS, "-infinity": _MIN_TS}.get(text) or datetime.fromisoformat(text)
    if kind == "UTC_DATETIME":
        if text.endswith(" BC"):
            return None
        if text in ("infinity", "-infinity"):
            bound = _MAX_TS if text == "infinity" else _MIN_TS
            return (bound.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // _US
        return _instant(text)
    if kind == "NAIVE_DATE":
        if text.endswith(" BC"):
            return None
        bounds = {"infinity": date(9999, 12, 31), "-infinity": date(1, 1, 1)}
        return bounds.get(text) or date.fromisoformat(text)
    if kind == "BINARY":
        return bytes.fromhex(text[2:])
    if kind == "JSON":
        return json.loads(text)
    return text


def destination_rows(project: Path, table: str, columns: list[str], types: dict[str, Any]):
    """The live rows of the warehouse table, each value as Python reads it from DuckDB."""
    select = []
    for name in columns:
        quoted = '"' + name + '"'
        if types[name] == "UTC_DATETIME":
            select.append(f"epoch_us({quoted})")  # (DuckDB's TIMESTAMPTZ to Python needs pytz)
        else:
            select.append(quoted)
    with duckdb.connect(str(project / "files" / "warehouse.db"), read_only=True) as con:
        rows = con.sql(
            f'SELECT {", ".join(select)} FROM tester."{table}" WHERE NOT _fivetran_deleted'
        ).fetchall()
        described = {r[0]: r[1] for r in con.sql(f'DESCRIBE tester."{table}"').fetchall()}
    out = []
    for row in rows:
        values = []
        for name, value in zip(columns, row, strict=True):
            if types[name] == "JSON" and value is not None:
                value = json.loads(value)
            values.append(value)
        out.append(tuple(values))
    return out, described


def assert_same(pg: Any, project: Path, configuration: dict[str, str]) -> int:
    """The destination table holds exactly the source's rows: count, then row by row."""
    settings = connector.batch_settings(configuration)[0]
    ((destination, plan),) = lf.describe_tables(settings, time_left_ms=60_000)
    columns, rows, _ = source_rows(pg, plan.name)
    types = {c.name: connector.sdk_type(c) for c in plan.columns}
    key_at = [columns.index(k) for k in plan.primary_key]
    want = {}
    for row in rows:
        values = tuple(expected(types[c], v) for c, v in zip(columns, row, strict=True))
        want[tuple(values[i] for i in key_at)] = values
    got_rows, described = destination_rows(project, destination, columns, types)
    got = {tuple(r[i] for i in key_at): r for r in got_rows}
    assert len(got_rows) == len(got), "a key is in the destination twice"
    assert len(got) == len(want)
    for key, values in want.items():
        assert got.get(key) == values, f"row {key}"
    assert {c for c in described if not c.startswith("_fivetran")} == set(columns)
    return len(got)


def sdk_configuration(pg: Any, table: str, **overrides: str) -> dict[str, str]:
    return {k: str(v) for k, v in secrets_for(pg, table, **overrides).items()}


# ---------------------------------------------------------------------------------------------
# Tests against the SDK
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def orders(pg: Any, table_name: str) -> Iterator[str]:
    """Ties in the cursor, NULL cursors, a composite key, and a value of most kinds per row."""
    pg.execute(
        f"CREATE TABLE {table_name} (region varchar(8), id int, updated_at timestamp,"
        " amount numeric(12,2), note text, payload jsonb, raw bytea, seen timestamptz,"
        " day date, flag boolean, ratio double precision, PRIMARY KEY (region, id))"
    )
    pg.execute(
        f"INSERT INTO {table_name} SELECT (ARRAY['eu', 'us', 'apac'])[1 + g % 3], g / 3,"
        " CASE WHEN g % 13 = 0 THEN NULL"
        "  ELSE timestamp '2024-01-01 00:00:00.25' + (g % 7) * interval '1 s' END,"
        " (g * 7.31)::numeric(12,2), repeat('é', g % 5) || g,"
        " jsonb_build_object('g', g, 'h', g / 2.0),"
        " decode(md5(g::text), 'hex'), timestamptz '2024-05-01 10:00:00+02' + g * interval '1 min',"
        " date '2024-01-01' + g % 40, g % 2 = 0, g / 7.0"
        " FROM generate_series(1, 1500) g"
    )
    yield table_name


def test_full_and_incremental_sync(pg, orders, run_sdk, project):
    configuration = sdk_configuration(
        pg, orders, cursor="updated_at", primary_key="region, id", batch_bytes="20000"
    )
    output = run_sdk(configuration)
    assert assert_same(pg, project, configuration) == 1500
    assert upserts(output) == 1500  # every row once: no batch repeats a tied row
    assert checkpoints(output) > 5  # many batches, each checkpointed

    # The state the SDK keeps is the core's own, the one the Lambda path ends with too.
    stored = json.loads((project / "files" / "state.json").read_text())
    entry = stored["tables"][orders]
    assert stored["version"] == lf.STATE_VERSION and entry["complete"] is True
    assert entry["cursor"] == ["updated_at"] and entry["primary_key"] == ["region", "id"]
    lambda_state: dict[str, Any] = {}
    while True:
        response = lf.run_invocation(
            {"secrets": configuration_without_sdk(configuration), "state": lambda_state},
            time_left_ms=60_000,
            max_response_bytes=20_000,
        )
        lambda_state = response["state"]
        if not response["hasMore"]:
            break
    # (bytes_per_row is an estimate learnt where batches end, which a loaded machine's clock
    # can move: everything else is the same)
    for state in (stored, lambda_state):
        for e in state["tables"].values():
            e.pop("bytes_per_row")
    assert stored == lambda_state

    # Incremental: bump some rows, add rows that tie with the last cursor value and later ones.
    pg.execute(
        f"UPDATE {orders} SET updated_at = timestamp '2024-02-01', note = 'changed'"
        " WHERE id % 50 = 1"
    )
    pg.execute(
        f"INSERT INTO {orders} SELECT 'new', g, CASE WHEN g % 2 = 0"
        " THEN timestamp '2024-01-01 00:00:06.25' ELSE timestamp '2024-03-01' END,"
        " 1.5, 'n', '[1, 2]', '\\x00', now(), 'infinity', NULL, 'NaN' FROM generate_series(1, 40) g"
    )
    output = run_sdk(configuration)
    assert assert_same(pg, project, configuration) == 1540
    # Exactly the new and changed rows, plus those at the last cursor value, which every new
    # sync sends again (inclusive resume).
    (resent,) = pg.execute(
        f"SELECT count(*) FROM {orders} WHERE updated_at >= '2024-01-01 00:00:06.25'"
    )[0]
    assert upserts(output) == resent < 1540


def configuration_without_sdk(configuration: dict[str, str]) -> dict[str, str]:
    return connector.batch_settings(configuration)[0]


def test_every_type(pg, table_name, run_sdk, project):
    """Each type of tests/test_types.py: the column's declared type and its exact value."""
    columns = ", ".join(f"c{i} {sql_type}" for i, (sql_type, _, _) in enumerate(CASES))
    values = ", ".join(literal for _, literal, _ in CASES)
    extra = "x0 numeric(3,5), x1 date, x2 timestamptz, x3 numeric(50,2), x4 timestamp"
    extra_values = (
        "0.00012, '0044-03-15 BC', 'infinity', 12345678901234567890123456789.25, '-infinity'"
    )
    pg.execute(
        f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL,"
        f" {columns}, {extra})"
    )
    pg.execute(
        f"INSERT INTO {table_name} VALUES (1, 1, {values}, {extra_values}),"
        f" (2, 2, {', '.join(['NULL'] * (len(CASES) + 5))})"
    )
    configuration = sdk_configuration(pg, table_name)
    run_sdk(configuration)
    assert assert_same(pg, project, configuration) == 2
    _, described = destination_rows(project, table_name, ["id"], {"id": "INT"})
    kinds = {f"c{i}": sql_type for i, (sql_type, _, _) in enumerate(CASES)}
    want = {
        "smallint": "SMALLINT",
        "integer": "INTEGER",
        "bigint": "BIGINT",
        "numeric(38,10)": "DECIMAL(38,10)",
        "numeric(5,2)": "DECIMAL(5,2)",
        "numeric": "VARCHAR",
        "real": "FLOAT",
        "double precision": "DOUBLE",
        "boolean": "BOOLEAN",
        "date": "DATE",
        "timestamp": "TIMESTAMP",
        "timestamp(3)": "TIMESTAMP",
        "timestamptz": "TIMESTAMP WITH TIME ZONE",
        "bytea": "BLOB",
        "json": "JSON",
        "jsonb": "JSON",
    }
    for column, sql_type in kinds.items():
        assert described[column] == want.get(sql_type, "VARCHAR"), (column, sql_type)
    assert described["x0"] == "VARCHAR"  # numeric(3,5): no DECIMAL holds it; exact text
    assert described["x3"] == "VARCHAR"  # wider than DECIMAL(38)


def test_resume_after_kill(pg, table_name, project, sdk_home, run_sdk):
    """Killed after a few checkpoints, the next run resumes there: every row exactly once."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int, body text)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, CASE WHEN g % 17 = 0 THEN NULL ELSE g / 10 END,"
        " repeat('x', 40 + g % 30) FROM generate_series(1, 6000) g"
    )
    configuration = sdk_configuration(pg, table_name, batch_bytes="10000")
    process = subprocess.Popen(
        debug_command(project, configuration),
        cwd=project,
        env=sdk_env(sdk_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    seen = 0
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if "checkpoint recorded" in line:
                seen += 1
                if seen == 4:
                    os.killpg(process.pid, signal.SIGKILL)
                    break
    finally:
        process.stdout.close()
        process.wait(timeout=60)
    assert seen == 4 and process.returncode == -signal.SIGKILL
    state = json.loads((project / "files" / "state.json").read_text())
    assert state["tables"][table_name]["complete"] is False  # mid-sync, at a batch boundary
    with duckdb.connect(str(project / "files" / "warehouse.db"), read_only=True) as con:
        (before,) = con.sql(f'SELECT count(*) FROM tester."{table_name}"').fetchone() or (0,)
    assert 0 < before < 6000

    output = run_sdk(configuration)  # resumes from files/state.json
    assert assert_same(pg, project, configuration) == 6000
    assert upserts(output) <= 6000 - before + 200  # it went on from the checkpoint


def test_bad_setting_fails_the_sync_with_its_message(pg, table_name, run_sdk):
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int)")
    output = run_sdk(sdk_configuration(pg, table_name, cursor="nope"), expect_ok=False)
    assert "SYNC SUCCEEDED" not in output
    assert "setting 'cursor': column nope is not in table" in output


def test_tables_that_fivetrans_naming_merges_fail_before_any_row(pg, table_name, run_sdk, project):
    """Issue 17 item 1: with Fivetran naming (the tester's default), "OrderLines" and
    order_lines were both written to table order_lines: 10 source rows became a table of 5.
    The sync now fails before any row, naming both sources and the shared destination name."""
    camel, snake = f'"{table_name}OrderLines"', f"{table_name}_order_lines"
    for name in (camel, snake):
        pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, updated_at int NOT NULL)")
        pg.execute(f"INSERT INTO {name} SELECT g, g FROM generate_series(1, 5) g")
    configuration = {
        k: v
        for k, v in sdk_configuration(pg, "x").items()
        if k not in ("table", "cursor", "primary_key")
    }
    configuration["tables"] = json.dumps(
        [{"table": camel, "cursor": "updated_at"}, {"table": snake, "cursor": "updated_at"}]
    )
    output = run_sdk(configuration, expect_ok=False, naming="FIVETRAN")
    assert "SYNC SUCCEEDED" not in output
    shared = lf.fivetran_table_name(f"{table_name}OrderLines")
    assert shared == lf.fivetran_table_name(f"{table_name}_order_lines")
    assert (
        f"tables {camel} and {snake} both write to destination tables '{table_name}OrderLines' "
        f"and '{table_name}_order_lines', which Fivetran's naming makes the same table "
        f"'{shared}'"
    ) in output, output[-4000:]
    warehouse = project / "files" / "warehouse.db"
    if warehouse.exists():  # nothing was written: no table holds a row
        with duckdb.connect(str(warehouse), read_only=True) as con:
            tables = con.sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'tester'"
            ).fetchall()
            for (name,) in tables:
                assert con.sql(f'SELECT count(*) FROM tester."{name}"').fetchall() == [(0,)]
    # Renamed, the same two tables arrive whole, 5 rows each, under Fivetran naming.
    configuration["tables"] = json.dumps(
        [
            {"table": camel, "cursor": "updated_at", "destination": "camel_lines"},
            {"table": snake, "cursor": "updated_at"},
        ]
    )
    run_sdk(configuration, naming="FIVETRAN")
    with duckdb.connect(str(warehouse), read_only=True) as con:
        for name in ("camel_lines", shared):
            assert con.sql(f'SELECT count(*) FROM tester."{name}"').fetchall() == [(5,)]


# ---------------------------------------------------------------------------------------------
# Pure parts of connector.py
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("oid", "sql_type", "want"),
    [
        (16, "boolean", "BOOLEAN"),
        (21, "smallint", "SHORT"),
        (23, "integer", "INT"),
        (20, "bigint", "LONG"),
        (700, "real", "FLOAT"),
        (701, "double precision", "DOUBLE"),
        (1700, "numeric(12,2)", {"type": "DECIMAL", "precision": 12, "scale": 2}),
        (1700, "numeric(38,0)", {"type": "DECIMAL", "precision": 38, "scale": 0}),
        (1700, "numeric", "STRING"),
        (1700, "numeric(39,2)", "STRING"),
        (1700, "numeric(3,5)", "STRING"),
        (1700, "numeric(3,-1)", "STRING"),
        (1114, "timestamp without time zone", "NAIVE_DATETIME"),
        (1184, "timestamp with time zone", "UTC_DATETIME"),
        (1082, "date", "NAIVE_DATE"),
        (17, "bytea", "BINARY"),
        (114, "json", "JSON"),
        (3802, "jsonb", "JSON"),
        (1083, "time without time zone", "STRING"),
        (2950, "uuid", "STRING"),
        (1043, "character varying(20)", "STRING"),
        (99999, "super", "STRING"),
    ],
)
def test_sdk_type(oid, sql_type, want):
    assert connector.sdk_type(lf.Column("c", oid, sql_type, True)) == want


@pytest.mark.parametrize("value", ["", "  "])
def test_batch_bytes_default(value):
    assert connector.batch_settings({"batch_bytes": value, "host": "h"}) == (
        {"host": "h"},
        connector.DEFAULT_BATCH_BYTES,
    )


@pytest.mark.parametrize("value", ["9999", "x", "1e6", "500000001"])
def test_batch_bytes_refused(value):
    with pytest.raises(lf.ConfigurationError, match="setting 'batch_bytes'"):
        connector.batch_settings({"batch_bytes": value})


def _plan(*columns: tuple[str, int, str]) -> list[tuple[str, lf.TablePlan]]:
    cols = tuple(lf.Column(n, oid, t, True) for n, oid, t in columns)
    return [("t", lf.TablePlan("public", "t", cols, ("c",), ("k",)))]


def test_formatter_converts_what_the_sdk_would_refuse():
    formatter = connector.Formatter(
        _plan(
            ("k", 17, "bytea"),
            ("ts", 1114, "timestamp"),
            ("tz", 1184, "timestamptz"),
            ("d", 1082, "date"),
            ("n", 1700, "numeric(5,2)"),
            ("s", 25, "text"),
        )
    )
    row = formatter(
        "t",
        {
            "k": "AP8Q",
            "ts": "infinity",
            "tz": "1999-01-01 10:00:00 BC",
            "d": "-infinity",
            "n": "NaN",
            "s": "infinity",
        },
    )
    assert row == {
        "k": b"\x00\xff\x10",
        "ts": "9999-12-31T23:59:59.999999",
        "tz": None,
        "d": "0001-01-01",
        "n": None,
        "s": "infinity",
    }
    assert formatter.dropped == {("t", "tz"): 1, ("t", "n"): 1}


def test_several_tables_and_full_refresh_deletes(pg, table_name, run_sdk, project):
    """Issue 11 with issue 9's core: one connector.py copies an incremental and a
    full-refresh table; rows gone from the full table appear as the SDK records deletes
    (_fivetran_deleted = true), and a key inserted again comes back live. (Issue 17 item 12:
    this replaces a test of connector.emit with a fake `op`, marked TODO until this one
    existed.)"""
    pg.execute(f"CREATE TABLE {table_name}_inc (id int PRIMARY KEY, updated_at int NOT NULL)")
    pg.execute(f"INSERT INTO {table_name}_inc SELECT g, g % 5 FROM generate_series(1, 300) g")
    pg.execute(f"CREATE TABLE {table_name}_full (code text PRIMARY KEY, n int)")
    pg.execute(f"INSERT INTO {table_name}_full SELECT 'c' || g, g FROM generate_series(1, 200) g")
    # A bytea key: a delete's key goes through the same formatting as the rows (base64 to
    # bytes), or the SDK's delete would miss the row.
    pg.execute(f"CREATE TABLE {table_name}_bin (k bytea PRIMARY KEY, n int)")
    pg.execute(f"INSERT INTO {table_name}_bin SELECT int4send(g), g FROM generate_series(1, 9) g")
    tables = [
        {"table": f"{table_name}_inc", "cursor": "updated_at", "destination": "inc"},
        f"{table_name}_full",
        {"table": f"{table_name}_bin", "destination": "bin"},
    ]
    configuration = {
        k: v
        for k, v in sdk_configuration(pg, "x", batch_bytes="20000").items()
        if k not in ("table", "cursor", "primary_key")
    }
    configuration["tables"] = json.dumps(tables)
    run_sdk(configuration)
    pg.execute(f"DELETE FROM {table_name}_full WHERE n % 3 = 0")
    pg.execute(f"DELETE FROM {table_name}_bin WHERE n IN (2, 7)")
    pg.execute(f"INSERT INTO {table_name}_inc VALUES (1000, 9)")
    run_sdk(configuration)
    pg.execute(f"INSERT INTO {table_name}_full VALUES ('c3', -3)")  # deleted, then back
    run_sdk(configuration)
    with duckdb.connect(str(project / "files" / "warehouse.db"), read_only=True) as con:
        inc = con.sql('SELECT count(*) FROM tester."inc" WHERE NOT _fivetran_deleted').fetchall()
        full = dict(
            con.sql(f'SELECT code, _fivetran_deleted FROM tester."{table_name}_full"').fetchall()
        )
        binary = con.sql('SELECT n, _fivetran_deleted FROM tester."bin" ORDER BY n').fetchall()
    assert binary == [(n, n in (2, 7)) for n in range(1, 10)]
    assert inc == [(301,)]
    live = {r[0] for r in pg.execute(f"SELECT code FROM {table_name}_full")}
    assert {c for c, deleted in full.items() if not deleted} == live
    assert {c for c, deleted in full.items() if deleted} == {
        f"c{n}" for n in range(1, 201) if n % 3 == 0
    } - {"c3"}


def test_a_large_full_table_keeps_the_sdk_state_bounded_through_the_key_store(
    pg, table_name, run_sdk, project, s3
):
    """Issue 16, item 8: the SDK path gets the same guarantees. A full table of 30,000 uuid
    keys (far more than the state may hold) keeps its key set in the S3 key store (SeaweedFS
    on loopback); the state the SDK checkpoints stays small, and rows gone from the source are
    marked deleted by op.delete, range by range, with no truncate."""
    pg.execute(f"CREATE TABLE {table_name} (id uuid PRIMARY KEY, n int)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT md5(g::text)::uuid, g FROM generate_series(1, 30000) g"
    )
    bucket = s3.new_bucket()
    # the SDK's web requests go to a dead proxy; the loopback S3 server is reached directly
    env = {**s3.aws_env(), "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    configuration = sdk_configuration(
        pg,
        table_name,
        cursor=None,
        primary_key=None,
        mode="full",
        batch_bytes="400000",
        key_store=f"s3://{bucket}/sdk",
    )
    run_sdk(configuration, env=env)
    state = (project / "files" / "state.json").read_text()
    assert len(state) < 4_000 and '"gen"' in state
    pg.execute(f"DELETE FROM {table_name} WHERE n % 5 = 0")
    run_sdk(configuration, env=env)
    assert len((project / "files" / "state.json").read_text()) < 4_000
    with duckdb.connect(str(project / "files" / "warehouse.db"), read_only=True) as con:
        deleted = con.sql(
            f'SELECT count(*) FILTER (WHERE _fivetran_deleted), count(*) FROM tester."{table_name}"'
        ).fetchall()
    assert deleted == [(6_000, 30_000)]
