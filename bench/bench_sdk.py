"""Rows/s of the Connector SDK path (connector.py) against the Lambda path, same table, same run.

Usage: python bench/bench_sdk.py [--rows N] [--batch-bytes B]

Builds bench/bench.py's table (default 100,000 rows) on a throwaway PostgreSQL, then syncs it
four ways and prints rows/s for each:

  lambda handler        lambda_handler invoked until hasMore is false (5.5 MB responses), the
                        handler's time only (as bench/bench.py measures it)
  lambda + DuckDB       the same responses, each also serialised to JSON as the Lambda runtime
                        does and applied to a DuckDB file with scripts/warehouse.py
  sdk update()          connector.update in this process with a no-op `op` (core + connector.py's
                        value formatting, no SDK)
  sdk fivetran debug    `fivetran debug` in a staged project (scripts/sdk_project.sh): the SDK's
                        own "total elapsed" (schema, update, DuckDB writes), and the wall time
                        of the whole command (with its start-up and pipreqs check)

Offline like the tests: temporary HOME with the version checks marked done, DO_NOT_TRACK=1.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.dont_write_bytecode = True
for _path in (ROOT, ROOT / "tests", ROOT / "bench", ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from pgserver import PostgresServer  # noqa: E402
from warehouse import Warehouse  # noqa: E402

import bench  # noqa: E402
import connector  # noqa: E402
import lambda_function as lf  # noqa: E402

VENV_BIN = Path(sys.executable).parent


class NullOp:
    """Takes what connector.update emits and drops it."""

    rows = 0

    def upsert(self, table: str, data: dict[str, Any]) -> None:
        self.rows += 1

    def delete(self, table: str, keys: dict[str, Any]) -> None:
        pass

    def checkpoint(self, state: dict[str, Any]) -> None:
        json.dumps(state)


def lambda_path(secrets: dict[str, str], duckdb_path: Path | None) -> tuple[int, float]:
    state: dict[str, Any] = {}
    rows, seconds = 0, 0.0
    with Warehouse(duckdb_path or ":memory:") as warehouse:
        while True:
            started = time.perf_counter()
            response = lf.lambda_handler({"state": state, "secrets": secrets}, bench.FakeContext())
            if duckdb_path is not None:
                warehouse.apply(json.loads(json.dumps(response)))
            seconds += time.perf_counter() - started
            rows += sum(map(len, response["insert"].values()))
            state = response["state"]
            if not response["hasMore"]:
                return rows, seconds


def sdk_update(secrets: dict[str, str]) -> tuple[int, float]:
    null = NullOp()
    connector.log.LOG_LEVEL = connector.log.Level.SEVERE  # the SDK's runner sets it otherwise
    real, connector.op = connector.op, null  # type: ignore[assignment]
    try:
        started = time.perf_counter()
        connector.update(secrets, {})
        return null.rows, time.perf_counter() - started
    finally:
        connector.op = real


def sdk_debug(secrets: dict[str, str], work: Path) -> tuple[int, float, float]:
    home = work / "home"
    now = str(int(time.time()) + 86_400)
    (home / ".fivetran" / "connector_sdk").mkdir(parents=True)
    (home / ".fivetran" / "connector_sdk" / "_last_version_check").write_text(now)
    (home / ".fivetran" / "connector_sdk_core").mkdir(parents=True)
    (home / ".fivetran" / "connector_sdk_core" / "_config.json").write_text(
        json.dumps({"lastVersionCheck": int(now), "licenseNoticeShown": True})
    )
    project = work / "sdk"
    subprocess.run(
        [str(ROOT / "scripts" / "sdk_project.sh"), str(project)], check=True, capture_output=True
    )
    (project / "configuration.json").write_text(json.dumps(secrets))
    env = {
        **os.environ,
        "HOME": str(home),
        "DO_NOT_TRACK": "1",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    started = time.perf_counter()
    done = subprocess.run(
        [str(VENV_BIN / "fivetran"), "debug", "--configuration", "configuration.json"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    output = done.stdout + done.stderr
    if done.returncode != 0 or "SYNC SUCCEEDED" not in output:
        raise SystemExit(f"fivetran debug failed:\n{output[-3000:]}")
    h, m, s = re.findall(r"total elapsed (\d+):(\d+):([\d.]+)", output)[-1]
    elapsed = int(h) * 3600 + int(m) * 60 + float(s)
    upserts = int(re.findall(r"Upserts\s*\|\s*(\d+)", output)[-1])
    return upserts, elapsed, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=bench.QUICK_ROWS)
    parser.add_argument("--batch-bytes", type=int, default=connector.DEFAULT_BATCH_BYTES)
    args = parser.parse_args(argv)
    with PostgresServer(name="bench_sdk") as server, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"building {args.rows:,} rows ...", file=sys.stderr)
        bench.build_table(server, args.rows)
        secrets = bench.secrets_for(server)
        sdk_secrets = {**secrets, "batch_bytes": str(args.batch_bytes)}
        figures = []
        rows, seconds = lambda_path(secrets, None)
        figures.append(("lambda handler", rows, seconds))
        rows, seconds = lambda_path(secrets, work / "lambda.duckdb")
        figures.append(("lambda + DuckDB (warehouse.py)", rows, seconds))
        rows, seconds = sdk_update(sdk_secrets)
        figures.append(("sdk update() (no-op op)", rows, seconds))
        rows, elapsed, wall = sdk_debug(sdk_secrets, work)
        figures.append(("sdk fivetran debug (SDK elapsed)", rows, elapsed))
        figures.append(("sdk fivetran debug (wall)", rows, wall))
    base = figures[0][2] / figures[0][1]
    print(
        f"{args.rows:,} rows, SDK batch_bytes={args.batch_bytes:,}, load {os.getloadavg()[0]:.1f}"
    )
    for name, rows, seconds in figures:
        print(
            f"{name:36} {rows:>9,} rows {seconds:8.2f} s {rows / seconds:>10,.0f} rows/s"
            f"  ({base / (seconds / rows):.2f}x the handler)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
