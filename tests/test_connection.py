"""Connecting: TLS by sslmode against a TLS-only server, wrong credentials, missing objects."""

from __future__ import annotations

import pytest
from helpers import load_event, record_connects, secrets_for, sync

import lambda_function as lf


@pytest.fixture(scope="module")
def tls_table(pg_tls) -> str:
    pg_tls.execute("CREATE TABLE IF NOT EXISTS tls_rows (id int PRIMARY KEY, updated_at int)")
    pg_tls.execute(
        "INSERT INTO tls_rows SELECT g, g FROM generate_series(1, 20) g ON CONFLICT DO NOTHING"
    )
    return "tls_rows"


def tls_secrets(pg_tls, tls_table, **overrides):
    return secrets_for(pg_tls, tls_table, **{"sslmode": None, **overrides})  # None: the default


def test_default_is_verify_full_against_the_system_trust_store(pg_tls, tls_table):
    """Regression: pg8000's own defaults encrypt without verifying anything."""
    assert lf.parse_config(tls_secrets(pg_tls, tls_table)).sslmode == "verify-full"
    with pytest.raises(
        lf.SourceError,
        match=r"TLS certificate of 127\.0\.0\.1:\d+ could not be verified.*sslrootcert",
    ):
        lf.lambda_handler({"state": {}, "secrets": tls_secrets(pg_tls, tls_table)}, None)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_verify_full_with_sslrootcert(pg_tls, tls_table, host):
    result = sync(tls_secrets(pg_tls, tls_table, sslrootcert=pg_tls.ca_pem, host=host))
    assert len(result.rows) == 20


def test_sslrootcert_pasted_into_a_one_line_field(pg_tls, tls_table):
    one_line = pg_tls.ca_pem.replace("\n", " ")
    assert len(sync(tls_secrets(pg_tls, tls_table, sslrootcert=one_line)).rows) == 20
    escaped = pg_tls.ca_pem.replace("\n", "\\n")
    assert len(sync(tls_secrets(pg_tls, tls_table, sslrootcert=escaped)).rows) == 20


def test_verify_full_with_the_wrong_ca_fails(pg_tls, tls_table):
    secrets = tls_secrets(pg_tls, tls_table, sslrootcert=pg_tls.other_ca_pem)
    with pytest.raises(lf.SourceError, match="could not be verified"):
        lf.lambda_handler({"state": {}, "secrets": secrets}, None)


def test_verify_ca_checks_the_chain_not_the_name(pg_tls, tls_table):
    ok = tls_secrets(pg_tls, tls_table, sslmode="verify-ca", sslrootcert=pg_tls.ca_pem)
    assert len(sync(ok).rows) == 20
    wrong = tls_secrets(pg_tls, tls_table, sslmode="verify-ca", sslrootcert=pg_tls.other_ca_pem)
    with pytest.raises(lf.SourceError, match="could not be verified"):
        lf.lambda_handler({"state": {}, "secrets": wrong}, None)


def test_require_encrypts_without_verifying(pg_tls, tls_table):
    assert len(sync(tls_secrets(pg_tls, tls_table, sslmode="require")).rows) == 20


def test_disable_against_a_tls_only_server_is_refused_clearly(pg_tls, tls_table):
    secrets = tls_secrets(pg_tls, tls_table, sslmode="disable")
    with pytest.raises(lf.SourceError, match=r"refused the connection.*no encryption.*sslmode"):
        lf.lambda_handler({"state": {}, "secrets": secrets}, None)


def test_tls_against_a_server_without_tls_is_refused_clearly(pg, table_name):
    secrets = secrets_for(pg, table_name, sslmode="require")
    with pytest.raises(lf.SourceError, match="does not accept TLS"):
        lf.lambda_handler({"state": {}, "secrets": secrets}, None)


def test_wrong_password_fails_fast_without_echoing_it(pg, table_name, monkeypatch):
    """Fast: one connection, no retry (issue 17 item 12: was a wall-clock bound)."""
    secrets = secrets_for(pg, table_name, password="Wr0ng-Pa55word!")
    opened = record_connects(monkeypatch)
    with pytest.raises(lf.SourceError, match=r"authentication failed for user 'admin'") as err:
        lf.lambda_handler({"state": {}, "secrets": secrets}, None)
    assert opened == [("127.0.0.1", pg.port)]
    assert "Wr0ng-Pa55word!" not in str(err.value) and pg.password not in str(err.value)


def test_closed_port_fails_fast(pg, table_name, monkeypatch):
    """Fast: one connection attempt, no retry (issue 17 item 12: was a wall-clock bound)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    secrets = secrets_for(pg, table_name, port=str(port))
    opened = record_connects(monkeypatch)
    with pytest.raises(lf.SourceError, match=rf"connecting: cannot talk to 127\.0\.0\.1:{port}"):
        lf.lambda_handler({"state": {}, "secrets": secrets}, None)
    assert opened == [("127.0.0.1", port)]


def test_unknown_database(pg, table_name):
    secrets = secrets_for(pg, table_name, dbname="no_such_db")
    with pytest.raises(lf.SourceError, match=r'database "no_such_db" does not exist'):
        lf.lambda_handler({"state": {}, "secrets": secrets}, None)


def test_missing_table_and_column_name_the_setting(pg, table_name):
    with pytest.raises(
        lf.ConfigurationError, match=rf"setting 'table': {table_name} was not found"
    ):
        lf.lambda_handler({"state": {}, "secrets": secrets_for(pg, table_name)}, None)
    pg.execute(f"CREATE TABLE {table_name} (id int, changed_at int)")
    with pytest.raises(
        lf.ConfigurationError,
        match=r"setting 'cursor': column updated_at is not in.*id, changed_at",
    ):
        lf.lambda_handler({"state": {}, "secrets": secrets_for(pg, table_name)}, None)
    secrets = secrets_for(pg, table_name, cursor="changed_at", primary_key=None)
    with pytest.raises(
        lf.ConfigurationError,
        match=r"'primary_key' is missing and table .* declares no primary key",
    ):
        lf.lambda_handler({"state": {}, "secrets": secrets}, None)


def test_setup_test_checks_everything_and_returns_no_rows(pg, table_name):
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int)")
    pg.execute(f"INSERT INTO {table_name} VALUES (1, 1)")
    request = load_event("setup_test.json")
    request["secrets"] = secrets_for(pg, table_name)
    state = {"version": 1, "tables": {}}
    request["state"] = state
    response = lf.lambda_handler(request, None)
    assert response == {"state": state, "insert": {}, "hasMore": False}
    request["secrets"] = secrets_for(pg, table_name, cursor="nope")
    with pytest.raises(lf.ConfigurationError, match="setting 'cursor'"):
        lf.lambda_handler(request, None)
