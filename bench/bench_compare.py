"""Throughput against other readers of the same table, in one run, as ratios (issue 18).

Usage: python bench/bench_compare.py [--rows N] [--write]

On a throwaway PostgreSQL, for a narrow table (bench.py's) and a wide one (the same plus an
80-character text column): a full sync through ``lambda_handler`` as the Lambda runtime sends it
(the handler returns the finished JSON document as bytes), psql ``\\copy`` to a pipe, the seed
tutorial's function (bench/seed_baseline.py), and dlt's ``sql_database`` source into DuckDB with
the pyarrow and the connectorx backends (when /work/venv-bench, or BENCH_VENV, has
requirements-bench.txt installed). Also rows scanned per row delivered
(``pg_stat_user_tables.seq_tup_read`` over a full sync) on a copy with no index on the cursor,
the stand-in for Redshift without a sort key. One run; ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.dont_write_bytecode = True
for _path in (ROOT, ROOT / "tests", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from pgserver import PostgresServer  # noqa: E402

import bench  # noqa: E402
import lambda_function as lf  # noqa: E402

DEFAULT_ROWS = 200_000
BENCH_VENV = Path(os.environ.get("BENCH_VENV", "/work/venv-bench"))
MARK_START = "<!-- compare-figures:start -->"
MARK_END = "<!-- compare-figures:end -->"
INTRO = (
    "## Against other readers (bench/bench_compare.py)\n\n"
    "Narrow and wide tables, every reader in one run; see the script's docstring."
)
GOALS = {"psql": {"narrow": 0.5, "wide": 0.25}, "dlt pyarrow": 2.0, "dlt connectorx": 0.7}


def add_wide_column(server: PostgresServer, table: str) -> None:
    server.execute(
        f"ALTER TABLE {table} ADD COLUMN note varchar(80) "
        "DEFAULT left(repeat(md5(random()::text), 3), 80)"
    )
    server.execute(f"VACUUM ANALYZE {table}")


def handler_sync(server: PostgresServer, rows: int) -> bench.Reading:
    run = bench.HandlerRun()
    for _ in bench.handler_calls(server, rows, run):
        pass
    assert run.unique_rows == rows and run.duplicates == 0, (run.unique_rows, run.duplicates)
    return bench.Reading("lambda_handler, bytes as the runtime sends them", run.rows, run.seconds)


def seed_sync(server: PostgresServer, rows: int) -> bench.Reading:
    seed = bench.SeedRun("seed tutorial, print to /dev/null", bench.DEFAULT_SEED_LIMIT, rows)
    for _ in bench.seed_calls(server, seed, keep_print=True, max_rows=rows):
        pass
    return seed.reading


def dlt_pass(server: PostgresServer, backend: str, workdir: str) -> bench.Reading | str:
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        return f"not run: no {python} (pip install -r requirements-bench.txt there)"
    scheme = "postgresql+psycopg2"  # SQLAlchemy 2.1 would pick psycopg 3 for "postgresql"
    url = (
        f"{scheme}://{server.user}:{server.password}@{server.host}:{server.port}/{server.database}"
    )
    result = subprocess.run(
        [str(python), str(ROOT / "bench" / "dlt_reader.py"), url, bench.TABLE, backend, workdir],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env={**os.environ, "DO_NOT_TRACK": "1", "RUNTIME__DLTHUB_TELEMETRY": "false"},
    )
    if result.returncode != 0:
        return f"failed: {result.stderr.strip().splitlines()[-1][:200] if result.stderr else ''}"
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    return bench.Reading(f"dlt sql_database, {backend} backend, into DuckDB", **figures)


def scanned_per_row(server: PostgresServer, rows: int) -> float:
    """seq_tup_read over a full sync of a copy with a primary key but no index on the cursor."""
    source = bench.TABLE
    copy = f"{source}_nosortkey"
    server.execute(f"DROP TABLE IF EXISTS {copy}")
    server.execute(f"CREATE TABLE {copy} AS SELECT * FROM {source}")
    server.execute(f"ALTER TABLE {copy} ADD PRIMARY KEY (id)")
    server.execute(f"VACUUM ANALYZE {copy}")

    def seq_tup_read() -> int:
        time.sleep(1.0)  # the statistics collector reports with a delay
        [[value]] = server.execute(
            f"SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = '{copy}'"
        )
        return int(value)

    before = seq_tup_read()
    bench.TABLE = copy
    try:
        reading = handler_sync(server, rows)
    finally:
        bench.TABLE = source
    return (seq_tup_read() - before) / max(1, reading.rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/bench_compare.py")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--write", action="store_true", help="rewrite its BENCHMARKS.md section")
    args = parser.parse_args(argv)
    rows = args.rows
    results: dict[str, dict[str, bench.Reading | str]] = {}
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    with PostgresServer(name="bench_compare") as server, tempfile.TemporaryDirectory() as work:
        psql = bench.find_psql(server)
        scanned = 0.0
        for shape in ("narrow", "wide"):
            bench.build_table(server, rows)
            if shape == "wide":
                add_wide_column(server, bench.TABLE)
            print(f"{shape}: {rows:,} rows", flush=True)
            readers: dict[str, bench.Reading | str] = {}
            readers["handler"] = handler_sync(server, rows)
            readers["psql"] = bench.run_psql(server, psql) if psql else "not run: no psql"
            readers["seed"] = seed_sync(server, rows)
            readers["dlt pyarrow"] = dlt_pass(server, "pyarrow", work)
            readers["dlt connectorx"] = dlt_pass(server, "connectorx", work)
            for name, reading in readers.items():
                shown = reading if isinstance(reading, str) else f"{reading.rows_per_s:,.0f} rows/s"
                print(f"  {name}: {shown}", flush=True)
            results[shape] = readers
            if shape == "narrow":
                scanned = scanned_per_row(server, rows)
                print(f"  rows scanned per row delivered, no index: {scanned:.1f}", flush=True)
    report = build_report(rows, results, scanned, load_start, time.perf_counter() - started)
    print(report)
    if args.write:
        bench.write_section(
            bench.BENCHMARKS_MD, report, start=MARK_START, end=MARK_END, intro=INTRO
        )
    return 0


def build_report(
    rows: int,
    results: dict[str, dict[str, bench.Reading | str]],
    scanned: float,
    load_start: float,
    wall_s: float,
) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"### Figures ({rows:,} rows per table, {today}, one run)",
        "",
        f"- Load average (1 min): {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the "
        f"end, on {os.cpu_count()} CPUs (shared machine: the ratios hold better than the rates)",
        f"- Wall time {wall_s:.0f} s; pg8000 {bench.importlib.metadata.version('pg8000')}, "
        f"lambda_function {lf.__version__}",
        "",
        "| table | reader | rows/s | handler / reader | goal |",
        "|---|---|---|---|---|",
    ]
    for shape, readers in results.items():
        handler = readers["handler"]
        assert isinstance(handler, bench.Reading)
        for name, reading in readers.items():
            if isinstance(reading, str):
                out.append(f"| {shape} | {name} | {reading} | | |")
                continue
            ratio = handler.rows_per_s / reading.rows_per_s if reading.rows_per_s else 0.0
            goal: Any = GOALS.get(name, 5.0 if name == "seed" else None)
            if isinstance(goal, dict):
                goal = goal[shape]
            verdict = "" if goal is None else f">= {goal}x: {'met' if ratio >= goal else 'missed'}"
            label = reading.name + (f" ({reading.note})" if reading.note else "")
            shown = "1.00x" if name == "handler" else f"{ratio:.2f}x"
            out.append(f"| {shape} | {label} | {reading.rows_per_s:,.0f} | {shown} | {verdict} |")
    out += [
        "",
        f"Rows scanned per row delivered over a full sync (`seq_tup_read`, default settings, a "
        f"copy of the narrow table with no index on the cursor): {scanned:.1f}. With nothing "
        "ordering the table by the cursor, every page's query reads the whole table (a "
        "sequential scan, then a top-N sort), so a full sync reads the table once per page; "
        "with an index (on Redshift: the cursor as the leading sort key) a page reads little "
        "more than its own rows.",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
