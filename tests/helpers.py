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


def remember_row_values(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        for value in row.values():
            text = value if isinstance(value, str) else None
            if text is not None and len(text) >= MIN_SENSITIVE_LENGTH:
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
    assert set(response) == {"state", "insert", "schema", "hasMore"}
    assert isinstance(response["hasMore"], bool)
    assert isinstance(response["state"], dict)
    text = json.dumps(response, allow_nan=False)  # strict JSON, as the Lambda runtime sends it
    size = len(text.encode("utf-8"))
    assert size <= max_bytes, f"response of {size} bytes exceeds the budget {max_bytes}"
    if response["hasMore"]:
        assert any(response["insert"].values()), "hasMore with no rows"
    for rows in response["insert"].values():
        remember_row_values(rows)
    return size


@dataclass
class SyncResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    responses: int = 0
    sizes: list[int] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


def sync(
    secrets: dict[str, Any],
    state: dict[str, Any] | None = None,
    *,
    max_calls: int = 100_000,
    context: Any = None,
) -> SyncResult:
    """Invoke the handler as Fivetran does until hasMore is false, collecting every row."""
    result = SyncResult(state=dict(state or {}))
    max_bytes = int(secrets.get("max_response_bytes", lf.DEFAULT_MAX_RESPONSE_BYTES))
    for _ in range(max_calls):
        response = lf.lambda_handler({"state": result.state, "secrets": secrets}, context)
        result.sizes.append(check_response(response, max_bytes))
        result.responses += 1
        for rows in response["insert"].values():
            result.rows.extend(rows)
        result.state = response["state"]
        if not response["hasMore"]:
            return result
    raise AssertionError(f"no end after {max_calls} calls")
