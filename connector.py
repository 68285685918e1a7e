"""Copy a Redshift table to Fivetran through the Fivetran Connector SDK, exactly.

The SDK's entry point (``fivetran debug`` / ``fivetran deploy`` load ``connector`` from this
file). It drives the same core as the AWS Lambda function, ``lambda_function.run_invocation``:
same settings, paging, value encoding and state. Each core response is one batch: its rows go
out as ``op.upsert``, its deletes as ``op.delete``, then ``op.checkpoint`` saves its state, so
every checkpoint is a point the core resumes from exactly (a batch never ends inside a group of
rows that tie on cursor and key). This file only formats values for the SDK's declared column
types; it pages and encodes nothing itself. See docs/connector-sdk.md.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any

from fivetran_connector_sdk import Connector
from fivetran_connector_sdk import Logging as log
from fivetran_connector_sdk import Operations as op

import lambda_function as core

# Byte budget of one batch (one core response, one checkpoint), measured as the core measures
# a Lambda response. No 6 MB envelope here; the `limit` setting (rows per batch, default
# 100,000) still applies, so a batch ends at whichever comes first. Peak memory is about ten
# times the budget actually used.
DEFAULT_BATCH_BYTES = 50_000_000
MAX_BATCH_BYTES = 500_000_000
BATCH_BYTES_SETTING = "batch_bytes"  # read here; every other setting goes to the core
# Time budget of one batch, as a Lambda invocation's: queries are timed to end before it, and a
# batch that has read for almost this long is cut and checkpointed.
BATCH_TIME_S = 900.0
SCHEMA_TIME_S = 120.0

# What the server's types become in the destination (SDK types). Unlisted types are STRING:
# the core sends them as the server's text.
SDK_TYPES = {
    core.OID_BOOL: "BOOLEAN",
    core.OID_INT2: "SHORT",
    core.OID_INT4: "INT",
    core.OID_INT8: "LONG",
    core.OID_OID: "LONG",
    core.OID_FLOAT4: "FLOAT",
    core.OID_FLOAT8: "DOUBLE",
    core.OID_TIMESTAMP: "NAIVE_DATETIME",
    core.OID_TIMESTAMPTZ: "UTC_DATETIME",
    core.OID_DATE: "NAIVE_DATE",
    core.OID_BYTEA: "BINARY",
    core.OID_JSON: "JSON",
    core.OID_JSONB: "JSON",
}
MAX_DECIMAL_PRECISION = 38  # the destinations' DECIMAL; a wider numeric stays exact text
_NUMERIC = re.compile(r"numeric\((\d+),(-?\d+)\)")

# 'infinity' has no datetime value: it becomes the type's extreme, which keeps its order.
_MAX_TS, _MIN_TS = "9999-12-31T23:59:59.999999", "0001-01-01T00:00:00"
INFINITIES: dict[str, dict[str, str]] = {
    "NAIVE_DATETIME": {"infinity": _MAX_TS, "-infinity": _MIN_TS},
    "UTC_DATETIME": {"infinity": _MAX_TS + "Z", "-infinity": _MIN_TS + "Z"},
    "NAIVE_DATE": {"infinity": "9999-12-31", "-infinity": "0001-01-01"},
}

Row = dict[str, Any]
SdkType = str | dict[str, Any]


class Unrepresentable(ValueError):
    """A value the column's declared type cannot hold (a BC date, numeric NaN)."""


def batch_settings(configuration: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """The core's settings, and the batch byte budget (setting ``batch_bytes``)."""
    settings = dict(configuration or {})
    text = settings.pop(BATCH_BYTES_SETTING, None)
    if text is None or str(text).strip() == "":
        return settings, DEFAULT_BATCH_BYTES
    try:
        value = int(str(text).strip())
    except ValueError:
        value = -1
    low = core.MIN_MAX_RESPONSE_BYTES
    if not low <= value <= MAX_BATCH_BYTES:
        raise core.ConfigurationError(
            f"setting '{BATCH_BYTES_SETTING}' must be a whole number of bytes from {low} to "
            f"{MAX_BATCH_BYTES}, got {core.shown(text)}"
        )
    return settings, value


def sdk_type(column: core.Column) -> SdkType:
    """The SDK column type for a catalog column (domains are already their base type)."""
    if column.type_oid == core.OID_NUMERIC:
        match = _NUMERIC.fullmatch(column.sql_type.replace(" ", ""))
        if match:
            precision, scale = int(match[1]), int(match[2])
            if 1 <= precision <= MAX_DECIMAL_PRECISION and 0 <= scale <= precision:
                return {"type": "DECIMAL", "precision": precision, "scale": scale}
        return "STRING"  # unconstrained or wider numeric: its exact text
    return SDK_TYPES.get(column.type_oid, "STRING")


def _checked(parse: Callable[[str], object], infinities: Mapping[str, str]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if value in infinities:
            return infinities[value]
        try:
            parse(value)  # what the SDK will parse; BC and years past 9999 fail here
        except (TypeError, ValueError):
            raise Unrepresentable from None
        return value

    return convert


def _binary(value: Any) -> bytes:
    try:
        return base64.b64decode(value, validate=True)  # the core sends bytea as base64
    except (binascii.Error, TypeError, ValueError):
        raise Unrepresentable from None


def _decimal(value: Any) -> Any:
    if value in ("NaN", "Infinity", "-Infinity"):
        raise Unrepresentable
    return value


def converter(kind: SdkType) -> Callable[[Any], Any] | None:
    """What turns the core's JSON value into one the SDK accepts for ``kind``; None: as is."""
    if kind == "BINARY":
        return _binary
    if kind in ("NAIVE_DATETIME", "UTC_DATETIME"):
        return _checked(datetime.fromisoformat, INFINITIES[str(kind)])
    if kind == "NAIVE_DATE":
        return _checked(date.fromisoformat, INFINITIES["NAIVE_DATE"])
    if isinstance(kind, dict):
        return _decimal
    return None  # ints, booleans, floats (NaN arrives as null), JSON values and text pass


class Formatter:
    """Formats the rows (and delete keys) of each table for the SDK's declared column types."""

    def __init__(self, tables: list[tuple[str, core.TablePlan]]) -> None:
        self.converters: dict[str, dict[str, Callable[[Any], Any]]] = {}
        for destination, plan in tables:
            converters = {}
            for column in plan.columns:
                convert = converter(sdk_type(column))
                if convert is not None:
                    converters[column.name] = convert
            self.converters[destination] = converters
        self.dropped: dict[tuple[str, str], int] = {}

    def __call__(self, table: str, row: Row) -> Row:
        converters = self.converters.get(table)
        if not converters:
            return row
        for name, convert in converters.items():
            value = row.get(name)
            if value is None:
                continue
            try:
                row[name] = convert(value)
            except Unrepresentable:
                row[name] = None
                self.dropped[(table, name)] = self.dropped.get((table, name), 0) + 1
        return row

    def report(self) -> None:
        for (table, name), count in sorted(self.dropped.items()):
            log.warning(
                f"table {table}, column {name}: {count} value(s) the column's type cannot hold "
                "(a BC date, a year past 9999, numeric NaN) were written as NULL"
            )


def schema(configuration: dict[str, Any]) -> list[dict[str, Any]]:
    """Each configured table with its primary key and the SDK types of its columns."""
    settings, _ = batch_settings(configuration)
    tables = core.describe_tables(settings, time_left_ms=SCHEMA_TIME_S * 1000)
    return [
        {
            "table": destination,
            "primary_key": list(plan.primary_key),
            "columns": {column.name: sdk_type(column) for column in plan.columns},
        }
        for destination, plan in tables
    ]


def emit(response: Mapping[str, Any], formatter: Formatter) -> int:
    """Send one core response's rows and deletes to the SDK; return the rows upserted."""
    upserted = 0
    for table, rows in response["insert"].items():
        for row in rows:
            op.upsert(table, formatter(table, row))
        upserted += len(rows)
    # The SDK records every delete as a soft delete (_fivetran_deleted = true): a response's
    # "delete" and its "softDelete" tables both become op.delete.
    for table, keys in (response.get("delete") or {}).items():
        for key in keys:
            op.delete(table, formatter(table, dict(key)))
    return upserted


def update(configuration: dict[str, Any], state: dict[str, Any]) -> None:
    """Sync every configured table: one batch, then one checkpoint, until the core is done."""
    settings, batch_bytes = batch_settings(configuration)
    formatter = Formatter(
        core.describe_tables(settings, time_left_ms=SCHEMA_TIME_S * 1000)
    )
    state = dict(state or {})
    batches = rows = 0
    while True:
        response = core.run_invocation(
            {"secrets": settings, "state": state},
            time_left_ms=BATCH_TIME_S * 1000,
            max_response_bytes=batch_bytes,
        )
        rows += emit(response, formatter)
        state = response["state"]
        op.checkpoint(state)  # after the whole batch: an exact resume point
        batches += 1
        if not response["hasMore"]:
            break
    formatter.report()
    log.info(f"sync done: {rows} rows in {batches} batch(es)")


connector = Connector(update=update, schema=schema)

if __name__ == "__main__":
    # A local run, as `fivetran debug` does it: configuration.json next to this file, rows to
    # files/warehouse.db, and the state of files/state.json (which each checkpoint replaces).
    import json
    import os
    import shutil
    import sys
    from pathlib import Path

    # The SDK runs `pipreqs` found on PATH; without one there (.venv not activated), the one
    # next to this Python (.venv/bin), so `.venv/bin/python connector.py` works as it is.
    if shutil.which("pipreqs") is None:
        os.environ["PATH"] = os.pathsep.join(
            [os.environ.get("PATH", ""), str(Path(sys.executable).parent)]
        )
    here = Path(__file__).resolve().parent
    state_file = here / "files" / "state.json"
    connector.debug(
        project_path=str(here),
        configuration=json.loads((here / "configuration.json").read_text(encoding="utf-8")),
        state=json.loads(state_file.read_text(encoding="utf-8")) if state_file.exists() else None,
    )
