"""Names and state values cannot inject SQL; logs carry no secret and no row value."""

from __future__ import annotations

import json
import logging

import pytest
from helpers import SENSITIVE, secrets_for, sync

import lambda_function as lf


@pytest.fixture
def orders(pg, table_name) -> str:
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at timestamp, name text)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, timestamp '2024-01-01' + g * interval '1 s',"
        " 'customer-' || g FROM generate_series(1, 30) g"
    )
    pg.execute("CREATE TABLE IF NOT EXISTS canary (id int)")
    return table_name


def canary_exists(pg) -> bool:
    return bool(pg.execute("SELECT 1 FROM pg_class WHERE relname = 'canary'"))


@pytest.mark.parametrize(
    ("setting", "value", "error"),
    [
        ("table", "orders; DROP TABLE canary", "characters that need quoting"),
        ("table", '"orders""; DROP TABLE canary; --"', "was not found"),
        ("cursor", "updated_at) OR (1=1", "characters that need quoting"),
        ("cursor", '"updated_at"" > now() OR ""x"', "is not in table"),
        ("primary_key", "id; DROP TABLE canary", "characters that need quoting"),
        ("primary_key", '"id""; DROP TABLE canary; --"', "is not in table"),
        ("table", "public.orders/**/UNION SELECT 1", "characters that need quoting"),
    ],
)
def test_injection_through_names_is_only_ever_a_name(pg, orders, setting, value, error):
    with pytest.raises(lf.ConfigurationError, match=error):
        lf.lambda_handler(
            {"state": {}, "secrets": {**secrets_for(pg, orders), setting: value}}, None
        )
    assert canary_exists(pg)


def test_injection_through_the_state_is_only_ever_a_value(pg, orders):
    secrets = secrets_for(pg, orders, cursor="name")
    first = lf.lambda_handler({"state": {}, "secrets": secrets}, None)
    state = first["state"]
    evil = "customer-1'; DROP TABLE canary; --"
    state["tables"][orders]["after"] = [evil, "1"]
    response = lf.lambda_handler({"state": state, "secrets": secrets}, None)
    # Compared as the text it is: the rows sorting after it, nothing executed.
    assert [r["name"] for r in response["insert"][orders]][:2] == ["customer-10", "customer-11"]
    assert canary_exists(pg)


def test_a_state_value_that_does_not_cast_is_not_echoed(pg, orders):
    request = {"state": {}, "secrets": secrets_for(pg, orders, limit="5")}
    state = lf.lambda_handler(request, None)["state"]
    state["tables"][orders]["after"][0] = "not-a-timestamp'); DROP TABLE canary; --"
    with pytest.raises(lf.StateError, match="SQLSTATE 22") as err:
        lf.lambda_handler({"state": state, "secrets": secrets_for(pg, orders)}, None)
    assert "not-a-timestamp" not in str(err.value)
    assert canary_exists(pg)


def test_debug_logs_carry_counts_not_secrets_or_rows(pg, orders, caplog):
    """The autouse log check (conftest) sees this sync's rows and password; make it non-vacuous."""
    secrets = secrets_for(pg, orders, limit="7")
    result = sync(secrets)
    assert "customer-1" in SENSITIVE
    assert len(result.rows) == 30
    lines = [r.getMessage() for r in caplog.records if r.name == "redshift_lambda"]
    batches = [json.loads(line) for line in lines if '"event": "batch"' in line]
    assert len(batches) == result.responses
    assert all({"rows", "bytes", "pages"} <= set(b) for b in batches)
    assert len(lines) > len(batches)  # DEBUG lines too: the plan and every query
    # Issue 17 item 12: "in line.split()" compared whole space-separated words of a JSON
    # line, so a name inside it (quoted, next to a comma) never matched; look for it anywhere.
    names = {row["name"] for row in result.rows}
    assert len(names) == 30
    for line in lines:
        assert pg.password not in line
        assert not [name for name in names if name in line], line


def test_errors_never_carry_the_password(pg, orders, caplog):
    caplog.set_level(logging.DEBUG, logger="redshift_lambda")
    for overrides in ({"port": "1"}, {"table": "nope"}, {"user": "nobody_here"}, {"limit": "x"}):
        secrets = {**secrets_for(pg, orders), **overrides}
        with pytest.raises(lf.ConnectorError) as err:
            lf.lambda_handler({"state": {}, "secrets": secrets}, None)
        assert pg.password not in str(err.value)
        assert pg.password not in repr(lf.parse_config(secrets_for(pg, orders)))


def test_an_unexpected_error_is_reported_without_its_message(pg, orders, monkeypatch, caplog):
    """A bug's message may quote a row value (int('...')): it is replaced, its place logged."""

    def broken(*args, **kwargs):
        raise ValueError("invalid literal for int() with base 10: 'customer-7'")

    monkeypatch.setattr(lf, "read_batch", broken)
    with pytest.raises(
        lf.ConnectorError, match=r"unexpected internal error \(ValueError in broken\)"
    ) as err:
        lf.lambda_handler(
            {"state": {}, "secrets": secrets_for(pg, orders), "sync_id": "abc-1"}, None
        )
    assert "customer-7" not in str(err.value) and "customer-7" not in caplog.text
    failed = [json.loads(r.getMessage()) for r in caplog.records if r.levelname == "ERROR"]
    assert failed[-1]["event"] == "failed" and failed[-1]["sync_id"] == "abc-1"
    assert failed[-1]["error"] == "unexpected ValueError"
    assert failed[-1]["at"].startswith("test_security.py:")


def test_a_sync_id_or_setting_name_cannot_forge_log_lines(pg, orders, caplog):
    """Regression (issue 8, item 11): an unknown setting name with a newline forged a line.
    Every log line is one JSON object, so a newline in any value stays escaped."""
    secrets = {**secrets_for(pg, orders), "x\nERROR forged": "1"}
    request = {"state": {}, "secrets": secrets, "sync_id": "x\nERROR forged"}
    lf.lambda_handler(request, None)
    assert caplog.records
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message and "\r" not in message
        assert json.loads(message)["sync_id"] == "x\nERROR forged"
