"""`python lambda_function.py EVENT.json`: one invocation, or the whole sync with --all."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import EVENTS, ROOT


def run_cli(pg, table: str, *args: str, **env_overrides: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDSHIFT_LAMBDA_")}
    env.update(
        {
            "REDSHIFT_LAMBDA_HOST": pg.host,
            "REDSHIFT_LAMBDA_PORT": str(pg.port),
            "REDSHIFT_LAMBDA_DBNAME": pg.database,
            "REDSHIFT_LAMBDA_USER": pg.user,
            "REDSHIFT_LAMBDA_PASSWORD": pg.password,
            "REDSHIFT_LAMBDA_TABLE": table,
            "REDSHIFT_LAMBDA_SSLMODE": "disable",
            **env_overrides,
        }
    )
    return subprocess.run(
        [sys.executable, str(ROOT / "lambda_function.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_one_invocation_prints_the_response(pg, table_name):
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL, t text)")
    pg.execute(f"INSERT INTO {table_name} SELECT g, g % 4, 'ü' FROM generate_series(1, 25) g")
    proc = run_cli(pg, table_name, str(EVENTS / "first_sync.json"), REDSHIFT_LAMBDA_LIMIT="10")
    assert proc.returncode == 0, proc.stderr
    response = json.loads(proc.stdout)
    assert len(response["insert"][table_name]) == 10 and response["hasMore"] is True
    assert response["insert"][table_name][0]["t"] == "ü"
    assert '"rows": 10' in proc.stderr  # the log line goes to stderr
    assert pg.password not in proc.stdout + proc.stderr


def test_all_keeps_invoking_while_has_more(pg, table_name):
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL)")
    pg.execute(f"INSERT INTO {table_name} SELECT g, g % 4 FROM generate_series(1, 25) g")
    event = str(EVENTS / "first_sync.json")
    proc = run_cli(pg, table_name, event, "--all", "--no-rows", REDSHIFT_LAMBDA_LIMIT="10")
    assert proc.returncode == 0, proc.stderr
    responses = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["insert"][table_name] for r in responses] == [10, 10, 5]
    assert [r["hasMore"] for r in responses] == [True, True, False]
    assert "batch 1: 10 rows" in proc.stderr and "done: 3 invocation(s), 25 rows" in proc.stderr


def test_bad_settings_exit_1_with_a_clear_message(pg, table_name):
    """Regression (issue 13, item 3): every error was printed twice (log line and error:)."""
    proc = run_cli(pg, table_name, str(EVENTS / "first_sync.json"), REDSHIFT_LAMBDA_PORT="port")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    record = json.loads(lines[0].split(" ERROR ", 1)[1])
    assert record["error"] == "ConfigurationError"
    assert record["message"] == "setting 'port' must be a whole number like \"5439\", got 'port'"
    assert proc.stdout == ""


def test_an_unreadable_request_file_is_one_error_line(tmp_path):
    path = tmp_path / "event.json"
    path.write_text("{not json", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "lambda_function.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
        "error: ConfigurationError: cannot read the request file"
    )


def test_debug_logging_shows_the_plan_and_pages_but_no_values(pg, table_name):
    """Regression (issue 13, item 2): --verbose changed nothing and LOG_LEVEL was ignored."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL, t text)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, g, 'secret-value-' || g FROM generate_series(1, 30) g"
    )
    event = str(EVENTS / "first_sync.json")
    for args, env in ((("--verbose",), {}), ((), {"LOG_LEVEL": "debug"})):
        proc = run_cli(pg, table_name, event, *args, REDSHIFT_LAMBDA_LIMIT="10", **env)
        assert proc.returncode == 0, proc.stderr
        records = [json.loads(line.split(" ", 3)[3]) for line in proc.stderr.splitlines()]
        events = [r["event"] for r in records]
        assert "plan" in events and "query" in events and events[-1] == "batch"
        plan = next(r for r in records if r["event"] == "plan")
        assert plan["order"] == ["updated_at", "id"]
        assert "secret-value" not in proc.stderr and pg.password not in proc.stderr
    quiet = run_cli(pg, table_name, event, LOG_LEVEL="WARNING")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_event_files_are_valid_requests():
    for path in sorted(EVENTS.glob("*.json")):
        request = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(request["state"], dict) and isinstance(request["secrets"], dict)
        assert all(isinstance(v, str) for v in request["secrets"].values()), path.name
