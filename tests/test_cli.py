"""`python lambda_function.py EVENT.json`: one invocation, or the whole sync with --all."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import EVENTS, ROOT


def run_cli(
    pg, table: str, *args: str, **env_overrides: str | None
) -> subprocess.CompletedProcess[str]:
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
    env = {k: v for k, v in env.items() if v is not None}  # None: leave the variable unset
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


def test_state_files_run_the_next_incremental_sync_without_editing_json(pg, table_name, tmp_path):
    """Regression (issue 19, item 5): no way to run the next incremental sync from a saved
    state without editing the request's JSON. --save-state writes the last state, --state
    starts from it, and the same file may be both."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL)")
    pg.execute(f"INSERT INTO {table_name} SELECT g, g FROM generate_series(1, 25) g")
    event, state = str(EVENTS / "first_sync.json"), str(tmp_path / "state.json")
    proc = run_cli(pg, table_name, event, "--all", "--no-rows", "--save-state", state)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "state.json").read_text(encoding="utf-8"))
    assert saved == json.loads(proc.stdout.splitlines()[-1])["state"]
    pg.execute(f"INSERT INTO {table_name} SELECT g, g FROM generate_series(26, 30) g")
    again = run_cli(
        pg, table_name, event, "--all", "--no-rows", "--state", state, "--save-state", state
    )
    assert again.returncode == 0, again.stderr
    # the rows at the last delivered cursor value come again (id 25), then the new ones
    assert json.loads(again.stdout.splitlines()[-1])["insert"] == {table_name: 6}
    assert (
        json.loads((tmp_path / "state.json").read_text(encoding="utf-8"))["tables"][table_name][
            "after"
        ][0]
        == "30"
    )
    (tmp_path / "bad.json").write_text("[1]", encoding="utf-8")
    bad = run_cli(pg, table_name, event, "--state", str(tmp_path / "bad.json"))
    assert bad.returncode == 1
    assert "the state file" in bad.stderr and "must hold a JSON object" in bad.stderr


def test_all_prints_a_batch_line_for_the_last_call_and_no_rows_counts_deletes(
    pg, table_name, tmp_path
):
    """Regression (issue 19, item 7): --all's last invocation had no batch line, and --no-rows
    still printed every deleted key."""
    pg.execute(f"CREATE TABLE {table_name} (code text PRIMARY KEY, name text)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT 'k' || g, 'secret-name-' || g"
        " FROM generate_series(1, 12) g"
    )
    event, state = str(EVENTS / "first_sync.json"), str(tmp_path / "state.json")
    full = {
        "REDSHIFT_LAMBDA_MODE": "full",
        "REDSHIFT_LAMBDA_CURSOR": "",
        "REDSHIFT_LAMBDA_LIMIT": "5",
        "REDSHIFT_LAMBDA_PRIMARY_KEY": "",  # the table's declared key
    }
    proc = run_cli(pg, table_name, event, "--all", "--no-rows", "--save-state", state, **full)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("batch ")]
    assert lines[-1].startswith("batch 3: 2 rows, 0 deletes in ") and lines[-1].endswith(
        "sync complete"
    ), proc.stderr
    pg.execute(f"DELETE FROM {table_name} WHERE code IN ('k3', 'k7')")
    again = run_cli(pg, table_name, event, "--all", "--no-rows", "--state", state, **full)
    assert again.returncode == 0, again.stderr
    responses = [json.loads(line) for line in again.stdout.splitlines()]
    assert sum(r.get("delete", {}).get(table_name, 0) for r in responses) == 2
    for response in responses:  # counts, not the keys (the state may hold keys: not printed)
        assert "k3" not in json.dumps({k: v for k, v in response.items() if k != "state"})
    assert "secret-name" not in again.stdout + again.stderr


def test_env_and_file_settings_that_conflict_are_named_with_their_origins(pg, table_name):
    """Regression (issue 19, item 5): REDSHIFT_LAMBDA_TABLES with an event that sets 'table'
    failed with "both set" without saying which came from the file and which from the
    environment; an empty variable drops the file's setting."""
    tables = json.dumps([{"table": table_name, "cursor": "updated_at", "primary_key": "id"}])
    event = str(EVENTS / "first_sync.json")
    proc = run_cli(pg, "", event, REDSHIFT_LAMBDA_TABLES=tables, REDSHIFT_LAMBDA_TABLE=None)
    assert proc.returncode == 1
    note = proc.stderr.strip().splitlines()[-1]
    assert note.startswith("note: 'table' from ") and "first_sync.json (the file)" in note
    assert "'tables' from REDSHIFT_LAMBDA_TABLES" in note
    assert "REDSHIFT_LAMBDA_TABLE=" in note
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL)")
    pg.execute(f"INSERT INTO {table_name} SELECT g, g FROM generate_series(1, 3) g")
    fixed = run_cli(
        pg,
        "",
        event,
        "--no-rows",
        REDSHIFT_LAMBDA_TABLES=tables,
        REDSHIFT_LAMBDA_CURSOR="",
        REDSHIFT_LAMBDA_PRIMARY_KEY="",
    )
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["insert"] == {table_name: 3}


def test_misspelt_variables_and_keys_are_warned_with_a_suggestion(pg, table_name, tmp_path):
    """Regression (issue 19, item 6): a misspelt REDSHIFT_LAMBDA_* variable was silently
    ignored, and a misspelt key in the request file was warned without "did you mean"."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL)")
    request = json.loads((EVENTS / "first_sync.json").read_text(encoding="utf-8"))
    request["secrets"]["primay_key"] = request["secrets"].pop("primary_key")
    path = tmp_path / "event.json"
    path.write_text(json.dumps(request), encoding="utf-8")
    proc = run_cli(pg, table_name, str(path), REDSHIFT_LAMBDA_PASSWRD="x", REDSHIFT_LAMBDA_ZZZ="y")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line.split(" ", 3)[3]) for line in proc.stderr.splitlines()]
    env = [r for r in records if r["event"] == "unknown environment variable ignored"]
    assert {r["name"]: r.get("did_you_mean") for r in env} == {
        "'REDSHIFT_LAMBDA_PASSWRD'": "REDSHIFT_LAMBDA_PASSWORD",
        "'REDSHIFT_LAMBDA_ZZZ'": None,
    }
    keys = next(r for r in records if r["event"] == "unknown settings ignored")
    assert keys["did_you_mean"] == {"'primay_key'": "primary_key"}


def test_network_errors_point_at_the_settings_to_check(pg, table_name):
    """Regression (issue 19, item 6): a host that does not resolve (gaierror) and a refused
    port named no setting, unlike the configuration errors."""
    event = str(EVENTS / "first_sync.json")
    proc = run_cli(pg, table_name, event, REDSHIFT_LAMBDA_HOST="no-such-cluster.invalid")
    assert proc.returncode == 1
    message = json.loads(proc.stderr.strip().splitlines()[-1].split(" ERROR ", 1)[1])["message"]
    assert "gaierror" in message and "check 'host'" in message
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_cli(pg, table_name, event, REDSHIFT_LAMBDA_PORT=str(port))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    message = json.loads(proc.stderr.strip().splitlines()[-1].split(" ERROR ", 1)[1])["message"]
    assert "ConnectionRefusedError" in message and "check 'port'" in message
    assert pg.password not in proc.stderr


def test_a_host_that_never_answers_points_at_the_network_settings(pg, table_name):
    """Regression (issue 19, item 6): a connection that timed out said only "did not answer
    in time", without the settings and the security group to check."""
    import socket

    with socket.socket() as listener:  # accepts the TCP connection, then never says a word
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        proc = run_cli(
            pg,
            table_name,
            str(EVENTS / "first_sync.json"),
            REDSHIFT_LAMBDA_PORT=str(port),
            REDSHIFT_LAMBDA_CONNECT_TIMEOUT_S="1",
        )
    assert proc.returncode == 1
    message = json.loads(proc.stderr.strip().splitlines()[-1].split(" ERROR ", 1)[1])["message"]
    assert message.startswith(f"connecting: 127.0.0.1:{port} did not answer in time (1 s, ")
    assert "check 'host' and 'port'" in message and "security group" in message
