"""Opt-in tests against a real Amazon Redshift cluster.

Set REDSHIFT_HOST, REDSHIFT_USER, REDSHIFT_PASSWORD and REDSHIFT_DBNAME (optionally REDSHIFT_PORT,
default 5439, and REDSHIFT_SCHEMA, default public) to run them; otherwise they are skipped. The
user needs CREATE on the schema. Each test creates a table with a unique name and drops it
afterwards. Connections use the default sslmode, verify-full: Redshift endpoints carry publicly
trusted certificates.

Redshift SQL differs from PostgreSQL's: generate_series does not run on compute nodes, so rows
are inserted with multi-row VALUES; SUPER comes from JSON_PARSE and VARBYTE from FROM_HEX.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pg8000.native
import pytest
from helpers import PASSWORDS, sync

import lambda_function as lf

REQUIRED = ("REDSHIFT_HOST", "REDSHIFT_USER", "REDSHIFT_PASSWORD", "REDSHIFT_DBNAME")
MISSING = [name for name in REQUIRED if not os.environ.get(name)]

pytestmark = [
    pytest.mark.redshift,
    pytest.mark.skipif(
        bool(MISSING),
        reason="opt-in tests against a real Redshift cluster: set " + ", ".join(MISSING),
    ),
]


@dataclass(frozen=True)
class Cluster:
    host: str
    port: int
    dbname: str
    user: str
    password: str
    schema: str

    def connect(self) -> pg8000.native.Connection:
        """An admin connection for setup, TLS verified against the system trust store."""
        return pg8000.native.Connection(
            self.user,
            host=self.host,
            port=self.port,
            database=self.dbname,
            password=self.password,
            ssl_context=ssl.create_default_context(),
            timeout=60,
        )

    def secrets(self, table: str, **overrides: Any) -> dict[str, Any]:
        """Connector settings as Fivetran sends them (strings), sslmode left at its default."""
        settings: dict[str, Any] = {
            "host": self.host,
            "port": str(self.port),
            "dbname": self.dbname,
            "user": self.user,
            "password": self.password,
            "table": f"{self.schema}.{table}",
            "cursor": "updated_at",
            "primary_key": "id",
            "connect_timeout_s": "30",
        }
        settings.update(overrides)
        return {k: v for k, v in settings.items() if v is not None}


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    env = os.environ
    found = Cluster(
        host=env["REDSHIFT_HOST"],
        port=int(env.get("REDSHIFT_PORT") or lf.DEFAULT_PORT),
        dbname=env["REDSHIFT_DBNAME"],
        user=env["REDSHIFT_USER"],
        password=env["REDSHIFT_PASSWORD"],
        schema=env.get("REDSHIFT_SCHEMA") or "public",
    )
    PASSWORDS.add(found.password)  # the log check fails a test whose logs show it
    return found


@pytest.fixture
def rs(cluster: Cluster) -> Iterator[tuple[pg8000.native.Connection, str]]:
    """An admin connection and a unique table name, the table dropped afterwards."""
    con = cluster.connect()
    name = f"rl_test_{secrets.token_hex(4)}"
    try:
        yield con, name
    finally:
        try:
            con.run(f"DROP TABLE IF EXISTS {cluster.schema}.{name}")
        finally:
            con.close()


def insert_values(
    con: pg8000.native.Connection, table: str, rows: list[str], chunk: int = 200
) -> None:
    """INSERT ... VALUES (...), (...): the Redshift way to load a few test rows."""
    for i in range(0, len(rows), chunk):
        con.run(f"INSERT INTO {table} VALUES {', '.join(rows[i : i + chunk])}")


def test_ties_across_batch_boundaries_with_limit_7(cluster, rs):
    con, name = rs
    table = f"{cluster.schema}.{name}"
    con.run(
        f"CREATE TABLE {table} (id int NOT NULL, updated_at timestamp NOT NULL,"
        " PRIMARY KEY (id)) SORTKEY (updated_at)"
    )
    insert_values(
        con,
        table,
        [f"({g}, timestamp '2024-01-01' + {g % 3} * interval '1 day')" for g in range(1, 101)],
    )
    result = sync(cluster.secrets(name, limit="7"))
    ids = [r["id"] for r in result.rows]
    assert sorted(ids) == list(range(1, 101)) and len(ids) == 100  # nothing lost or repeated
    assert result.responses == math.ceil(100 / 7)
    keys = [(r["updated_at"], r["id"]) for r in result.rows]
    assert keys == sorted(keys)
    # The declared (informational) key is found when primary_key is not set.
    again = sync(cluster.secrets(name, limit="50", primary_key=None))
    assert sorted(r["id"] for r in again.rows) == list(range(1, 101))


def test_exact_types(cluster, rs):
    con, name = rs
    table = f"{cluster.schema}.{name}"
    con.run(
        f"CREATE TABLE {table} (id int NOT NULL, updated_at timestamp NOT NULL,"
        " amount numeric(38,10), happened timestamptz, doc super, raw varbyte(16),"
        " note varchar(50), flag boolean, ratio float8)"
    )
    con.run(
        f"INSERT INTO {table} VALUES (1, '2024-05-06 07:08:09.123456',"
        " 12345678901234567890.0123456789, '2024-05-06 07:08:09.123456+02',"
        """ JSON_PARSE('{"a": [1, 2], "b": "x"}'), FROM_HEX('616263'), 'héllo', true, 0.1),"""
        " (2, '2024-05-06 07:08:10', NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
    )
    rows = {r["id"]: r for r in sync(cluster.secrets(name)).rows}
    first = rows[1]
    assert first["updated_at"] == "2024-05-06T07:08:09.123456"
    assert first["amount"] == "12345678901234567890.0123456789"  # a string: exact digits
    assert first["happened"] == "2024-05-06T05:08:09.123456Z"
    assert json.loads(first["doc"]) == {"a": [1, 2], "b": "x"}  # SUPER: its JSON text
    assert first["raw"].lower().removeprefix("\\x") == "616263"  # VARBYTE: its hex text
    assert first["note"] == "héllo"
    assert first["flag"] is True
    assert first["ratio"] == 0.1
    assert rows[2] == {
        "id": 2,
        "updated_at": "2024-05-06T07:08:10",
        "amount": None,
        "happened": None,
        "doc": None,
        "raw": None,
        "note": None,
        "flag": None,
        "ratio": None,
    }


def test_incremental_sync_delivers_exactly_new_and_changed_rows(cluster, rs):
    con, name = rs
    table = f"{cluster.schema}.{name}"
    con.run(
        f"CREATE TABLE {table} (id int NOT NULL, updated_at timestamp NOT NULL, v varchar(20))"
        " SORTKEY (updated_at)"
    )
    insert_values(
        con,
        table,
        [f"({g}, timestamp '2024-01-01' + {g // 10} * interval '1 s', 'a')" for g in range(1, 61)],
    )
    secrets_ = cluster.secrets(name, limit="9")
    first = sync(secrets_)
    assert len(first.rows) == 60
    # Issue 17 item 12: this expected no row again, but a new sync resumes inclusively at the
    # last delivered cursor value (2024-01-01 00:00:06, only id 60): its rows come once more.
    idle = sync(secrets_, first.state)
    assert [r["id"] for r in idle.rows] == [60] and idle.responses == 1
    con.run(f"UPDATE {table} SET v = 'b', updated_at = '2025-01-01' WHERE id IN (3, 40)")
    insert_values(con, table, ["(61, '2025-01-02', 'new')", "(62, '2025-01-01', 'tie')"])
    second = sync(secrets_, first.state)
    assert sorted(r["id"] for r in second.rows) == [3, 40, 60, 61, 62]
    assert {r["id"]: r["v"] for r in second.rows}[3] == "b"


def test_setup_test(cluster, rs):
    con, name = rs
    table = f"{cluster.schema}.{name}"
    con.run(f"CREATE TABLE {table} (id int NOT NULL, updated_at timestamp NOT NULL)")
    insert_values(con, table, ["(1, '2024-01-01')"])
    request = {"state": {}, "secrets": cluster.secrets(name), "setup_test": True}
    assert "sslmode" not in request["secrets"]  # the default: verify-full
    response = lf.lambda_handler(request, None)
    assert response == {
        "state": {},
        "insert": {name: []},
        "schema": {name: {"primary_key": ["id"]}},
        "hasMore": False,
    }
    wrong = "wrong-" + secrets.token_hex(8)
    request["secrets"] = cluster.secrets(name, password=wrong)
    with pytest.raises(lf.SourceError, match="authentication failed") as err:
        lf.lambda_handler(request, None)
    assert wrong not in str(err.value) and cluster.password not in str(err.value)


def test_varchar_keys_differing_only_in_trailing_blanks_are_all_delivered(cluster, rs):
    con, name = rs
    table = f"{cluster.schema}.{name}"
    con.run(f"CREATE TABLE {table} (k varchar(10) NOT NULL, updated_at int NOT NULL)")
    insert_values(con, table, ["('k1', 1)", "('k1 ', 1)", "('k2', 1)", "('k2  ', 1)"])
    result = sync(cluster.secrets(name, primary_key="k", limit="3"))  # boundary inside a pair
    assert sorted(r["k"] for r in result.rows) == ["k1", "k1 ", "k2", "k2  "]
