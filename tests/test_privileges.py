"""Least privilege: USAGE on the schema and SELECT on the table are all the function needs.

And it needs no more than it asks for: every query runs in a read-only transaction, so even a
superuser's sync cannot write through a view whose function tries to.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from helpers import PASSWORDS, secrets_for, sync

import lambda_function as lf


@dataclass
class Reader:
    """A login user that holds only what each test grants it, and a schema of its own tables."""

    pg: Any
    name: str
    password: str
    schema: str

    def secrets(self, table: str, **overrides: Any) -> dict[str, Any]:
        return secrets_for(
            self.pg,
            f"{self.schema}.{table}",
            user=self.name,
            password=self.password,
            **overrides,
        )


@pytest.fixture
def reader(pg: Any) -> Iterator[Reader]:
    suffix = secrets.token_hex(3)
    user = Reader(pg, f"reader_{suffix}", "pw-" + secrets.token_urlsafe(18), f"priv_{suffix}")
    PASSWORDS.add(user.password)  # the log check fails a test whose logs show it
    pg.create_user(user.name, user.password)
    pg.execute(f"CREATE SCHEMA {user.schema}")
    for table in ("orders", "hidden"):
        pg.execute(
            f"CREATE TABLE {user.schema}.{table} (id int PRIMARY KEY,"
            " updated_at timestamp NOT NULL, customer text)"
        )
        pg.execute(
            f"INSERT INTO {user.schema}.{table} SELECT g, timestamp '2024-01-01'"
            " + (g % 3) * interval '1 h', 'customer-' || g FROM generate_series(1, 25) g"
        )
    yield user
    pg.execute(f"DROP SCHEMA {user.schema} CASCADE")
    pg.execute(f"DROP OWNED BY {user.name}")
    pg.execute(f"DROP USER {user.name}")


def grant_select(pg: Any, reader: Reader, table: str, *, usage: bool = True) -> None:
    if usage:
        pg.execute(f"GRANT USAGE ON SCHEMA {reader.schema} TO {reader.name}")
    pg.execute(f"GRANT SELECT ON {reader.schema}.{table} TO {reader.name}")


@pytest.mark.parametrize("primary_key", [None, "id"], ids=["declared-key", "key-setting"])
def test_usage_and_select_are_enough_for_a_full_sync(pg, reader, primary_key):
    grant_select(pg, reader, "orders")
    secrets_ = reader.secrets("orders", primary_key=primary_key, limit="4")
    result = sync(secrets_)
    assert sorted(r["id"] for r in result.rows) == list(range(1, 26))
    setup = lf.lambda_handler({"state": {}, "secrets": secrets_, "setup_test": True}, None)
    assert setup == {"state": {}, "insert": {}, "hasMore": False}
    # The declared key is found with SELECT alone (pg_constraint, not information_schema).
    first = lf.lambda_handler({"state": {}, "secrets": secrets_}, None)
    assert first["schema"] == {"orders": {"primary_key": ["id"]}}
    # The incremental sync works with the same rights.
    pg.execute(
        f"UPDATE {reader.schema}.orders SET updated_at = timestamp '2025-01-01' WHERE id = 7"
    )
    again = [r["id"] for r in sync(secrets_, result.state).rows]
    last = result.rows[-1]["updated_at"]  # rows at the last cursor value are re-sent
    assert 7 in again
    assert set(again) - {7} == {r["id"] for r in result.rows if r["updated_at"] == last}


@pytest.mark.parametrize("setup_test", [False, True])
def test_without_select_permission_denied_names_the_table(pg, reader, setup_test):
    grant_select(pg, reader, "orders")  # USAGE on the schema, SELECT on another table only
    request = {"state": {}, "secrets": reader.secrets("hidden"), "setup_test": setup_test}
    with pytest.raises(lf.SourceError) as err:
        lf.lambda_handler(request, None)
    message = str(err.value)
    assert type(err.value) is lf.SourceError
    assert "permission denied for table hidden" in message
    assert f"SELECT on the table {reader.schema}.hidden" in message
    assert "SQLSTATE 42501" in message
    assert reader.password not in message and "customer-" not in message


def test_without_usage_on_the_schema_permission_denied_names_the_schema(pg, reader):
    grant_select(pg, reader, "orders", usage=False)
    with pytest.raises(lf.SourceError) as err:
        lf.lambda_handler({"state": {}, "secrets": reader.secrets("orders")}, None)
    message = str(err.value)
    assert f"permission denied for schema {reader.schema}" in message
    assert f"grant the user USAGE on the schema and SELECT on the table {reader.schema}.orders" in (
        message
    )


def test_the_sync_runs_read_only_even_for_a_superuser(pg, table_name):
    """A view whose function writes: the read-only transaction refuses the write (25006)."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at timestamp NOT NULL)")
    pg.execute(f"INSERT INTO {table_name} SELECT g, '2024-01-01' FROM generate_series(1, 5) g")
    pg.execute(f"CREATE TABLE {table_name}_audit (id int)")
    pg.execute(
        f"CREATE FUNCTION {table_name}_touch(x int) RETURNS int LANGUAGE plpgsql VOLATILE AS $$"
        f" BEGIN INSERT INTO public.{table_name}_audit VALUES (x); RETURN x; END $$"
    )
    pg.execute(
        f"CREATE VIEW {table_name}_v AS SELECT id, updated_at, {table_name}_touch(id) AS touched"
        f" FROM {table_name}"
    )
    secrets_ = secrets_for(pg, f"{table_name}_v")  # as admin, a superuser
    with pytest.raises(lf.SourceError) as err:
        lf.lambda_handler({"state": {}, "secrets": secrets_}, None)
    assert type(err.value) is lf.SourceError
    assert str(err.value) == (
        "reading rows: the database said: cannot execute INSERT in a read-only transaction"
        " (SQLSTATE 25006)"
    )
    assert pg.execute(f"SELECT count(*) FROM {table_name}_audit") == [[0]]
    # The same function run outside the function's session does write: the guard is the
    # transaction, not the function.
    pg.execute(f"SELECT {table_name}_touch(1)")
    assert pg.execute(f"SELECT count(*) FROM {table_name}_audit") == [[1]]
