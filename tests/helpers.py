"""Shared test helpers: sample events, a fake Lambda context, and a Fivetran-like sync loop."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lambda_function as lf

ROOT = Path(__file__).resolve().parent.parent

# Values no log line may contain (checked after every test by conftest): the servers' passwords,
# and the text values of every row a test's syncs delivered (those long enough to be telling).
PASSWORDS: set[str] = set()
SENSITIVE: set[str] = set()
MIN_SENSITIVE_LENGTH = 6


# Hypothesis draws text from the string constants of the code under test, so a generated row
# value can be a phrase the log lines hold by design ("starting the session"): not a leak.
_MODULE_TEXT = Path(lf.__file__).read_text(encoding="utf-8")


def remember_row_values(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        for value in row.values():
            text = value if isinstance(value, str) else None
            if text is not None and len(text) >= MIN_SENSITIVE_LENGTH and text not in _MODULE_TEXT:
                SENSITIVE.add(text)


EVENTS = ROOT / "events"


def load_event(name: str) -> dict[str, Any]:
    """A sample request from events/ (the same files the README and Lambda console use)."""
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


class FakeContext:
    """The part of the Lambda context object the handler uses."""

    function_name = "redshift-lambda-test"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    def __init__(self, remaining_ms: int = 900_000) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def secrets_for(pg: Any, table: str, **overrides: Any) -> dict[str, Any]:
    """Connector secrets (all strings, as Fivetran sends them) for a table on a test server."""
    secrets: dict[str, Any] = {
        "host": pg.host,
        "port": str(pg.port),
        "dbname": pg.database,
        "user": pg.user,
        "password": pg.password,
        "table": table,
        "cursor": "updated_at",
        "primary_key": "id",
        "sslmode": "disable",
    }
    secrets.update({k: v for k, v in overrides.items() if v is not None})
    for key in [k for k, v in overrides.items() if v is None]:
        secrets.pop(key, None)
    return secrets


def check_response(response: Any, max_bytes: int = lf.DEFAULT_MAX_RESPONSE_BYTES) -> int:
    """Assert the response is what Fivetran accepts; return its serialised size."""
    assert isinstance(response, dict)
    assert {"state", "insert", "schema", "hasMore"} <= set(response)
    assert set(response) <= {"state", "insert", "delete", "softDelete", "schema", "hasMore"}
    for table in [*response["insert"], *response.get("delete", {})]:
        assert table in response["schema"], f"table {table} without its primary key"
    assert isinstance(response["hasMore"], bool)
    assert isinstance(response["state"], dict)
    text = json.dumps(response, allow_nan=False)  # strict JSON, as the Lambda runtime sends it
    size = len(text.encode("utf-8"))
    assert size <= max_bytes, f"response of {size} bytes exceeds the budget {max_bytes}"
    if response["hasMore"]:
        assert any(response["insert"].values()) or any(response.get("delete", {}).values()), (
            "hasMore with no rows"
        )
    for rows in response["insert"].values():
        remember_row_values(rows)
    return size


def stored_keys(entry: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The key set a full table's state entry keeps inline (its last finished sync's keys)."""
    stored = lf.StoredSet.from_json(entry["keys"], "keys")
    assert stored is not None and stored.gen is None, "an inline key set"
    return [k for i in range(stored.parts) for k in lf.inline_part(stored, i)]


@dataclass
class SyncResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    by_table: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    deletes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    responses: int = 0
    sizes: list[int] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    tables: list[set[str]] = field(default_factory=list)  # per response: tables with rows


def sync(
    secrets: dict[str, Any],
    state: dict[str, Any] | None = None,
    *,
    max_calls: int = 100_000,
    context: Any = None,
    warehouse: Any = None,
    on_response: Any = None,
) -> SyncResult:
    """Invoke the handler as Fivetran does until hasMore is false, collecting every row (and
    applying every response to ``warehouse``, a scripts/warehouse.py Warehouse, if given)."""
    result = SyncResult(state=dict(state or {}))
    max_bytes = int(secrets.get("max_response_bytes", lf.DEFAULT_MAX_RESPONSE_BYTES))
    for _ in range(max_calls):
        response = lf.lambda_handler({"state": result.state, "secrets": secrets}, context)
        result.sizes.append(check_response(response, max_bytes))
        result.responses += 1
        result.tables.append({t for t, rows in response["insert"].items() if rows})
        for table, rows in response["insert"].items():
            result.rows.extend(rows)
            result.by_table.setdefault(table, []).extend(rows)
        for table, keys in response.get("delete", {}).items():
            result.deletes.setdefault(table, []).extend(keys)
        if warehouse is not None:
            warehouse.apply(response)
        if on_response is not None:
            on_response(response)
        result.state = response["state"]
        if not response["hasMore"]:
            return result
    raise AssertionError(f"no end after {max_calls} calls")


def record_connects(monkeypatch: Any) -> list[tuple[str, int]]:
    """The addresses the function opens connections to, in order (a spy on
    socket.create_connection: every connection still happens for real)."""
    import socket

    opened: list[tuple[str, int]] = []
    real = socket.create_connection

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append((str(address[0]), int(address[1])))
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return opened
