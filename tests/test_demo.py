"""The README's first command works: scripts/demo.py copies three tables of different modes
exactly into DuckDB, then their changes and deletes, directly and through S3 (``--s3``);
``--serve`` gives a server the README's local-run commands work against; and
scripts/warehouse.py applies Fivetran responses (upserts, deletes, soft deletes) to DuckDB."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from warehouse import Warehouse, WarehouseError  # noqa: E402

SCHEMA = {"orders": {"primary_key": ["id"]}}


def run_demo(*args: str) -> str:
    """scripts/demo.py with these arguments; its stdout, after checking it succeeded."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def check_three_tables(out: str, rows: int, target: Path) -> None:
    """Both syncs of all three tables proved by checksums; the incremental sync delivered
    exactly the changes; the DuckDB file holds the copy and the soft-deleted products."""
    assert len(re.findall(r"^\s+DuckDB .* MATCH$", out, re.M)) == 6, out  # 3 tables, 2 syncs
    assert "MISMATCH" not in out
    for table in ("orders", "order_lines", "products"):
        assert len(re.findall(rf"^  {table} +PostgreSQL", out, re.M)) == 2, table
    lines = rows // 8
    new = [rows + 1, rows + 2, rows + 3]
    assert re.search(
        rf"orders: \d+ rows: the changed id 1, {rows // 2 + 1}, {', '.join(map(str, new))} "
        r"\(exactly the changed rows\), and the \d+ rows at the last delivered updated_at again",
        out,
    ), out
    changed_lines = ["1/1", f"{lines}/1", *(f"{o}/{n}" for o in new for n in (1, 2))]
    assert re.search(
        rf"order_lines: \d+ rows: the changed order_id/line_no {', '.join(changed_lines)} "
        r"\(exactly the changed rows\), and the \d+ rows at the last delivered updated_at again",
        out,
    ), out
    assert re.search(
        r"products: 498 rows, the whole table re-read \(every live row once\), and 3 deleted "
        r"keys P0007, P0250, P0499 \(exactly the deleted rows; softDelete\)",
        out,
    ), out
    assert re.search(
        r"DuckDB also keeps 3 soft-deleted row\(s\), flagged _fivetran_deleted = true: "
        r"P0007, P0250, P0499 \(exactly the rows deleted from the source\)",
        out,
    ), out
    assert "password=(hidden)" in out
    assert re.search(r"its directory .* was removed", out)

    # The DuckDB file stays, holds the copy, and the printed command queries it.
    with duckdb.connect(str(target), read_only=True) as con:
        count = "SELECT count(*), count(*) FILTER (WHERE _fivetran_deleted) FROM "
        assert con.sql(count + "orders").fetchall() == [(rows + 3, 0)]
        assert con.sql(count + "products").fetchall() == [(501, 3)]
        [(line_count, _)] = con.sql(count + "order_lines").fetchall()
        types = dict(
            con.sql(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'orders'"
            ).fetchall()
        )
        [(refunded,)] = con.sql(
            "SELECT count(*) FROM orders WHERE status = 'refunded' "
            "AND note = 'refunded by the demo'"
        ).fetchall()
    assert line_count > lines
    assert types["id"] == "BIGINT" and types["amount"] == "VARCHAR", types
    assert types["_fivetran_deleted"] == "BOOLEAN", types
    assert refunded == 2
    [command] = [line.strip() for line in out.splitlines() if "import duckdb" in line]
    python, flag, code = shlex.split(command)  # run as printed, by this interpreter
    assert flag == "-c" and Path(python).name.startswith("python"), command
    query = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "kitchen" in query.stdout and "gifts" in query.stdout, query.stdout


@pytest.mark.slow
def test_demo_copies_three_tables_and_their_changes(tmp_path: Path) -> None:
    """Issue 9: orders (incremental, ties), order_lines (incremental, composite key) and
    products (full refresh, deletes) in one connector, source = destination by checksum."""
    target = tmp_path / "copy.duckdb"
    out = run_demo(
        "--rows", "3000", "--max-response-bytes", "60000", "--duckdb", str(target), "--quiet"
    )
    check_three_tables(out, 3000, target)
    assert " batch " not in out  # --quiet
    assert re.search(r"Full sync .*\n.*\n  done: \d\d+ invocation\(s\)", out), out  # 60 kB each
    assert "S3" not in out


@pytest.mark.slow
def test_demo_through_s3(tmp_path: Path) -> None:
    """Issue 10: the same demo through Fivetran's sync through S3, on a SeaweedFS server the
    demo starts on loopback: each invocation writes s3://<bucket>/<sync_id>/<n>.json, which
    the demo reads back and applies with the returned schema and softDelete."""
    target = tmp_path / "s3.duckdb"
    out = run_demo("--s3", "--rows", "6000", "--s3-max-bytes", "1048576", "--duckdb", str(target))
    check_three_tables(out, 6000, target)
    objects = re.findall(
        r"s3://fivetran-demo-sync/([0-9a-f-]{36})/(\d+)\.json +(\d+\.\d\d) MB", out
    )
    full = [o for o in objects if o[0] == objects[0][0]]
    assert [n for _, n, _ in full] == [str(i) for i in range(1, len(full) + 1)]
    assert len(full) >= 2 and all(float(mb) <= 1.1 for _, _, mb in full), objects
    counts = re.findall(r"(\d+) S3 object\(s\), [\d.]+ MB in all .*s3_max_bytes=1,048,576", out)
    assert counts == [str(len(full)), str(len(objects) - len(full))], out
    assert re.search(r"Stopped the S3 server; its directory .* was removed", out)


@pytest.mark.slow
def test_serve_then_the_readme_local_run_works() -> None:
    """./demo.sh --serve prints the REDSHIFT_LAMBDA_* exports; with them the README's
    command line runs events/first_sync.json against the served table unchanged."""
    serving = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--serve", "--rows", "500"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    try:
        assert serving.stdout is not None
        lines: list[str] = []
        for line in serving.stdout:
            lines.append(line)
            if line.startswith("Waiting"):
                break
        [export] = [line for line in lines if line.startswith("export ")]
        env = dict(os.environ)
        for pair in shlex.split(export)[1:]:
            name, value = pair.split("=", 1)
            env[name] = value
        assert env["REDSHIFT_LAMBDA_SSLMODE"] == "disable"
        result = subprocess.run(
            [sys.executable, "lambda_function.py", "events/first_sync.json", "--all", "--no-rows"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        responses = [json.loads(line) for line in result.stdout.splitlines()]
        assert sum(r["insert"]["orders"] for r in responses) == 500
        assert responses[-1]["hasMore"] is False
    finally:
        serving.send_signal(signal.SIGINT)
        rest, _ = serving.communicate(timeout=30)
    assert serving.returncode == 0
    assert re.search(r"its directory .* was removed", rest), rest


# ---------------------------------------------------------------------------------------------
# scripts/warehouse.py
# ---------------------------------------------------------------------------------------------


def response(insert=None, delete=None, soft=None, schema=SCHEMA):  # type: ignore[no-untyped-def]
    out = {"state": {}, "insert": insert or {}, "schema": schema, "hasMore": False}
    if delete is not None:
        out["delete"] = delete
    if soft is not None:
        out["softDelete"] = soft
    return out


def test_upsert_by_declared_key_last_row_wins(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    with Warehouse(path) as w:
        applied = w.apply(
            response(
                {
                    "orders": [
                        {"id": 1, "amount": "1.00", "note": None},
                        {"id": 2, "amount": "2.00", "note": "x"},
                        {"id": 1, "amount": "1.50", "note": None},
                    ]
                }
            )
        )
        assert applied.upserted == {"orders": 2}
        w.apply(response({"orders": [{"id": 2, "amount": "2.50", "note": None}]}))
        assert w.rows("orders") == [
            {"id": 1, "amount": "1.50", "note": None},
            {"id": 2, "amount": "2.50", "note": None},
        ]
        assert w.columns("orders") == {"id": "BIGINT", "amount": "VARCHAR", "note": "VARCHAR"}
    with duckdb.connect(str(path), read_only=True) as con:  # on disk, committed
        assert con.sql("SELECT count(*) FROM orders WHERE NOT _fivetran_deleted").fetchall() == [
            (2,)
        ]
        [(synced,)] = con.sql("SELECT count(_fivetran_synced) FROM orders").fetchall()
        assert synced == 2


def test_hard_delete_by_key_columns(tmp_path: Path) -> None:
    with Warehouse(tmp_path / "w.duckdb") as w:
        w.apply(response({"orders": [{"id": i, "v": str(i)} for i in range(1, 6)]}))
        applied = w.apply(response(delete={"orders": [{"id": 2}, {"id": 4}, {"id": 99}]}))
        assert applied.deleted == {"orders": 2} and applied.soft_deleted == {}
        assert [r["id"] for r in w.rows("orders")] == [1, 3, 5]
        assert w.count("orders", deleted=True) == 3  # gone, not marked


def test_soft_delete_marks_fivetran_deleted_and_an_upsert_revives(tmp_path: Path) -> None:
    with Warehouse(tmp_path / "w.duckdb") as w:
        w.apply(response({"orders": [{"id": i, "v": str(i)} for i in range(1, 4)]}))
        applied = w.apply(response(delete={"orders": [{"id": 2}]}, soft=["orders"]))
        assert applied.soft_deleted == {"orders": 1} and applied.deleted == {}
        assert [r["id"] for r in w.rows("orders")] == [1, 3]
        assert [r["id"] for r in w.rows("orders", deleted=True)] == [1, 2, 3]
        flags = w.connection.sql("SELECT id, _fivetran_deleted FROM orders ORDER BY id")
        assert flags.fetchall() == [(1, False), (2, True), (3, False)]
        # A soft delete of another table does not turn this one's deletes soft.
        w.apply(response(delete={"orders": [{"id": 3}]}, soft=["other"]))
        assert w.count("orders", deleted=True) == 2
        w.apply(response({"orders": [{"id": 2, "v": "back"}]}))
        assert w.rows("orders") == [{"id": 1, "v": "1"}, {"id": 2, "v": "back"}]


def test_inserts_then_deletes_in_one_transaction(tmp_path: Path) -> None:
    with Warehouse(tmp_path / "w.duckdb") as w:
        w.apply(response({"orders": [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]}))
        w.apply(response({"orders": [{"id": 3, "v": "c"}]}, delete={"orders": [{"id": 3}]}))
        assert [r["id"] for r in w.rows("orders")] == [1, 2]
        with pytest.raises(WarehouseError, match="primary key"):
            w.apply(response({"orders": [{"id": 4, "v": "d"}, {"id": None, "v": "e"}]}))
        assert [r["id"] for r in w.rows("orders")] == [1, 2]  # nothing of it applied


def test_column_types_follow_the_json_values(tmp_path: Path) -> None:
    rows = [
        {"id": 1, "b": True, "f": 1.5, "j": {"k": [1, "x"]}, "s": "é 🍰", "n": None, "big": 1},
        {"id": 2, "b": False, "f": 2, "j": [1], "s": "\\\t\n", "n": None, "big": 2**70},
    ]
    with Warehouse(tmp_path / "w.duckdb") as w:
        w.apply(response({"t": rows}, schema={"t": {"primary_key": ["id"]}}))
        assert w.columns("t") == {
            "id": "BIGINT",
            "b": "BOOLEAN",
            "f": "DOUBLE",
            "j": "JSON",
            "s": "VARCHAR",
            "n": "VARCHAR",
            "big": "VARCHAR",
        }
        got = w.rows("t")
        assert [r["big"] for r in got] == ["1", str(2**70)]  # exact, as text
        assert [r["s"] for r in got] == ["é 🍰", "\\\t\n"]
        assert [json.loads(r["j"]) for r in got] == [{"k": [1, "x"]}, [1]]
        assert [r["f"] for r in got] == [1.5, 2.0]
        # A later batch: the all-NULL column takes its first value's type, an integer column
        # meeting a string widens to text, a new column is added.
        w.apply(
            response(
                {"t": [{"id": 3, "n": 7, "b": "yes", "extra": 1}]},
                schema={"t": {"primary_key": ["id"]}},
            )
        )
        assert w.columns("t")["n"] == "BIGINT"
        assert w.columns("t")["b"] == "VARCHAR"
        assert w.columns("t")["extra"] == "BIGINT"
        assert [r["b"] for r in w.rows("t")] == ["true", "false", "yes"]
        assert [r["extra"] for r in w.rows("t")] == [None, None, 1]


def test_composite_key_and_no_key(tmp_path: Path) -> None:
    with Warehouse(tmp_path / "w.duckdb") as w:
        key = {"lines": {"primary_key": ["order_id", "line"]}}
        w.apply(response({"lines": [{"order_id": 1, "line": 1, "q": 1}]}, schema=key))
        w.apply(
            response(
                {"lines": [{"order_id": 1, "line": 1, "q": 5}, {"order_id": 1, "line": 2, "q": 2}]},
                schema=key,
            )
        )
        assert [r["q"] for r in w.rows("lines")] == [5, 2]
        w.apply(response(delete={"lines": [{"order_id": 1, "line": 2}]}, schema=key))
        assert w.rows("lines") == [{"order_id": 1, "line": 1, "q": 5}]
        # Without a declared key every row is appended.
        w.apply(response({"log": [{"e": "a"}, {"e": "a"}]}, schema={}))
        w.apply(response({"log": [{"e": "a"}]}, schema={}))
        assert w.count("log") == 3


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (response({"orders": [{"id": 1, "ID": 2}]}), "differ only in case"),
        (response({"orders": [{"v": 1}]}), "lack the primary key"),
        (response({"orders": [{"id": 1, "_fivetran_deleted": True}]}), "system column"),
        (response({"orders": {"id": 1}}), "must be a list of objects"),
        (response(soft="orders"), "softDelete"),
        (response(schema={"orders": {"primary_key": []}}), "primary_key"),
        (response({"orders": [{"id": 1, "v": 1 + 2j}]}), "not a JSON value"),
    ],
)
def test_bad_responses_are_refused(tmp_path: Path, bad: dict, message: str) -> None:  # type: ignore[type-arg]
    with Warehouse(tmp_path / "w.duckdb") as w, pytest.raises(WarehouseError, match=message):
        w.apply(bad)


def test_a_changed_primary_key_is_refused() -> None:
    with Warehouse() as w:
        w.apply(response({"orders": [{"id": 1, "v": "a"}]}))
        with pytest.raises(WarehouseError, match="declared"):
            w.apply(response(schema={"orders": {"primary_key": ["v"]}}))


def test_a_bad_option_fails_before_any_server_starts() -> None:
    """Regression (issue 19, item 7): ./demo.sh --max-response-bytes 100 started PostgreSQL
    and loaded the data before refusing, and printed the error twice."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--max-response-bytes", "100"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""  # no "Server: ..." line: nothing was started
    assert result.stderr == (
        "error: ConfigurationError: setting 'max_response_bytes' must be between 10000 and "
        "6000000, got 100\n"
    )
