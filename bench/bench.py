"""Benchmark a full sync through lambda_function.lambda_handler on a throwaway PostgreSQL.

Usage: python bench/bench.py [--rows N] [--quick] [--write]

Builds a table (default 1,000,000 rows) on a PostgreSQL server started for the run, syncs it
through the handler exactly as Fivetran would (state fed back while hasMore), and in the same
run reads the same rows with psql's \\copy (what wire and server can deliver), with plain
pg8000, and with the seed tutorial's function (bench/seed_baseline.py). Prints the figures;
with --write also rewrites the figures section of BENCHMARKS.md. Not part of the test suite.
Needs the packages of requirements-dev.txt and PostgreSQL server binaries (see
tests/pgserver.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.dont_write_bytecode = True  # leave no __pycache__ in the checkout
for _path in (ROOT, ROOT / "tests", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import seed_baseline  # noqa: E402
from pgserver import PostgresServer  # noqa: E402

import lambda_function as lf  # noqa: E402

TABLE = "bench_orders"
DEFAULT_ROWS = 1_000_000
QUICK_ROWS = 100_000
ROWS_PER_CURSOR_VALUE = 20  # ties: about this many rows share each updated_at value
DEFAULT_SEED_LIMIT = 5_000
PG8000_PAGE_ROWS = 50_000
REMAINING_MS = 900_000
IMPORT_RUNS = 5
REPLAYS = 5  # first and last full batch invoked again, interleaved: median per row
DEFAULT_CONTEXT_ROWS = 250_000  # the slow context readers stop after about this many rows
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
MARK_START = "<!-- figures:start -->"
MARK_END = "<!-- figures:end -->"

TARGET_PSQL_RATIO = 0.25
TARGET_SEED_RATIO = 4.0
TARGET_FILL = 0.90
TARGET_SLOWDOWN = 1.5
TARGET_RSS_MB = 128.0

INTRO = """# Benchmarks

`bench/bench.py` measures a full sync of one table through `lambda_function.lambda_handler`,
invoked in-process exactly as Fivetran's AWS Lambda connector does (default settings, the
returned state fed back while `hasMore`, a context reporting 15 minutes left), against a
throwaway PostgreSQL server it starts itself (`tests/pgserver.py`). It is not part of the test
suite.

```
.venv/bin/python bench/bench.py --write    # 1,000,000 rows, a few minutes on 2 cores
.venv/bin/python bench/bench.py --quick    # 100,000 rows, a smoke run
.venv/bin/python bench/bench.py --rows 250000
```

Figures are printed; only `--write` puts them into this file.

The table: `id bigint` primary key, `updated_at timestamp` with about 20 rows per value,
`amount numeric(12,2)`, `customer varchar(64)`, `created_at timestamptz` (a few NULLs), an
index on `(updated_at, id)`, built with `generate_series` and `VACUUM ANALYZE`d.

In the same run, on the same server and machine, the same rows in the same order are read by:
`psql -c "\\copy (SELECT * ... ORDER BY updated_at, id) TO STDOUT"` (the reference: what the
server and the wire deliver), plain pg8000 (keyset pages of 50,000 rows, no dicts, no JSON)
with its default type adapters and with the handler's text adapters, for context, and the seed
tutorial's function (the algorithm of Fivetran's sample Redshift function, rewritten in
`bench/seed_baseline.py` and changed only as far as needed to run on pg8000 1.31: strict
`cursor > 'last value'` pages with `LIMIT`, values formatted into the SQL text, decimals to
float, a new connection per call; 5,000 rows per call, its print of every response sent to
/dev/null). The slowest context readers (pg8000 with default adapters, the seed without its
print) stop after `--context-rows` (250,000) rows to keep a run to a few minutes; rows/s is
what is compared. The handler's sync, the seed's sync and three psql passes (before,
halfway, after; the median counts) run interleaved in time, so a busy moment of a shared
machine slows them alike. The handler's time is the sum of its invocations (the runtime's
`json.dumps` of each response is reported apart), and "Handler is" gives its rows/s divided by
each reader's. The figures are ratios between readers measured in one run, so they compare
across machines better than absolute rows/s do; absolute numbers are for this machine only,
and noisy when other processes share it (the load average is recorded).

Also measured: each response's serialised size (`json.dumps`) against `max_response_bytes`
(fill); the time per row of the first and the last full batch (paging must not slow down as
the sync advances), re-invoked from their states five times, interleaved, median; the peak
RSS (`VmHWM`: Linux's `ru_maxrss` of a child keeps its parent's peak across fork and exec) of
one full-size invocation from mid-table in a fresh process, with and without the runtime's
serialisation of the response; and the cold import time of `lambda_function` in a fresh
process, with bytecode cached and from sources as the zip ships them (no `.pyc`). Every run
prints its figures; a run with `--write` also rewrites the section below.
"""

# One full-size invocation in a fresh process: peak RSS after import, after the call, and after
# serialising the response as the Lambda runtime does (in the same process).
RSS_SNIPPET = r"""
import json, os, resource, sys, time
sys.dont_write_bytecode = True
sys.path.insert(0, sys.argv[1])
request = json.load(sys.stdin)
def peak_kb():
    # VmHWM: the peak RSS of this process image. ru_maxrss is not used: on Linux it keeps the
    # parent's peak across fork and exec, so a child of a big process starts "big".
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start_kb = peak_kb()
import lambda_function
import_kb = peak_kb()
class Context:
    def get_remaining_time_in_millis(self):
        return 900000
os.environ["REDSHIFT_LAMBDA_RETURN_BYTES"] = "true"  # as under the Lambda runtime
t0 = time.perf_counter()
document = lambda_function.lambda_handler(request, Context())
seconds = time.perf_counter() - t0
call_kb = peak_kb()
size = len(document)  # what the runtime sends: nothing is serialised after the handler
dump_kb = peak_kb()
rows = sum(len(v) for v in json.loads(document)["insert"].values())
print(json.dumps({"start_kb": start_kb, "import_kb": import_kb, "call_kb": call_kb,
                  "dump_kb": dump_kb, "rows": rows, "bytes": size, "seconds": seconds,
                  "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

IMPORT_SNIPPET = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
import lambda_function
print(time.perf_counter() - t0)
"""

# What the zip ships besides lambda_function.py (build_zip.sh: no __pycache__, no .pyc).
ZIP_PACKAGES = ("pg8000", "scramp", "asn1crypto", "dateutil", "six")


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class Invocation:
    rows: int
    seconds: float
    bytes: int
    serialise_s: float
    has_more: bool
    state_in: dict[str, Any]


@dataclass
class HandlerRun:
    invocations: list[Invocation] = field(default_factory=list)
    unique_rows: int = 0
    duplicates: int = 0

    @property
    def rows(self) -> int:
        return sum(i.rows for i in self.invocations)

    @property
    def seconds(self) -> float:
        return sum(i.seconds for i in self.invocations)


@dataclass
class Reading:
    """One reader's pass over the table."""

    name: str
    rows: int
    seconds: float
    note: str = ""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class SeedRun:
    """The seed function's progress through the table."""

    name: str
    limit: int
    rows: int  # rows in the table
    delivered: int = 0
    calls: int = 0
    seconds: float = 0.0
    complete: bool = False
    failed: bool = False
    seen: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def reading(self) -> Reading:
        note = f"{self.limit:,} rows per call; {self.calls} calls"
        if self.complete:
            note += f"; lost {self.rows - sum(self.seen):,} tied rows at page boundaries"
        else:
            note += f"; stopped after {self.delivered:,} rows"
        return Reading(self.name, self.delivered, self.seconds, note)


@dataclass
class Replay:
    """The first and the last full batch invoked again, interleaved: median seconds per row."""

    first_call: int
    last_call: int
    first_s_per_row: float
    last_s_per_row: float


@dataclass
class Figure:
    name: str
    value: str
    target: str = "—"
    passed: bool | None = None

    @property
    def result(self) -> str:
        return "—" if self.passed is None else ("PASS" if self.passed else "MISS")


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def build_table(server: PostgresServer, rows: int) -> None:
    """The benchmark table: ~20 rows per updated_at value, ids not in updated_at order."""
    distinct = max(1, rows // ROWS_PER_CURSOR_VALUE)
    server.execute(f"DROP TABLE IF EXISTS {TABLE}")
    server.execute(
        f"""CREATE TABLE {TABLE} (
            id bigint NOT NULL PRIMARY KEY,
            updated_at timestamp NOT NULL,
            amount numeric(12,2),
            customer varchar(64),
            created_at timestamptz
        )"""
    )
    # hashint8 spreads the ids over the cursor values: tie groups of varying size (binomial
    # around 20), so pages of any size end inside a group now and then.
    server.execute(
        f"""INSERT INTO {TABLE} (id, updated_at, amount, customer, created_at)
        SELECT g, u,
            CASE WHEN g % 101 = 0 THEN NULL ELSE ((g * 7393) % 10000000) / 100.0 END,
            'customer ' || lpad(((g * 31) % 100000)::text, 5, '0') || ' '
                || left(md5(g::text), 16),
            CASE WHEN g % 53 = 0 THEN NULL
                ELSE (u - (g % 100000) * INTERVAL '1 second') AT TIME ZONE 'UTC' END
        FROM (
            SELECT g, TIMESTAMP '2023-01-01 00:00:00'
                + mod(abs(hashint8(g)::bigint), {int(distinct)}) * INTERVAL '17.123457 seconds'
                AS u
            FROM generate_series(CAST(1 AS bigint), {int(rows)}) AS g
        ) AS s"""
    )
    server.execute(f"CREATE INDEX {TABLE}_updated_at_id ON {TABLE} (updated_at, id)")
    server.execute(f"VACUUM ANALYZE {TABLE}")


def secrets_for(server: PostgresServer, **extra: str) -> dict[str, str]:
    """The connector's settings as Fivetran sends them (strings), defaults otherwise."""
    return {
        "host": server.host,
        "port": str(server.port),
        "dbname": server.database,
        "user": server.user,
        "password": server.password,
        "table": TABLE,
        "cursor": "updated_at",
        "primary_key": "id",
        "sslmode": "disable",
        **extra,
    }


class FakeContext:
    """The part of the Lambda context the handler reads."""

    def get_remaining_time_in_millis(self) -> int:
        return REMAINING_MS


def mark_ids(seen: bytearray, rows: Sequence[dict[str, Any]]) -> int:
    """Flag each row's id in ``seen``; return how many were flagged already."""
    duplicates = 0
    for row in rows:
        i = int(row["id"])
        if seen[i]:
            duplicates += 1
        seen[i] = 1
    return duplicates


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


def handler_calls(server: PostgresServer, rows: int, run: HandlerRun) -> Iterator[None]:
    """A full sync as Fivetran runs it: invoke, feed the state back, repeat while hasMore.
    Yields after each invocation (recorded in ``run``) so other readers can run in between."""
    secrets = secrets_for(server)
    seen = bytearray(rows + 1)
    state: dict[str, Any] = {}
    context = FakeContext()
    for call in range(1, 100_000):
        request = {
            "agent": "Fivetran AWS Lambda Connector/bench/bench",
            "sync_id": "bench",
            "state": state,
            "secrets": secrets,
        }
        # As under the Lambda runtime: the handler returns the finished document as bytes,
        # which the runtime sends unchanged (nothing left to serialise).
        os.environ[lf.RETURN_BYTES_ENV] = "true"
        t0 = time.perf_counter()
        document = lf.lambda_handler(request, context)
        seconds = time.perf_counter() - t0
        del os.environ[lf.RETURN_BYTES_ENV]
        assert isinstance(document, bytes)
        size, serialise_s = len(document), 0.0
        response = json.loads(document)  # for the checks only, outside the timing
        del document
        batch = response["insert"].get(TABLE, [])
        run.duplicates += mark_ids(seen, batch)
        run.invocations.append(
            Invocation(len(batch), seconds, size, serialise_s, response["hasMore"], state)
        )
        print(
            f"  handler call {call}: {len(batch):,} rows, {size:,} bytes, {seconds:.2f} s",
            flush=True,
        )
        state = response["state"]
        del response, batch
        run.unique_rows = sum(seen)
        yield
        if not run.invocations[-1].has_more:
            break


def replay_first_and_last(server: PostgresServer, run: HandlerRun) -> Replay | None:
    """Invoke the first and the last full batch again from their states, interleaved, so a
    busy moment of a shared machine does not pass for a slowdown of paging."""
    full = [n for n, c in enumerate(run.invocations) if c.has_more]
    if len(full) < 2:
        return None
    first, last = full[0], full[-1]
    secrets = secrets_for(server)
    per_row: dict[int, list[float]] = {first: [], last: []}
    for _ in range(REPLAYS):
        for n in (first, last):
            request = {"state": run.invocations[n].state_in, "secrets": secrets}
            t0 = time.perf_counter()
            response = lf.lambda_handler(request, FakeContext())
            seconds = time.perf_counter() - t0
            per_row[n].append(seconds / max(1, len(response["insert"].get(TABLE, []))))
            del response
    return Replay(
        first + 1,
        last + 1,
        statistics.median(per_row[first]),
        statistics.median(per_row[last]),
    )


def find_psql(server: PostgresServer) -> str | None:
    if server.bin_dir is not None and os.access(server.bin_dir / "psql", os.X_OK):
        return str(server.bin_dir / "psql")
    return shutil.which("psql")


def advance_seed(
    steps: Iterator[None] | None, run: SeedRun, until: int, notes: list[str]
) -> Iterator[None] | None:
    """Step the seed until it has delivered ``until`` rows; None once it has ended or failed."""
    if steps is None:
        return None
    try:
        while run.delivered < until:
            next(steps)
    except StopIteration:
        return None
    except Exception as e:  # report it, do not abort the other figures
        notes.append(f"{run.name}: failed after {run.calls} calls: {e!r}")
        print(f"note: the seed failed: {e!r}", flush=True)
        run.failed = True
        return None
    return steps


def median_reading(readings: Sequence[Reading]) -> Reading:
    """The median-time reading of several passes, noted as such."""
    ordered = sorted(readings, key=lambda r: r.seconds)
    middle = ordered[len(ordered) // 2]
    spread = ", ".join(f"{r.seconds:.2f}" for r in readings)
    return Reading(middle.name, middle.rows, middle.seconds, f"{middle.note}; median of {spread} s")


def run_psql(server: PostgresServer, psql: str) -> Reading:
    """The same rows in the same order through psql's \\copy, output counted and dropped."""
    env = {**os.environ, "PGPASSWORD": server.password, "PGSSLMODE": "disable", "PGTZ": "UTC"}
    command = [
        psql,
        "-X",
        "-q",
        "-h",
        server.host,
        "-p",
        str(server.port),
        "-U",
        server.user,
        "-d",
        server.database,
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        f"\\copy (SELECT * FROM {TABLE} ORDER BY updated_at, id) TO STDOUT",
    ]
    lines = size = 0
    t0 = time.perf_counter()
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        while chunk := process.stdout.read(1 << 20):
            lines += chunk.count(b"\n")
            size += len(chunk)
    seconds = time.perf_counter() - t0
    if process.returncode != 0:
        raise RuntimeError(f"psql exited with code {process.returncode}")
    return Reading("psql \\copy ... TO STDOUT", lines, seconds, f"{size / 1e6:,.0f} MB of text")


def run_pg8000(server: PostgresServer, *, text_adapters: bool, max_rows: int) -> Reading:
    """Plain pg8000 keyset pages of 50,000 rows (no JSON, no dicts): the driver alone, up to
    about ``max_rows`` rows."""
    select = f"SELECT * FROM {TABLE}"
    order = f"ORDER BY updated_at, id LIMIT {PG8000_PAGE_ROWS}"
    rows = 0
    stopped = False
    t0 = time.perf_counter()
    con = server.connect()
    try:
        if text_adapters:
            for oid, adapter in lf.ALL_IN_ADAPTERS.items():
                con.register_in_adapter(oid, adapter)
        page: list[list[Any]] = con.run(f"{select} {order}")
        while page:
            rows += len(page)
            if len(page) < PG8000_PAGE_ROWS:
                break
            if rows >= max_rows:
                stopped = True
                break
            last = page[-1]
            page = con.run(
                f"{select} WHERE (updated_at, id) > (CAST(:u AS timestamp), CAST(:i AS bigint)) "
                f"{order}",
                u=str(last[1]),
                i=str(last[0]),
            )
    finally:
        con.close()
    seconds = time.perf_counter() - t0
    note = "driver only" + (f"; stopped after {rows:,} rows" if stopped else "")
    if text_adapters:
        return Reading("pg8000, the handler's text adapters", rows, seconds, note)
    return Reading("pg8000, default adapters", rows, seconds, note)


# ---------------------------------------------------------------------------------------------
# The seed baseline
# ---------------------------------------------------------------------------------------------


def seed_calls(
    server: PostgresServer, run: SeedRun, *, keep_print: bool, max_rows: int
) -> Iterator[None]:
    """Drive the seed's lambda_handler as Fivetran would ({'cursor': ...} fed back while
    hasMore) until the table ends or about ``max_rows`` rows are delivered. Yields after each
    call (recorded in ``run``) so other readers can run in between."""
    handler: Callable[[dict[str, Any], Any], dict[str, Any]] = functools.partial(
        seed_baseline.lambda_handler, echo=keep_print
    )
    secrets = secrets_for(server, limit=str(run.limit))
    run.seen = bytearray(run.rows + 1)
    state: dict[str, Any] = {}
    with open(os.devnull, "w") as devnull:
        while run.calls < 100_000 and run.delivered < max_rows:
            with contextlib.redirect_stdout(devnull):  # the seed prints every response and error
                t0 = time.perf_counter()
                response = handler({"state": state, "secrets": secrets}, None)
                run.seconds += time.perf_counter() - t0
            run.calls += 1
            if not response:  # the seed returns {} when a query finds no rows
                run.complete = True
                return
            batch = response["insert"][TABLE]
            run.delivered += len(batch)
            mark_ids(run.seen, batch)
            state = response["state"]
            del batch
            if not response["hasMore"]:
                run.complete = True
                return
            del response
            yield


# ---------------------------------------------------------------------------------------------
# Fresh processes: peak RSS of one invocation, cold import time
# ---------------------------------------------------------------------------------------------


def measure_rss(request: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", RSS_SNIPPET, str(ROOT)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    measured: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured


def _import_seconds(path: Path, env: dict[str, str]) -> float:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_SNIPPET, str(path)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=path,
    )
    return float(result.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def zip_like_tree() -> Iterator[Path]:
    """lambda_function.py and its packages as the zip holds them: sources only, no bytecode."""
    with tempfile.TemporaryDirectory(prefix="bench-zip-") as tmp:
        tree = Path(tmp)
        shutil.copy2(ROOT / "lambda_function.py", tree / "lambda_function.py")
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in ZIP_PACKAGES:
            spec = importlib.util.find_spec(name)
            if spec is None:
                continue
            if spec.submodule_search_locations:
                source = Path(next(iter(spec.submodule_search_locations)))
                shutil.copytree(source, tree / name, ignore=ignore)
            elif spec.origin:
                shutil.copy2(spec.origin, tree / Path(spec.origin).name)
        yield tree


def measure_import() -> tuple[float, float]:
    """Median seconds of ``import lambda_function`` in a fresh process: bytecode cached, and
    from sources as the zip ships them (build_zip.sh strips __pycache__)."""
    with tempfile.TemporaryDirectory(prefix="bench-pycache-") as cache:
        env = {**os.environ, "PYTHONPYCACHEPREFIX": cache}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        _import_seconds(ROOT, env)  # fills the cache
        cached = statistics.median(_import_seconds(ROOT, env) for _ in range(IMPORT_RUNS))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPYCACHEPREFIX", None)
    with zip_like_tree() as tree:
        from_source = statistics.median(_import_seconds(tree, env) for _ in range(IMPORT_RUNS))
    return cached, from_source


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def machine_description(server: PostgresServer) -> list[str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    pg_version = str(server.execute("SELECT version()")[0][0])
    return [
        f"Machine: {platform.platform()}, {cpu}, {os.cpu_count()} CPUs, {memory} RAM",
        f"PostgreSQL: {pg_version}",
        f"Python: {platform.python_implementation()} {platform.python_version()}; "
        f"pg8000 {importlib.metadata.version('pg8000')}",
    ]


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _mb(kb: float) -> float:
    return kb / 1024


def build_report(
    *,
    rows: int,
    machine: list[str],
    handler: HandlerRun,
    psql: Reading | None,
    pg8000_readings: list[Reading],
    seeds: list[SeedRun],
    seed_notes: list[str],
    replay: Replay | None,
    rss: dict[str, Any],
    imports: tuple[float, float],
    wall_s: float,
) -> str:
    budget = lf.DEFAULT_MAX_RESPONSE_BYTES
    calls = handler.invocations
    handler_reading = Reading("lambda_handler, full sync", handler.rows, handler.seconds)
    rate = handler_reading.rows_per_s
    figures: list[Figure] = []
    correct = handler.unique_rows == rows and handler.duplicates == 0 and handler.rows == rows
    figures.append(
        Figure(
            "Rows delivered exactly once",
            f"{handler.unique_rows:,} of {rows:,} ({handler.duplicates:,} duplicates)",
            f"all {rows:,}",
            correct,
        )
    )
    figures.append(
        Figure(
            "Handler throughput",
            f"{rate:,.0f} rows/s ({handler.rows:,} rows in {handler.seconds:.2f} s)",
        )
    )
    if psql is not None:
        ratio = _ratio(rate, psql.rows_per_s)
        figures.append(
            Figure(
                "Handler / psql \\copy",
                f"{ratio:.2f}x ({psql.rows_per_s:,.0f} rows/s)",
                f">= {TARGET_PSQL_RATIO}x",
                ratio >= TARGET_PSQL_RATIO,
            )
        )
    else:
        figures.append(
            Figure("Handler / psql \\copy", "psql not found", f">= {TARGET_PSQL_RATIO}x")
        )
    if seeds:
        seed = seeds[0].reading
        ratio = _ratio(rate, seed.rows_per_s)
        figures.append(
            Figure(
                "Handler / seed baseline",
                f"{ratio:.1f}x ({seed.rows_per_s:,.0f} rows/s, {seed.name})",
                f">= {TARGET_SEED_RATIO:g}x",
                ratio >= TARGET_SEED_RATIO,
            )
        )
    else:
        figures.append(
            Figure("Handler / seed baseline", "seed not run", f">= {TARGET_SEED_RATIO:g}x")
        )
    figures.append(Figure("Invocations", f"{len(calls)}"))
    non_final = [c for c in calls if c.has_more]
    if non_final:
        fills = [c.bytes / budget for c in non_final]
        figures.append(
            Figure(
                "Fill of non-final responses, min / median",
                f"{min(fills):.1%} / {statistics.median(fills):.1%} ({len(fills)} responses)",
                f"every >= {TARGET_FILL:.0%}",
                min(fills) >= TARGET_FILL,
            )
        )
    else:
        figures.append(Figure("Fill of non-final responses", "no non-final response"))
    largest = max(c.bytes for c in calls)
    figures.append(
        Figure(
            "Largest response",
            f"{largest:,} bytes ({largest / budget:.1%})",
            f"<= {budget:,}",
            largest <= budget,
        )
    )
    first = calls[0]
    last_full = non_final[-1] if len(non_final) > 1 else calls[-1]
    per_row = [c.seconds / c.rows * 1e6 if c.rows else math.nan for c in (first, last_full)]
    in_sync = _ratio(per_row[1], per_row[0])
    last_index = calls.index(last_full) + 1
    in_sync_text = (
        f"call 1: {first.seconds:.2f} s, {per_row[0]:.2f} µs/row; call {last_index}: "
        f"{last_full.seconds:.2f} s, {per_row[1]:.2f} µs/row"
    )
    passed: bool | None
    if len(calls) == 1:
        slowdown, passed = math.nan, None
        value = f"one invocation only ({in_sync_text.split(';')[0]})"
    elif replay is not None:
        slowdown = _ratio(replay.last_s_per_row, replay.first_s_per_row)
        value = (
            f"{slowdown:.2f} (median of {REPLAYS} re-invocations, interleaved: call "
            f"{replay.first_call} {replay.first_s_per_row * 1e6:.2f} µs/row, call "
            f"{replay.last_call} {replay.last_s_per_row * 1e6:.2f} µs/row. In the sync: "
            f"{in_sync:.2f}, {in_sync_text})"
        )
    else:
        slowdown = in_sync
        value = f"{slowdown:.2f} ({in_sync_text})"
    if len(calls) > 1:
        passed = slowdown <= TARGET_SLOWDOWN
    figures.append(
        Figure("Batch time per row, last full / first", value, f"<= {TARGET_SLOWDOWN}", passed)
    )
    final = calls[-1]
    figures.append(
        Figure(
            "Final (partial) batch",
            f"{final.rows:,} rows, {final.bytes:,} bytes, {final.seconds:.2f} s",
        )
    )
    peak = max(rss["call_kb"], rss["dump_kb"])
    figures.append(
        Figure(
            "Peak RSS (VmHWM) of one full invocation in a fresh process",
            f"{_mb(peak):.0f} MB with the runtime's json.dumps ({_mb(rss['call_kb']):.0f} MB "
            f"after the call; {_mb(rss['import_kb']):.0f} MB after import; "
            f"{rss['rows']:,} rows, {rss['bytes']:,} bytes)",
            f"<= {TARGET_RSS_MB:g} MB",
            _mb(peak) <= TARGET_RSS_MB,
        )
    )
    figures.append(
        Figure(
            f"Cold import of lambda_function (median of {IMPORT_RUNS})",
            f"{imports[0] * 1000:.0f} ms with bytecode cached; {imports[1] * 1000:.0f} ms "
            "from sources as the zip ships them",
        )
    )
    serialise_s = sum(c.serialise_s for c in calls)
    figures.append(
        Figure(
            "Serialisation left to the runtime (the handler returns the document as bytes)",
            f"{serialise_s:.2f} s ({_ratio(serialise_s, handler.seconds):.0%} of handler time)",
        )
    )

    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"## Figures ({rows:,} rows, {today})",
        "",
        *[f"- {line}" for line in machine],
        f"- Benchmark wall time: {wall_s:.0f} s (table build and every reader included)",
        "",
        "| Figure | Value | Target | Result |",
        "|---|---|---|---|",
        *[f"| {f.name} | {f.value} | {f.target} | {f.result} |" for f in figures],
        "",
        "### Readers (same rows, same order, same run)",
        "",
        "| Reader | Rows | Seconds | Rows/s | Handler is | Note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    readings = [handler_reading]
    readings += [psql] if psql is not None else []
    readings += pg8000_readings + [s.reading for s in seeds]
    for r in readings:
        speed = _ratio(rate, r.rows_per_s)
        out.append(
            f"| {r.name} | {r.rows:,} | {r.seconds:.2f} | {r.rows_per_s:,.0f} | "
            f"{speed:.2f}x | {r.note} |"
        )
    if seed_notes:
        out += ["", "Seed baseline: " + "; ".join(seed_notes) + "."]
    out += [
        "",
        "<details><summary>Every invocation</summary>",
        "",
        "| Call | Rows | Bytes | Fill | Seconds | µs/row |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, c in enumerate(calls, 1):
        us = c.seconds / c.rows * 1e6 if c.rows else math.nan
        out.append(
            f"| {n} | {c.rows:,} | {c.bytes:,} | {c.bytes / budget:.1%} | {c.seconds:.3f} | "
            f"{us:.2f} |"
        )
    out += ["", "</details>"]
    return "\n".join(out) + "\n"


def write_section(
    path: Path,
    figures: str,
    *,
    start: str = MARK_START,
    end: str = MARK_END,
    intro: str = "",
    new_file: str = INTRO,
) -> None:
    """Replace one script's section of BENCHMARKS.md, between its markers. Without the file it
    starts from ``new_file``; without the markers the section is appended after ``intro``."""
    section = f"{start}\n{figures}{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else new_file
    first, last = text.find(start), text.find(end)
    if first != -1 and last > first:
        tail = text[last + len(end) :].lstrip("\n")
        text = text[:first] + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + (intro + "\n" if intro else "") + section
    path.write_text(text, encoding="utf-8")


def write_benchmarks_md(path: Path, figures: str) -> None:
    """This script's section (the first benchmark's)."""
    write_section(path, figures)


def print_report(
    report: str, output: Path, *, write: bool, writer: Callable[[Path, str], None]
) -> None:
    """Print the figures; with ``write`` also put them into ``output``."""
    print()
    print(report)
    if write:
        writer(output, report)
        print(f"wrote {output}")
    else:
        print(f"(printed only; --write puts these figures into {output})")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/bench.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--rows", type=int, default=DEFAULT_ROWS, help=f"table rows (default {DEFAULT_ROWS:,})"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows: a smoke run")
    parser.add_argument(
        "--seed-limit",
        type=int,
        default=DEFAULT_SEED_LIMIT,
        help=f"rows per call of the seed function (default {DEFAULT_SEED_LIMIT:,})",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=BENCHMARKS_MD,
        help="markdown file --write updates (default: BENCHMARKS.md)",
    )
    parser.add_argument(
        "--context-rows",
        type=int,
        default=DEFAULT_CONTEXT_ROWS,
        help="the slow context readers (pg8000 with default adapters, the seed without its "
        f"print) stop after about this many rows (default {DEFAULT_CONTEXT_ROWS:,})",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help="also rewrite the figures section of --output (default: print only)",
    )
    args = parser.parse_args(argv)
    rows = QUICK_ROWS if args.quick else args.rows
    if rows < 1:
        parser.error("--rows must be at least 1")

    started = time.perf_counter()
    with PostgresServer(name="bench") as server:
        print(server.describe(), flush=True)
        t0 = time.perf_counter()
        build_table(server, rows)
        print(f"table {TABLE}: {rows:,} rows built in {time.perf_counter() - t0:.1f} s", flush=True)
        machine = machine_description(server)
        load_start = os.getloadavg()[0]

        psql_path = find_psql(server)
        psql_runs: list[Reading] = []

        def psql_pass() -> None:
            if psql_path is not None:
                psql_runs.append(run_psql(server, psql_path))
                print(f"  psql: {psql_runs[-1].seconds:.2f} s", flush=True)

        seed_notes = list(seed_baseline.CHANGES)
        seeds = [SeedRun("seed tutorial, print to /dev/null", args.seed_limit, rows)]
        seed_steps: Iterator[None] | None = seed_calls(
            server, seeds[0], keep_print=True, max_rows=rows
        )

        # The handler's sync, the seed's and three psql passes interleaved in time: a busy
        # moment of a shared machine then slows every reader alike, and the ratios hold.
        print("handler: full sync (interleaved with the seed function and psql)", flush=True)
        handler = HandlerRun()
        psql_pass()
        halfway = False
        for _ in handler_calls(server, rows, handler):
            if seeds:
                seed_steps = advance_seed(seed_steps, seeds[0], handler.rows, seed_notes)
            if not halfway and handler.rows >= rows // 2:
                psql_pass()
                halfway = True
        if seeds:
            advance_seed(seed_steps, seeds[0], sys.maxsize, seed_notes)
        psql_pass()
        psql = median_reading(psql_runs) if psql_runs else None
        if psql is None:
            print("psql not found (server bin_dir or PATH): no reference", flush=True)
        replay = replay_first_and_last(server, handler)

        seeds.append(SeedRun("seed tutorial, print removed", args.seed_limit, rows))
        steps = seed_calls(server, seeds[-1], keep_print=False, max_rows=args.context_rows)
        advance_seed(steps, seeds[-1], sys.maxsize, seed_notes)
        seeds = [seed for seed in seeds if not seed.failed]
        for seed in seeds:
            print(
                f"{seed.name}: {seed.delivered:,} rows in {seed.seconds:.2f} s "
                f"({seed.calls} calls)",
                flush=True,
            )
        pg8000_readings = [
            run_pg8000(server, text_adapters=False, max_rows=args.context_rows),
            run_pg8000(server, text_adapters=True, max_rows=sys.maxsize),
        ]
        for r in pg8000_readings:
            print(f"{r.name}: {r.rows:,} rows in {r.seconds:.2f} s", flush=True)

        middle = handler.invocations[len(handler.invocations) // 2]
        rss = measure_rss({"state": middle.state_in, "secrets": secrets_for(server)})
        print(f"rss: {rss}", flush=True)
    imports = measure_import()
    print(f"import: {imports[0] * 1000:.0f} ms cached, {imports[1] * 1000:.0f} ms from source")
    machine.append(
        f"Load average (1 min): {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the "
        f"end, on {os.cpu_count()} CPUs (the machine may be shared: high load adds noise)"
    )

    report = build_report(
        rows=rows,
        machine=machine,
        handler=handler,
        psql=psql,
        pg8000_readings=pg8000_readings,
        seeds=seeds,
        seed_notes=seed_notes,
        replay=replay,
        rss=rss,
        imports=imports,
        wall_s=time.perf_counter() - started,
    )
    print_report(report, args.output, write=args.write, writer=write_benchmarks_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
