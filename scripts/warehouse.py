"""A local destination for Fivetran responses: applies each one to a DuckDB database.

``Warehouse(path).apply(response)`` does to a DuckDB file what Fivetran does to a destination
with one response of the AWS Lambda connector, in one transaction:

- ``insert``: ``{table: [row, ...]}``. The table is created on first sight. With a primary key
  declared in the response's ``schema`` (``{table: {"primary_key": [column, ...]}}``), rows are
  upserted by that key: a row whose key is already there replaces it, and within one response
  the last row with a key wins. Without a declared key rows are appended.
- ``delete``: ``{table: [{key columns}, ...]}``, applied after the inserts: the rows with those
  key values are removed, or, for a table named in ``softDelete`` (a list of table names),
  kept with ``_fivetran_deleted`` set to true.

Every table gets Fivetran's two system columns: ``_fivetran_synced`` (when the row was last
written, TIMESTAMPTZ) and ``_fivetran_deleted`` (BOOLEAN, false until a soft delete). Columns
are typed from the JSON values as they arrive: booleans BOOLEAN, integers BIGINT (larger
ones VARCHAR), other numbers DOUBLE, strings VARCHAR (kept as the exact text the function
sent: decimals and timestamps are not parsed), objects and arrays JSON. A column seen only with
NULLs so far is VARCHAR and takes the type of its first value. When values disagree the column
widens (BIGINT and DOUBLE to DOUBLE, anything else to VARCHAR), as Fivetran widens a column
to a string. A column missing from a row is NULL in that row. DuckDB's names are
case-insensitive, so two columns (or tables) whose names differ only in case are refused.

Open the file afterwards with ``duckdb.connect(path)``, or the DuckDB CLI: ``duckdb PATH``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import duckdb

__all__ = ["Applied", "Warehouse", "WarehouseError"]

SYNCED = "_fivetran_synced"
DELETED = "_fivetran_deleted"
SYSTEM_COLUMNS = (SYNCED, DELETED)

BOOLEAN, BIGINT, DOUBLE, VARCHAR, JSON = "BOOLEAN", "BIGINT", "DOUBLE", "VARCHAR", "JSON"
_INT64 = range(-(2**63), 2**63)
_STAGE_ROWS = 20_000  # rows parsed from one JSON text when staging


class WarehouseError(ValueError):
    """A response the destination cannot apply; the message says what is wrong with it."""


@dataclass
class Applied:
    """What one response did, per table."""

    upserted: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    soft_deleted: dict[str, int] = field(default_factory=dict)


def quote(name: str) -> str:
    """A DuckDB identifier: double-quoted, inner double quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


_KINDS: dict[type, str] = {bool: BOOLEAN, int: BIGINT, float: DOUBLE, str: VARCHAR}
_KINDS.update({dict: JSON, list: JSON})


def column_type(values: list[Any]) -> str | None:
    """The column type a column's JSON values ask for; None when all are NULL."""
    kinds = set(map(type, values))
    kinds.discard(type(None))
    found: str | None = None
    for kind in kinds:
        if kind not in _KINDS:
            raise WarehouseError(f"not a JSON value: {kind.__name__}")
        found = widen(found, _KINDS[kind])
    if found == BIGINT or (found == DOUBLE and int in kinds):
        ints = [v for v in values if type(v) is int]
        if min(ints) not in _INT64 or max(ints) not in _INT64:
            return VARCHAR  # beyond BIGINT: kept exact as text
    return found


def widen(a: str | None, b: str | None) -> str | None:
    """The narrowest type that holds values of both types (None: no value seen)."""
    if a is None or a == b:
        return b
    if b is None:
        return a
    if {a, b} == {BIGINT, DOUBLE}:
        return DOUBLE
    return VARCHAR


class Warehouse:
    """A DuckDB database that Fivetran responses are applied to, one ``apply`` per response."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self.connection = duckdb.connect(self.path)
        self._keys: dict[str, list[str]] = {}  # table (as first named) -> declared primary key

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.connection.close()

    # -- applying a response -----------------------------------------------------------------

    def apply(self, response: Mapping[str, Any]) -> Applied:
        """Apply one response (its insert, delete and softDelete) in one transaction."""
        inserts = _mapping(response.get("insert", {}), "insert")
        deletes = _mapping(response.get("delete", {}), "delete")
        soft = response.get("softDelete", [])
        if not isinstance(soft, list) or not all(isinstance(t, str) for t in soft):
            raise WarehouseError("'softDelete' must be a list of table names")
        for table, spec in _mapping(response.get("schema", {}), "schema").items():
            self._declare_key(table, spec)
        applied = Applied()
        con = self.connection
        con.begin()
        try:
            for table, rows in inserts.items():
                applied.upserted[table] = self._upsert(table, _rows(rows, f"insert.{table}"))
            for table, keys in deletes.items():
                count = self._delete(table, _rows(keys, f"delete.{table}"), soft=table in soft)
                if table in soft:
                    applied.soft_deleted[table] = count
                else:
                    applied.deleted[table] = count
            con.commit()
        except BaseException:
            con.rollback()
            raise
        return applied

    def _declare_key(self, table: str, spec: Any) -> None:
        key = spec.get("primary_key") if isinstance(spec, dict) else None
        if not isinstance(key, list) or not key or not all(isinstance(c, str) for c in key):
            raise WarehouseError(f"schema.{table}.primary_key must be a non-empty list of names")
        known = self._keys.get(table.lower())
        if known is not None and [c.lower() for c in known] != [c.lower() for c in key]:
            raise WarehouseError(
                f"table {table}: primary key {key} declared, but it was {known} before"
            )
        self._keys[table.lower()] = list(key)

    def _upsert(self, table: str, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        names: dict[str, str] = {}  # lower-case name -> the name as the rows spell it
        for name in dict.fromkeys(itertools.chain.from_iterable(rows)):  # in row order
            if names.setdefault(name.lower(), name) != name:
                raise WarehouseError(
                    f"table {table}: columns {names[name.lower()]!r} and {name!r} differ only "
                    "in case"
                )
        if any(n in names for n in SYSTEM_COLUMNS):
            raise WarehouseError(f"table {table}: a column is named like a system column")
        values = {lower: [row.get(name) for row in rows] for lower, name in names.items()}
        key = self._keys.get(table.lower())
        if key is not None:
            missing = [c for c in key if c.lower() not in names]
            if missing:
                raise WarehouseError(f"table {table}: rows lack the primary key {missing}")
            if any(None in values[c.lower()] for c in key):
                raise WarehouseError(f"table {table}: a row's primary key {key} is null")
            keys = list(zip(*(values[c.lower()] for c in key), strict=True))
            try:
                last = dict(zip(keys, rows, strict=True))
            except TypeError:  # an object or array in the key
                last = dict(zip(map(json.dumps, keys), rows, strict=True))
            if len(last) < len(rows):  # the last row with a key wins, as in repeated upserts
                rows = list(last.values())
                values = {lower: [row.get(n) for row in rows] for lower, n in names.items()}
        types = {lower: column_type(column) for lower, column in values.items()}
        columns = self._ensure_table(table, names, types)
        present = {lower: len(column) - column.count(None) for lower, column in values.items()}
        self._stage("_fivetran_batch", rows, columns, names, present)
        con = self.connection
        target = quote(self._table_name(table))
        if key is not None:
            match = " AND ".join(f"t.{quote(c)} = b.{quote(c)}" for c in key)
            con.execute(f"DELETE FROM {target} AS t USING _fivetran_batch AS b WHERE {match}")
        listed = ", ".join(quote(real) for real, _ in columns.values())
        con.execute(
            f"INSERT INTO {target} ({listed}, {SYNCED}, {DELETED}) "
            f"SELECT {listed}, now(), false FROM _fivetran_batch"
        )
        con.execute("DROP TABLE _fivetran_batch")
        return len(rows)

    def _delete(self, table: str, keys: list[dict[str, Any]], *, soft: bool) -> int:
        if not keys or not self._exists(table):
            return 0
        existing = self._columns(table)
        lowers = sorted({name.lower() for row in keys for name in row})
        unknown = [lower for lower in lowers if lower not in existing]
        if not lowers or unknown:
            raise WarehouseError(f"delete.{table}: no such column(s) {unknown or '(none given)'}")
        columns = {lower: existing[lower] for lower in lowers}
        batch = [{lower: _get(row, lower) for lower in columns} for row in keys]
        present = {lower: sum(row[lower] is not None for row in batch) for lower in columns}
        con = self.connection
        self._stage("_fivetran_keys", batch, columns, {c: c for c in columns}, present)
        target = quote(self._table_name(table))
        match = " AND ".join(f"t.{quote(real)} = k.{quote(real)}" for real, _ in columns.values())
        if soft:
            sql = (
                f"UPDATE {target} AS t SET {DELETED} = true, {SYNCED} = now() "
                f"FROM _fivetran_keys AS k WHERE {match} AND NOT t.{DELETED}"
            )
        else:
            sql = f"DELETE FROM {target} AS t USING _fivetran_keys AS k WHERE {match}"
        [[count]] = con.execute(sql).fetchall()
        con.execute("DROP TABLE _fivetran_keys")
        return int(count)

    def _stage(
        self,
        name: str,
        rows: list[dict[str, Any]],
        columns: Mapping[str, tuple[str, str]],
        spelled: Mapping[str, str],
        present: Mapping[str, int],
    ) -> None:
        """A temporary table ``name`` of ``rows``, typed as ``columns`` (lower-case name ->
        (column name, type)); ``spelled`` gives each column's name as the rows spell it.
        DuckDB parses the rows from one JSON text: row by row inserts take a hundred times
        longer. ``present`` (non-NULL values per column) proves no value was lost."""
        shape = json.dumps([{spelled[lower]: kind for lower, (_, kind) in columns.items()}])
        renamed = ", ".join(
            f"{quote(spelled[lower])} AS {quote(real)}" for lower, (real, _) in columns.items()
        )
        con = self.connection
        con.execute(f"DROP TABLE IF EXISTS {name}")
        # json_transform, not json_transform_strict: a key missing from a row is NULL. The
        # column types hold every value given, and the count below makes sure of it.
        # In slices: one JSON text of a few hundred thousand rows parses more than linearly
        # slower.
        select = (
            f"SELECT {renamed} FROM "
            "(SELECT unnest(json_transform(CAST(? AS JSON), ?), recursive := true))"
        )
        for start in range(0, max(len(rows), 1), _STAGE_ROWS):
            text = json.dumps(rows[start : start + _STAGE_ROWS])
            if start == 0:
                con.execute(f"CREATE TEMP TABLE {name} AS {select}", [text, shape])
            else:
                con.execute(f"INSERT INTO {name} {select}", [text, shape])
        counts = ", ".join(f"count({quote(real)})" for real, _ in columns.values())
        [found] = con.execute(f"SELECT count(*), {counts} FROM {name}").fetchall()
        expected = (len(rows), *(present[lower] for lower in columns))
        if tuple(found) != expected:
            raise WarehouseError(f"staging {name} lost values: {found} != {expected}")

    # -- tables and columns ------------------------------------------------------------------

    def _ensure_table(
        self, table: str, names: Mapping[str, str], types: Mapping[str, str | None]
    ) -> dict[str, tuple[str, str]]:
        """Create the table, or add and widen its columns, for these rows' columns;
        lower-case name -> (column name, type) of each."""
        con = self.connection
        if not self._exists(table):
            defs = [f"{quote(names[lower])} {types[lower] or VARCHAR}" for lower in names]
            defs += [f"{SYNCED} TIMESTAMPTZ", f"{DELETED} BOOLEAN NOT NULL DEFAULT false"]
            con.execute(f"CREATE TABLE {quote(table)} ({', '.join(defs)})")
        else:
            target = quote(self._table_name(table))
            existing = self._columns(table)
            for lower, name in names.items():
                wanted = types[lower]
                if lower not in existing:
                    con.execute(
                        f"ALTER TABLE {target} ADD COLUMN {quote(name)} {wanted or VARCHAR}"
                    )
                    continue
                real, current = existing[lower]
                if wanted is None or wanted == current:
                    continue
                if current == VARCHAR and self._all_null(target, real):
                    new = wanted  # VARCHAR only because no value had come yet
                else:
                    new = widen(current, wanted) or VARCHAR
                if new != current:
                    con.execute(f"ALTER TABLE {target} ALTER COLUMN {quote(real)} TYPE {new}")
        return {lower: col for lower, col in self._columns(table).items() if lower in names}

    def _all_null(self, target: str, column: str) -> bool:
        sql = f"SELECT count({quote(column)}) FROM {target}"
        [[count]] = self.connection.execute(sql).fetchall()
        return int(count) == 0

    def _exists(self, table: str) -> bool:
        return self._find_table(table) is not None

    def _find_table(self, table: str) -> str | None:
        """The table's name as created (DuckDB matches names case-insensitively)."""
        found = self.connection.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'main' AND lower(table_name) = lower(?)",
            [table],
        ).fetchall()
        return str(found[0][0]) if found else None

    def _table_name(self, table: str) -> str:
        name = self._find_table(table)
        if name is None:
            raise WarehouseError(f"no table {table}")
        return name

    def _columns(self, table: str) -> dict[str, tuple[str, str]]:
        """lower-case name -> (column name, type), system columns left out."""
        found = self.connection.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' AND lower(table_name) = lower(?) "
            "ORDER BY ordinal_position",
            [table],
        ).fetchall()
        return {
            str(name).lower(): (str(name), str(kind))
            for name, kind in found
            if name not in SYSTEM_COLUMNS
        }

    # -- reading back ------------------------------------------------------------------------

    def tables(self) -> list[str]:
        found = self.connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "AND table_type = 'BASE TABLE' ORDER BY table_name"
        ).fetchall()
        return [str(name) for (name,) in found]

    def columns(self, table: str) -> dict[str, str]:
        """Column name -> DuckDB type, system columns left out, in table order."""
        return dict(self._columns(table).values())

    def rows(self, table: str, *, deleted: bool = False) -> list[dict[str, Any]]:
        """The table's rows as dicts (system columns left out), ordered by the declared key
        (else by every column). Soft-deleted rows only with ``deleted=True``."""
        names = list(self.columns(table))
        key = self._keys.get(table.lower(), names)
        where = "" if deleted else f" WHERE NOT {DELETED}"
        order = ", ".join(quote(c) for c in key)
        listed = ", ".join(quote(c) for c in names)
        result = self.connection.execute(
            f"SELECT {listed} FROM {quote(self._table_name(table))}{where} ORDER BY {order}"
        ).fetchall()
        return [dict(zip(names, row, strict=True)) for row in result]

    def count(self, table: str, *, deleted: bool = False) -> int:
        where = "" if deleted else f" WHERE NOT {DELETED}"
        target = quote(self._table_name(table))
        [[n]] = self.connection.execute(f"SELECT count(*) FROM {target}{where}").fetchall()
        return int(n)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise WarehouseError(f"'{what}' must be an object keyed by table name")
    return value


def _rows(value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise WarehouseError(f"'{what}' must be a list of objects")
    return value


def _get(row: Mapping[str, Any], name: str) -> Any:
    """A row's value of a column, its name matched case-insensitively as DuckDB does."""
    if name in row:
        return row[name]
    lower = name.lower()
    for key, value in row.items():
        if key.lower() == lower:
            return value
    return None
