"""What a full-refresh table costs per sync, against an incremental sync of the same table.

Usage: python bench/bench_full.py [--rows N] [--quick] [--write]

Builds one table (default 100,000 rows) on a throwaway PostgreSQL (tests/pgserver.py) and syncs
it through lambda_function.lambda_handler as three connectors would: full refresh by its
integer key (`id`), full refresh by a text key (`code`, 'SKU-0000001'...), and incremental by
`updated_at` (key `id`). Each connector runs an initial sync, a sync with nothing changed, and
a sync after 1% of the rows were deleted and another 1% updated. Queries are counted by
wrapping lambda_function.Source.query in this process (each statement the function sends, and
the rows it read back). Prints the figures; with --write also rewrites the full-refresh section
of BENCHMARKS.md. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.dont_write_bytecode = True  # leave no __pycache__ in the checkout
for _path in (ROOT, ROOT / "tests", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import full_scale  # noqa: E402
from pgserver import PostgresServer  # noqa: E402

import bench  # noqa: E402
import lambda_function as lf  # noqa: E402

TABLE = "bench_full"
TEXT_TABLE = "bench_full_text"  # the same table, for the text-key connector, --text-rows rows
DEFAULT_ROWS = 100_000
QUICK_ROWS = 10_000
# Past about 35,000 text keys the first invocation's state no longer fits beside a full batch
# of rows, and read_batch then gives rows back one at a time, rebuilding and re-measuring the
# state each time: measured 52 s for the first invocation at 40,000 keys (0.2 s at 30,000),
# and no end within 100 s at 100,000. So the text-key table stays below that by default.
DEFAULT_TEXT_ROWS = 30_000
REPEATS = 3  # each timed sync runs this often, interleaved across connectors; median
MARK_START = "<!-- full-refresh-figures:start -->"
MARK_END = "<!-- full-refresh-figures:end -->"
READ_ACTION = "reading rows"

CONNECTORS = {
    "full, int key": {"table": TABLE, "mode": "full", "primary_key": "id"},
    "full, text key": {"table": TEXT_TABLE, "mode": "full", "primary_key": "code"},
    "incremental": {"table": TABLE, "cursor": "updated_at", "primary_key": "id"},
    "incremental, text table": {"table": TEXT_TABLE, "cursor": "updated_at", "primary_key": "id"},
}
PAIRS = {"full, int key": "incremental", "full, text key": "incremental, text table"}

INTRO = """## Full refresh: cost per sync

`bench/bench_full.py` builds a table (100,000 rows by default: `id int` primary key, `code
text` unique, `'SKU-0000001'` ..., `updated_at`, `amount`, `customer`) and a copy of it with
30,000 rows (`--text-rows`), and syncs them through `lambda_handler` as four connectors would:
full refresh by the integer key `id` and incremental by `updated_at` (key `id`) on the first
table, full refresh by the text key `code` and incremental on the second. The text-key table is
smaller because past about 35,000 such keys the first invocation's state no longer fits beside
a full batch of rows, and the function then gives rows back one at a time, re-measuring the
state each time: the first invocation took 52 s at 40,000 text keys (0.2 s at 30,000) and had
not ended after 100 s at 100,000. Each connector runs an initial sync, a sync with nothing
changed, and a sync after 1% of the rows were deleted (`id % 100 = 37`: keys spread over the
whole table) and another 1% updated (`updated_at` moved past the last sync).
Queries are counted by wrapping `lambda_function.Source.query` in the benchmark process: every
statement the function sends (session set-up, catalog lookups, BEGIN, row pages) and the rows
each returned. State bytes are the JSON size of the state the sync's last response returns
(what Fivetran stores between syncs), and of the key set in it; "largest state in a response"
is the most any response of the sync carried (during a full sync the entry holds both the last
sync's keys and the keys seen so far). Every timed sync runs three times from the same
starting state, interleaved across the connectors; the median counts. Times are the handler's
(the runtime's `json.dumps` of each response is not in them), and the ratios compare syncs of
one table in the same run.

```
.venv/bin/python bench/bench_full.py            # 100,000 and 30,000 rows, under a minute
.venv/bin/python bench/bench_full.py --quick    # 10,000 rows
.venv/bin/python bench/bench_full.py --write    # also rewrites the section below
```
"""


@dataclass
class SyncRun:
    """One sync: invocations until hasMore is false."""

    invocations: int = 0
    seconds: float = 0.0
    queries: Counter[str] = field(default_factory=Counter)
    rows_read: int = 0
    rows_delivered: int = 0
    deletes: int = 0
    state_bytes: int = 0
    keys_bytes: int = 0
    max_state_bytes: int = 0
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def query_count(self) -> int:
        return sum(self.queries.values())


class QueryCounter:
    """Wraps lf.Source.query: counts statements by action and the rows they returned."""

    def __init__(self) -> None:
        self.run: SyncRun | None = None
        self._real = lf.Source.query

    def __enter__(self) -> QueryCounter:
        real, counter = self._real, self

        def counted(source: Any, action: str, sql: str, params: Any, *args: Any) -> Any:
            page = real(source, action, sql, params, *args)
            if counter.run is not None:
                counter.run.queries[action] += 1
                if action == READ_ACTION:
                    counter.run.rows_read += len(page.rows)
            return page

        lf.Source.query = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        lf.Source.query = self._real  # type: ignore[method-assign]


def build_table(server: PostgresServer, table: str, rows: int) -> None:
    server.execute(f"DROP TABLE IF EXISTS {table}")
    server.execute(
        f"""CREATE TABLE {table} (
            id int PRIMARY KEY,
            code text NOT NULL UNIQUE,
            updated_at timestamp NOT NULL,
            amount numeric(12,2),
            customer varchar(64)
        )"""
    )
    server.execute(
        f"""INSERT INTO {table}
        SELECT g, 'SKU-' || lpad(g::text, 7, '0'),
            TIMESTAMP '2023-01-01' + (g / 20) * INTERVAL '17 seconds',
            ((g * 7393) % 10000000) / 100.0,
            'customer ' || lpad(((g * 31) % 100000)::text, 5, '0')
        FROM generate_series(1, {int(rows)}) AS g"""
    )
    server.execute(f"CREATE INDEX {table}_updated_at_id ON {table} (updated_at, id)")
    server.execute(f"VACUUM ANALYZE {table}")


def change_table(server: PostgresServer, table: str) -> tuple[int, int]:
    """Delete 1% of the rows, spread over the table; move another 1% past the last sync."""
    [[deleted]] = server.execute(
        f"WITH d AS (DELETE FROM {table} WHERE id % 100 = 37 RETURNING 1) SELECT count(*) FROM d"
    )
    [[updated]] = server.execute(
        f"WITH u AS (UPDATE {table} SET updated_at = TIMESTAMP '2030-01-01' + id * INTERVAL "
        f"'1 second', amount = amount + 1 WHERE id % 100 = 73 RETURNING 1) "
        "SELECT count(*) FROM u"
    )
    server.execute(f"VACUUM ANALYZE {table}")
    return int(deleted), int(updated)


def secrets_for(server: PostgresServer, extra: dict[str, str]) -> dict[str, str]:
    return {
        "host": server.host,
        "port": str(server.port),
        "dbname": server.database,
        "user": server.user,
        "password": server.password,
        "sslmode": "disable",
        **extra,
    }


def sync(counter: QueryCounter, secrets: dict[str, str], state: dict[str, Any]) -> SyncRun:
    run = SyncRun()
    counter.run = run
    context = bench.FakeContext()
    try:
        for _ in range(100_000):
            request = {"sync_id": "bench-full", "state": state, "secrets": secrets}
            t0 = time.perf_counter()
            response = lf.lambda_handler(request, context)
            run.seconds += time.perf_counter() - t0
            run.invocations += 1
            run.rows_delivered += sum(map(len, response.get("insert", {}).values()))
            run.deletes += sum(map(len, response.get("delete", {}).values()))
            state = response["state"]
            run.max_state_bytes = max(run.max_state_bytes, len(json.dumps(state)))
            if not response["hasMore"]:
                break
    finally:
        counter.run = None
    run.state = state
    run.state_bytes = len(json.dumps(state))
    entry = state.get("tables", {}).get(secrets["table"], {})
    run.keys_bytes = len(json.dumps(entry["keys"])) if entry.get("keys") is not None else 0
    return run


def timed(
    counter: QueryCounter, connectors: dict[str, dict[str, str]], states: dict[str, Any]
) -> dict[str, SyncRun]:
    """Each connector's sync from its given state, REPEATS times interleaved; the first run's
    counts (the same every time) with the median time."""
    runs: dict[str, list[SyncRun]] = {name: [] for name in connectors}
    for _ in range(REPEATS):
        for name, secrets in connectors.items():
            runs[name].append(sync(counter, secrets, states[name]))
    out = {}
    for name, each in runs.items():
        first = each[0]
        first.seconds = statistics.median(r.seconds for r in each)
        out[name] = first
    return out


def _queries(run: SyncRun) -> str:
    reads = run.queries[READ_ACTION]
    return f"{run.query_count} ({reads} row pages, {run.query_count - reads} other)"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b > 0 else "—"


def build_report(
    *,
    rows: int,
    text_rows: int,
    machine: list[str],
    phases: dict[str, dict[str, SyncRun]],
    changes: tuple[int, int, int, int],
    wall_s: float,
) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    deleted, updated, text_deleted, text_updated = changes
    out = [
        f"### Figures ({rows:,} rows; text-key table {text_rows:,} rows; {stamp})",
        "",
        f"- The change: {deleted:,} rows deleted and {updated:,} updated ({text_deleted:,} and "
        f"{text_updated:,} in the text-key table)",
        *[f"- {line}" for line in machine],
        f"- Benchmark wall time: {wall_s:.0f} s",
        "",
        "| Sync | Connector | Invocations | Queries | Rows read | Rows sent | Deletes sent | "
        "State after | Key set in it | Largest state in a response | Handler s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase, runs in phases.items():
        for name, r in runs.items():
            keys = f"{r.keys_bytes:,}" if r.keys_bytes else "—"
            out.append(
                f"| {phase} | {name} | {r.invocations} | {_queries(r)} | {r.rows_read:,} | "
                f"{r.rows_delivered:,} | {r.deletes:,} | {r.state_bytes:,} | {keys} | "
                f"{r.max_state_bytes:,} | {r.seconds:.2f} |"
            )
    changed = phases["after the change"]
    unchanged = phases["nothing changed"]
    initial = phases["initial"]
    out += ["", "Per sync after the change, full refresh against incremental, same table:", ""]
    for name, pair in PAIRS.items():
        f, inc, first = changed[name], changed[pair], initial[pair]
        out.append(
            f"- **{name}**: {f.query_count - inc.query_count:+d} queries "
            f"({f.query_count} vs {inc.query_count}), {f.rows_read - inc.rows_read:+,} rows read "
            f"({f.rows_read:,}: the whole table, vs {inc.rows_read:,}); time "
            f"{_ratio(f.seconds, inc.seconds)} the incremental sync's ({f.seconds:.2f} s vs "
            f"{inc.seconds:.2f} s) and {_ratio(f.seconds, first.seconds)} the incremental "
            f"initial sync's ({first.seconds:.2f} s, all rows read); {f.deletes:,} deletes "
            f"found; state {f.state_bytes:,} bytes (nothing changed: "
            f"{unchanged[name].state_bytes:,}; incremental: {inc.state_bytes:,})."
        )
    out.append("")
    return "\n".join(out)


def write_section(path: Path, figures: str) -> None:
    """Replace this script's section of BENCHMARKS.md (append it, with its intro, if missing)."""
    bench.write_section(
        path, figures, start=MARK_START, end=MARK_END, intro=INTRO, new_file="# Benchmarks\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/bench_full.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="table rows")
    parser.add_argument(
        "--text-rows",
        type=int,
        default=DEFAULT_TEXT_ROWS,
        help=f"rows of the text-key table (default {DEFAULT_TEXT_ROWS:,}; see DEFAULT_TEXT_ROWS)",
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows")
    parser.add_argument(
        "--output", type=Path, default=bench.BENCHMARKS_MD, help="file --write updates"
    )
    parser.add_argument("--write", action="store_true", help="also rewrite BENCHMARKS.md")
    parser.add_argument(
        "--scale-keys", default="100000,1000000", help="key counts of the state figures"
    )
    parser.add_argument("--scale-deletes", type=int, default=5_000_000, help="deletes figure")
    parser.add_argument("--scale-tables", type=int, default=300, help="tables of the cost figure")
    parser.add_argument("--scale-rows", type=int, default=300, help="rows of each of them")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale figures")
    args = parser.parse_args(argv)
    if args.quick:
        args.scale_keys, args.scale_deletes, args.scale_tables, args.scale_rows = (
            "10000",
            50_000,
            30,
            30,
        )
    rows = QUICK_ROWS if args.quick else args.rows
    text_rows = min(rows, args.text_rows) if args.quick else args.text_rows
    if min(rows, text_rows) < 100:
        parser.error("--rows and --text-rows must be at least 100")

    started = time.perf_counter()
    with PostgresServer(name="bench-full") as server, QueryCounter() as counter:
        build_table(server, TABLE, rows)
        build_table(server, TEXT_TABLE, text_rows)
        machine = bench.machine_description(server)
        load_start = os.getloadavg()[0]
        connectors = {name: secrets_for(server, extra) for name, extra in CONNECTORS.items()}
        empty: dict[str, Any] = {name: {} for name in connectors}
        phases = {"initial": timed(counter, connectors, empty)}
        after_initial = {name: run.state for name, run in phases["initial"].items()}
        phases["nothing changed"] = timed(counter, connectors, after_initial)
        deleted, updated = change_table(server, TABLE)
        text_deleted, text_updated = change_table(server, TEXT_TABLE)
        phases["after the change"] = timed(counter, connectors, after_initial)
        for phase, runs in phases.items():
            for name, r in runs.items():
                print(
                    f"{phase:>16} | {name:<14} | {r.invocations} calls | {_queries(r)} | "
                    f"{r.rows_read:,} read | {r.deletes:,} deletes | {r.state_bytes:,} B | "
                    f"{r.seconds:.2f} s",
                    flush=True,
                )
        scale = None
        if not args.no_scale:
            sizes = [int(n) for n in args.scale_keys.split(",")]
            scale = full_scale.run_all(
                server, sizes, args.scale_deletes, args.scale_tables, args.scale_rows
            )
    machine.append(
        f"Load average (1 min): {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the "
        f"end, on {os.cpu_count()} CPUs (other processes add noise)"
    )
    report = build_report(
        rows=rows,
        text_rows=text_rows,
        machine=machine,
        phases=phases,
        changes=(deleted, updated, text_deleted, text_updated),
        wall_s=time.perf_counter() - started,
    )
    if scale is not None:
        report = report.rstrip("\n") + "\n\n" + "\n".join(full_scale.report(scale)) + "\n"
    bench.print_report(report, args.output, write=args.write, writer=write_section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
