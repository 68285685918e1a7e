"""The benchmark runs from a clone: its seed baseline lives in bench/seed_baseline.py and
behaves as Fivetran's tutorial sample does, and figures reach BENCHMARKS.md only with --write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, secrets_for

sys.path.insert(0, str(ROOT / "bench"))

import seed_baseline


def seed_sync(secrets: dict[str, str]) -> tuple[list[dict[str, Any]], int]:
    """Drive the seed function as Fivetran would: its rows, and how many calls it took."""
    state: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for calls in range(1, 100):
        response = seed_baseline.lambda_handler({"state": state, "secrets": secrets}, None)
        if not response:
            return rows, calls
        rows += response["insert"][secrets["table"]]
        state = response["state"]
        if not response["hasMore"]:
            return rows, calls
    raise AssertionError("the seed function did not finish")


def test_seed_baseline_loses_tied_rows_and_floats_decimals(pg, table_name, capsys) -> None:  # type: ignore[no-untyped-def]
    pg.execute(
        f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at timestamp, amount numeric)"
    )
    # Three rows per cursor value: pages of 2 end inside a tie group every time.
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, timestamp '2024-01-01' + (g / 3) * interval '1 s', "
        f"g + 0.10 FROM generate_series(0, 8) AS g"
    )
    secrets = secrets_for(pg, table_name, limit="2", sslmode="disable")
    rows, calls = seed_sync(secrets)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) < 9  # rows lost at page boundaries, none twice
    assert {type(row["amount"]) for row in rows} == {float}
    assert rows[0]["updated_at"] == "2024-01-01 00:00:00"  # str() of the datetime
    assert calls >= 3
    assert "'insert'" in capsys.readouterr().out  # it prints every response


def test_seed_baseline_without_echo_prints_nothing(pg, table_name, capsys) -> None:  # type: ignore[no-untyped-def]
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at timestamp)")
    pg.execute(f"INSERT INTO {table_name} VALUES (1, '2024-01-01')")
    secrets = secrets_for(pg, table_name, limit="10", sslmode="disable")
    request = {"state": {}, "secrets": secrets}
    response = seed_baseline.lambda_handler(request, None, echo=False)
    assert response["insert"] == {table_name: [{"id": 1, "updated_at": "2024-01-01 00:00:00"}]}
    assert response["state"] == {"cursor": "2024-01-01 00:00:00"} and not response["hasMore"]
    request = {"state": response["state"], "secrets": secrets}
    assert seed_baseline.lambda_handler(request, None, echo=False) == {}
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_bench_prints_figures_and_writes_only_with_write(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench.py"),
            "--rows",
            "3000",
            "--context-rows",
            "1000",
            "--seed-limit",
            "500",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "| Handler / seed baseline |" in result.stdout
    assert "| Rows delivered exactly once | 3,000 of 3,000 (0 duplicates) |" in result.stdout
    assert "bench/seed_baseline.py" in result.stdout
    assert not output.exists()
    assert "--write" in result.stdout.splitlines()[-1]

    # What --write does with the printed report (the same function, on a copy).
    output.write_text("# Kept\n\n<!-- figures:start -->\nold\n<!-- figures:end -->\ntail\n")
    code = (
        "import sys; sys.path.insert(0, 'bench'); import bench; from pathlib import Path; "
        f"bench.write_benchmarks_md(Path({str(output)!r}), 'new figures\\n')"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    assert output.read_text() == (
        "# Kept\n\n<!-- figures:start -->\nnew figures\n<!-- figures:end -->\n\ntail\n"
    )
