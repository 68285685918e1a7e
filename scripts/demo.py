"""The one-command demo: copy a realistic table the way Fivetran would, and prove the copy.

Starts a throwaway PostgreSQL server, fills ``public.orders`` (default 200,000 rows with
unicode names, exact money, NULLs and many rows per ``updated_at`` second), then invokes
``lambda_function.lambda_handler`` in-process exactly as Fivetran's AWS Lambda connector does:
one request per batch, the returned ``state`` fed back while ``hasMore`` is true. Each response
is applied to a local DuckDB warehouse (``demo.duckdb``; see scripts/warehouse.py): rows
upserted by the primary key the response declares, deletes applied when a response has any.
At the end the source (checksummed in SQL) and the DuckDB table (checksummed from its rows)
are compared. Then 3 rows are inserted and 2 updated, and an incremental sync from the saved
state must deliver exactly those 5 rows. The server and its files are removed afterwards, also
on Ctrl-C; the DuckDB file stays, to be queried.

With ``--serve`` it only starts the server, fills the table, prints the
``REDSHIFT_LAMBDA_*`` settings to run ``lambda_function.py`` against it from another shell,
and keeps the server until Ctrl-C.

Usage: ./demo.sh [--rows N] [--limit N] [--max-response-bytes N] [--duckdb PATH] [--quiet]
       ./demo.sh --serve [--rows N]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (str(ROOT), str(ROOT / "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from pgserver import PostgresServer  # noqa: E402
from warehouse import Warehouse  # noqa: E402

import lambda_function as lf  # noqa: E402

TABLE = "public.orders"
DESTINATION_TABLE = "orders"  # the destination table name the function declares (no schema)
DEFAULT_DUCKDB = ROOT / "demo.duckdb"
COLUMNS = ("id", "customer", "amount", "currency", "status", "created_at", "updated_at", "note")
NULL = "\\N"  # how a NULL is written in the canonical text of a row (as in COPY)
AGENT = "Fivetran AWS Lambda Connector/demo_external_id/redshift_orders"
REMAINING_MS = 900_000  # what the fake Lambda context reports: a fresh 15-minute invocation
SAMPLE_ID = 13  # a row with accents, exact money, both timestamps and an emoji in its note
EXIT_MISMATCH = 1
EXIT_INTERRUPTED = 130

CREATE_SQL = """CREATE TABLE public.orders (
    id bigint PRIMARY KEY,
    customer text,
    amount numeric(12,2) NOT NULL,
    currency char(3) NOT NULL,
    status varchar(20) NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamp NOT NULL,
    note text
)"""

# One statement, all server-side. updated_at takes about 400 rows per distinct second (a
# quarter of them half a second later), shuffled against id, so batch boundaries fall inside
# runs of equal cursor values. created_at has milli- and microseconds, or none.
FILL_SQL = r"""INSERT INTO public.orders
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

# The canonical text of a row, computed by the database itself: values formatted as the
# handler promises to emit them (numeric: the server's text; timestamp: YYYY-MM-DDTHH:MM:SS
# with the fraction's trailing zeros dropped; timestamptz: the same in UTC with a Z), NULL as
# \N, fields joined by |, one line per row ordered by id. Written with to_char, not the
# handler's text rewriting, so the two sides are computed independently.
_TS = "rtrim(rtrim(to_char({0}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '0'), '.')"
CHECKSUM_SQL = rf"""SELECT count(*), md5(coalesce(string_agg(line || E'\n', '' ORDER BY id), ''))
FROM (
    SELECT id, concat_ws('|',
        id::text,
        coalesce(customer, '\N'),
        amount::text,
        currency,
        status,
        {_TS.format("created_at AT TIME ZONE 'UTC'")} || 'Z',
        {_TS.format("updated_at")},
        coalesce(note, '\N')
    ) AS line
    FROM public.orders
) AS canonical"""

INSERT_SQL = """INSERT INTO public.orders
    (id, customer, amount, currency, status, created_at, updated_at, note)
SELECT CAST(:first AS bigint) + n, (ARRAY['Łukasz Nowak 🛒', NULL, 'Åsa Öberg'])[1 + n],
    (ARRAY[19.90, 0.05, 1234567.00])[1 + n], 'EUR', 'pending', now(),
    now() AT TIME ZONE 'UTC', (ARRAY[NULL, 'new customer', 'express'])[1 + n]
FROM generate_series(0, 2) AS n"""

UPDATE_SQL = """UPDATE public.orders
SET status = 'refunded', amount = -amount, note = 'refunded by the demo',
    updated_at = now() AT TIME ZONE 'UTC'
WHERE id IN (CAST(:a AS bigint), CAST(:b AS bigint))"""


def say(text: str = "") -> None:
    print(text, flush=True)


def _canonical_value(column: str, value: Any) -> str:
    if value is None:
        return NULL
    if type(value) is not (int if column == "id" else str):
        # A JSON number for the money column (a float loses cents) or any other type change
        # must not pass: mark it, so the line differs from the source's.
        return f"<{type(value).__name__}>{value}"
    return str(value)


def canonical_line(row: Mapping[str, Any]) -> str:
    """A destination row's canonical text: the JSON values as delivered, NULL as \\N.

    id must be a JSON integer and every other value a JSON string (amount: exact decimal
    text, timestamps: ISO 8601 text), else the line cannot match the source's.
    """
    return "|".join(_canonical_value(c, row[c]) for c in COLUMNS)


def destination_checksum(warehouse: Warehouse) -> tuple[int, str]:
    """(row count, md5 of the canonical lines ordered by id) of the DuckDB table, as
    CHECKSUM_SQL computes it for the source. Soft-deleted rows do not count."""
    digest = hashlib.md5(usedforsecurity=False)
    rows = warehouse.rows(DESTINATION_TABLE)  # ordered by the declared key, id
    for row in rows:
        digest.update((canonical_line(row) + "\n").encode("utf-8"))
    return len(rows), digest.hexdigest()


def source_checksum(pg: PostgresServer) -> tuple[int, str]:
    [[count, md5]] = pg.execute(CHECKSUM_SQL)
    return int(count), str(md5)


class FakeContext:
    """The part of the Lambda context object the handler uses."""

    function_name = "redshift-lambda-demo"

    def get_remaining_time_in_millis(self) -> int:
        return REMAINING_MS


@dataclass
class SyncStats:
    invocations: int = 0
    rows: int = 0
    bytes: int = 0
    largest: int = 0  # bytes of the largest response
    seconds: float = 0.0
    load_seconds: float = 0.0  # applying the responses to DuckDB
    deleted: int = 0  # rows deleted or soft-deleted by the responses
    delivered_ids: list[int] = field(default_factory=list)


def run_sync(
    secrets: Mapping[str, str],
    state: dict[str, Any],
    warehouse: Warehouse,
    *,
    quiet: bool,
) -> tuple[dict[str, Any], SyncStats]:
    """One Fivetran sync: invoke until hasMore is false, applying each response to DuckDB.

    Returns the state Fivetran would have saved last, and what the sync moved.
    """
    sync_id = str(uuid.uuid4())
    say(f"  sync_id={sync_id}")
    stats = SyncStats()
    context = FakeContext()
    while True:
        request = {"agent": AGENT, "sync_id": sync_id, "state": state, "secrets": dict(secrets)}
        started = time.perf_counter()
        response = lf.lambda_handler(request, context)
        elapsed = time.perf_counter() - started
        text = json.dumps(response)  # what the Lambda runtime sends back to Fivetran
        size = len(text.encode())
        received = json.loads(text)  # what Fivetran receives
        batch = received["insert"].get(DESTINATION_TABLE, [])
        [key] = received["schema"][DESTINATION_TABLE]["primary_key"]
        started = time.perf_counter()
        applied = warehouse.apply(received)  # upsert by the declared key, then any deletes
        stats.load_seconds += time.perf_counter() - started
        stats.deleted += sum(applied.deleted.values()) + sum(applied.soft_deleted.values())
        stats.delivered_ids.extend(row[key] for row in batch)
        stats.invocations += 1
        stats.rows += len(batch)
        stats.bytes += size
        stats.largest = max(stats.largest, size)
        stats.seconds += elapsed
        if not quiet:
            say(
                f"  batch {stats.invocations:>4}: {len(batch):>8,} rows | total "
                f"{stats.rows:>10,} | {size / 1e6:5.2f} MB | "
                f"{len(batch) / max(elapsed, 1e-9):>9,.0f} rows/s"
            )
        state = received["state"]  # saved after the batch is written, fed back next time
        if not received["hasMore"]:
            return state, stats


def report_sync(stats: SyncStats, budget: int) -> None:
    seconds = max(stats.seconds, 1e-9)
    say(
        f"  done: {stats.invocations} invocation(s), {stats.rows:,} rows, "
        f"{stats.bytes / 1e6:.1f} MB of responses in {stats.seconds:.2f} s in the handler "
        f"({stats.rows / seconds:,.0f} rows/s, {stats.bytes / 1e6 / seconds:.1f} MB/s)"
    )
    say(
        f"  largest response: {stats.largest:,} bytes (budget max_response_bytes={budget:,}; "
        f"Lambda's cap {lf.LAMBDA_RESPONSE_LIMIT_BYTES:,})"
    )
    deletes = f"; {stats.deleted:,} rows deleted" if stats.deleted else ""
    say(f"  loaded into DuckDB in {stats.load_seconds:.2f} s{deletes}")


def compare(pg: PostgresServer, warehouse: Warehouse) -> bool:
    """Print source and destination side by side; True when they match."""
    src_count, src_md5 = source_checksum(pg)
    dst_count, dst_md5 = destination_checksum(warehouse)
    say(f"  {'':<10} {'source (PostgreSQL)':<34} destination (DuckDB)")
    say(f"  {'rows':<10} {src_count:<34,} {dst_count:,}")
    say(f"  {'md5':<10} {src_md5:<34} {dst_md5}")
    same = (src_count, src_md5) == (dst_count, dst_md5)
    say(f"  {'MATCH' if same else 'MISMATCH'}")
    return same


def describe_settings(secrets: Mapping[str, str]) -> str:
    shown = " ".join(f"{k}={'(hidden)' if k == 'password' else v}" for k, v in secrets.items())
    defaults = [
        f"{name}={value} (default)"
        for name, value in (
            ("limit", lf.DEFAULT_LIMIT),
            ("max_response_bytes", lf.DEFAULT_MAX_RESPONSE_BYTES),
        )
        if name not in secrets
    ]
    return " ".join([shown, *defaults])


def fill_source(pg: PostgresServer, rows: int) -> None:
    say(f"\nCreating {TABLE} with {rows:,} rows ...")
    started = time.perf_counter()
    pg.execute(CREATE_SQL)
    pg.execute(FILL_SQL, rows=str(rows))
    pg.execute("CREATE INDEX ON public.orders (updated_at, id)")
    pg.execute("ANALYZE public.orders")
    [[distinct]] = pg.execute("SELECT count(DISTINCT updated_at) FROM public.orders")
    say(
        f"  done in {time.perf_counter() - started:.1f} s: {rows:,} rows share "
        f"{distinct:,} distinct updated_at values (about {rows / distinct:,.0f} rows each)"
    )


def connection_secrets(pg: PostgresServer) -> dict[str, str]:
    """The connector's settings for the throwaway server: a loopback server without TLS."""
    return {
        "host": pg.host,
        "port": str(pg.port),
        "dbname": pg.database,
        "user": pg.user,
        "password": pg.password,
        "table": TABLE,
        "cursor": "updated_at",
        "primary_key": "id",
        "sslmode": "disable",
    }


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
        "SELECT status, count(*) AS orders, sum(CAST(amount AS DECIMAL(14, 2))) AS amount "
        "FROM orders GROUP BY status ORDER BY status"
    )
    code = (
        f"import duckdb; print(duckdb.connect({json.dumps(where)}, read_only=True)"
        f".sql({json.dumps(query)}))"
    )
    say(
        f"\nThe copy stays in {where} (table {DESTINATION_TABLE}; the next run replaces it). "
        "Query it:"
    )
    say(f"  {shlex.quote(python)} -c {shlex.quote(code)}")
    say(
        f"  or with the DuckDB CLI, if installed: duckdb {shlex.quote(where)} "
        f'"SELECT * FROM {DESTINATION_TABLE} LIMIT 5"'
    )
    say(
        "  amount, created_at and updated_at hold the exact text the function sent: cast them "
        "(CAST(amount AS DECIMAL(12, 2)), CAST(updated_at AS TIMESTAMP)) to compute with them."
    )


def demo(pg: PostgresServer, args: argparse.Namespace, warehouse: Warehouse) -> int:
    """Everything that happens while the server runs; the exit status."""
    say(f"Server: {pg.describe()}")
    fill_source(pg, args.rows)

    secrets = connection_secrets(pg)
    if args.limit is not None:
        secrets["limit"] = str(args.limit)
    if args.max_response_bytes is not None:
        secrets["max_response_bytes"] = str(args.max_response_bytes)
    say(f"\nConnector secrets: {describe_settings(secrets)}")
    say(
        "  sslmode=disable: this throwaway server listens on the loopback interface only. "
        "Against Redshift keep the default, verify-full."
    )
    say(f"Destination: DuckDB file {shown_path(Path(warehouse.path))}")

    budget = args.max_response_bytes or lf.DEFAULT_MAX_RESPONSE_BYTES
    say("\nFull sync (state {}):")
    state, stats = run_sync(secrets, {}, warehouse, quiet=args.quiet)
    report_sync(stats, budget)
    sample = warehouse.connection.execute(
        f"SELECT * EXCLUDE (_fivetran_synced, _fivetran_deleted) FROM {DESTINATION_TABLE} "
        "WHERE id = ?",
        [SAMPLE_ID],
    )
    found = sample.fetchall()
    if found:
        names = [d[0] for d in sample.description]
        row = json.dumps(dict(zip(names, found[0], strict=True)), ensure_ascii=False)
        say(f"  a row as the destination holds it: {row}")
    say("\nSource vs destination after the full sync:")
    if not compare(pg, warehouse):
        return EXIT_MISMATCH

    first_new = args.rows + 1
    updated = (1, args.rows // 2 + 1)
    # A new sync resumes inclusively at the last cursor value (a row committed later with that
    # value and a smaller key must not be lost), so the rows at that value are sent again.
    resent = {
        r[0]
        for r in pg.execute(
            "SELECT id FROM public.orders WHERE updated_at = "
            "(SELECT max(updated_at) FROM public.orders)"
        )
    }
    pg.execute(INSERT_SQL, first=str(first_new))
    pg.execute(UPDATE_SQL, a=str(updated[0]), b=str(updated[1]))
    expected = sorted([*updated, *range(first_new, first_new + 3)])
    say(
        f"\nChanged the source: inserted ids {first_new}..{first_new + 2}, updated ids "
        f"{updated[0]} and {updated[1]} (updated_at set to now)."
    )
    say("Incremental sync (from the saved state):")
    _, stats = run_sync(secrets, state, warehouse, quiet=args.quiet)
    report_sync(stats, budget)
    delivered = sorted(stats.delivered_ids)
    changed = [i for i in delivered if i not in resent or i in updated]
    exact = changed == expected and set(delivered) == set(expected) | resent
    say(
        f"  incremental sync delivered {len(delivered)} rows: the changed ids {changed} "
        f"({'exactly the changed rows' if exact else f'MISMATCH: expected ids {expected}'}), "
        f"and the {len(set(delivered) - set(expected))} rows at the last delivered cursor value "
        "again (a new sync resumes inclusively there; the upsert makes that harmless)"
    )
    say("\nSource vs destination after the incremental sync:")
    same = compare(pg, warehouse)
    return 0 if same and exact else EXIT_MISMATCH


def serve(pg: PostgresServer, args: argparse.Namespace) -> int:
    """Fill the table, print the settings to reach it, and wait for Ctrl-C."""
    say(f"Server: {pg.describe()}")
    fill_source(pg, args.rows)
    secrets = connection_secrets(pg)
    exports = " ".join(
        f"{lf.ENV_PREFIX}{key.upper()}={shlex.quote(secrets[key])}"
        for key in ("host", "port", "dbname", "user", "password", "sslmode")
    )
    say(
        f"\n{TABLE} is served until Ctrl-C. In another shell, in {ROOT}, set the connection "
        "(events/first_sync.json already names the table, cursor and primary key):\n"
    )
    say(f"export {exports}")
    say("\nthen run, for example:\n")
    say(".venv/bin/python lambda_function.py events/first_sync.json --all --no-rows")
    say("\nWaiting (Ctrl-C to stop the server and remove its files) ...")
    while True:
        signal.pause()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="demo.sh",
        description="Copy a realistic table from a throwaway PostgreSQL through "
        "lambda_handler into a local DuckDB file, exactly as Fivetran would, and prove the copy "
        "with checksums.",
    )
    parser.add_argument(
        "--rows", type=int, default=200_000, help="rows in public.orders (default: 200000)"
    )
    parser.add_argument("--limit", type=int, help="the 'limit' setting (rows per response)")
    parser.add_argument("--max-response-bytes", type=int, help="the 'max_response_bytes' setting")
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
        help="only start the server and fill the table, print the REDSHIFT_LAMBDA_* settings "
        "to run lambda_function.py against it, and wait for Ctrl-C",
    )
    args = parser.parse_args(argv)
    if args.rows < 10:
        parser.error("--rows must be at least 10")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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
                with fresh_duckdb(args.duckdb) as warehouse:
                    status = demo(server, args, warehouse)
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
