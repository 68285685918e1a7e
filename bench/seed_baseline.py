"""The benchmark's baseline: the algorithm of Fivetran's tutorial sample Redshift function.

Fivetran's blog tutorial "Use Lambda Functions to Move Data From Redshift" (its code is
fivetran/functions, redshift/aws_lambda/lambda_function.py) is where this project started.
This module is our own rewrite of what that sample does, kept so the benchmark can be run from
a clone. On every call it:

- opens a new pg8000 connection;
- takes the position from ``state["cursor"]`` (``'1970-01-01T00:00:00'`` when absent);
- runs ``SELECT * FROM <table> WHERE <cursor> > '<position>' ORDER BY <cursor> LIMIT <limit>``
  with every value formatted into the SQL text, the cursor compared strictly (so rows that
  share the last cursor value of a page and did not fit in it are never read: the sample loses
  them);
- converts each value: ``datetime`` and ``date`` to ``str()``, ``Decimal`` to ``float``, the
  rest as the driver returns it;
- answers ``{}`` when the query finds no rows; else ``insert`` (keyed by the ``table`` setting),
  ``state`` ``{"cursor": <last row's converted cursor value>}``, ``schema`` with the
  ``primary_key`` setting, and ``hasMore`` true when the page was full;
- prints the whole response.

Changed only as far as today's pg8000 (1.31) and Fivetran's string secrets need, plus a leak:
column names are ``str`` already (the sample called ``.decode()`` on them); pg8000 no longer
takes ``ssl=True``, so the connection is plain TCP, as the benchmark's handler runs with
``sslmode=disable`` on loopback; ``limit`` arrives as a string and is compared as an ``int``;
the connection is closed after the call (the sample left it to the garbage collector). Its
unused ``struct_time`` conversion (pg8000 never returns one) is left out.
"""

from __future__ import annotations

import datetime
import decimal
import sys
from typing import Any

import pg8000

__all__ = ["CHANGES", "DEFAULT_CURSOR", "lambda_handler"]

DEFAULT_CURSOR = "1970-01-01T00:00:00"

# What differs from the sample, for the benchmark's report.
CHANGES = (
    "our rewrite of the sample's algorithm (bench/seed_baseline.py)",
    "column names are str since pg8000 1.16.6: no `.decode()`",
    "no `ssl=True` (gone from pg8000): plain TCP on loopback, as the handler's sslmode=disable",
    "`limit` arrives as a string (Fivetran secrets are strings): compared as int",
    "the connection is closed after each call",
)


def _convert(value: Any) -> Any:
    """The sample's value conversion: dates and timestamps to str(), decimals to float."""
    if isinstance(value, (datetime.datetime, datetime.date)):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def lambda_handler(
    request: dict[str, Any], context: object, *, echo: bool = True
) -> dict[str, Any]:
    """One call of the sample function; ``echo=False`` leaves out its print of the response."""
    secrets = request["secrets"]
    position = request["state"].get("cursor", DEFAULT_CURSOR)
    table = secrets["table"]
    cursor_column = secrets["cursor"]
    limit = int(secrets["limit"])
    con = pg8000.connect(  # the legacy API the sample used
        database=secrets["dbname"],
        host=secrets["host"],
        port=int(secrets["port"]),
        user=secrets["user"],
        password=secrets["password"],
    )
    try:
        cur = con.cursor()
        # As the sample does it: names and values formatted into the SQL text, a strict `>`.
        cur.execute(
            f"SELECT * FROM {table} WHERE {cursor_column} > '{position}' "
            f"ORDER BY {cursor_column} LIMIT {limit}"
        )
        names = [column[0] for column in cur.description]
        fetched = cur.fetchall()
    finally:
        con.close()
    if not fetched:
        return {}
    rows = [dict(zip(names, map(_convert, row), strict=True)) for row in fetched]
    response = {
        "insert": {table: rows},
        "state": {"cursor": rows[-1][cursor_column]},
        "schema": {table: {"primary_key": [secrets["primary_key"]]}},
        "hasMore": len(fetched) >= limit,
    }
    if echo:  # the sample prints every response, rows and all (the benchmark sends it to
        # /dev/null): its cost is part of the baseline, the rows it would log are not ours
        sys.stdout.write(f"{response}\n")
    return response
