"""Packaging: the SAM template lints, and build_zip.sh makes a small, reproducible zip that
runs a full Fivetran-style sync on its own (without this checkout or the venv on sys.path)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DATE_EPOCH = "1700000000"
MAX_ZIPPED = 50 * 1024 * 1024
MAX_UNZIPPED = 250 * 1024 * 1024
ROWS = 2500


def _cfn_lint_command() -> list[str]:
    script = Path(sys.executable).parent / "cfn-lint"
    if script.exists():
        return [str(script)]
    # cfnlint has no __main__; call its console-script entry point directly.
    return [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())"]


def _build(output: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(ROOT / "build_zip.sh"), "--output", str(output)],
        cwd=output.parent,  # the script must not depend on the caller's cwd
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"build_zip.sh failed:\n{result.stdout}\n{result.stderr}"
    assert output.is_file()
    return result


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("build") / "a.zip"
    result = _build(output)
    assert str(output) in result.stdout
    return output


def test_template_lints() -> None:
    result = subprocess.run(
        [*_cfn_lint_command(), "template.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"cfn-lint:\n{result.stdout}\n{result.stderr}"


def _record_paths(zf: zipfile.ZipFile) -> set[str]:
    paths: set[str] = set()
    for name in zf.namelist():
        if re.fullmatch(r"[^/]+\.dist-info/RECORD", name):
            text = zf.read(name).decode("utf-8")
            paths.update(row[0] for row in csv.reader(io.StringIO(text)) if row)
    return paths


def test_build_is_reproducible_and_small(built_zip: Path) -> None:
    second = built_zip.with_name("b.zip")
    _build(second)
    assert built_zip.read_bytes() == second.read_bytes(), "two builds differ"

    assert built_zip.stat().st_size < MAX_ZIPPED
    with zipfile.ZipFile(built_zip) as zf:
        infos = zf.infolist()
        names = [info.filename for info in infos]
        assert sum(info.file_size for info in infos) < MAX_UNZIPPED
        assert names == sorted(names)
        assert "lambda_function.py" in names
        assert "pg8000/__init__.py" in names
        assert any(re.fullmatch(r"pg8000-[^/]+\.dist-info/METADATA", n) for n in names)
        for name in names:
            parts = name.rstrip("/").split("/")
            assert "__pycache__" not in parts, name
            assert not name.endswith((".pyc", ".pyo")), name
            assert parts[0] not in {"tests", "bin"}, name
            assert "tests" not in parts, name
            # auth=iam imports boto3 lazily: the Lambda runtime provides it, a bundled copy
            # would only shadow the runtime's (and grow the zip by megabytes).
            assert not parts[0].startswith(("boto3", "botocore", "s3transfer", "jmespath")), name
        # Nothing but lambda_function.py and the files the wheels installed.
        files = {n for n in names if not n.endswith("/")}
        assert files - {"lambda_function.py"} <= _record_paths(zf)
        assert {info.date_time for info in infos} == {(2023, 11, 14, 22, 13, 20)}
        for info in infos:
            mode = info.external_attr >> 16
            assert mode == (0o40755 if info.is_dir() else 0o100644), info.filename
    assert zipfile.ZipFile(second).testzip() is None


SYNC_SCRIPT = """
import json, os, sys
root = os.environ["ZIP_ROOT"]
sys.path[:] = [root] + [p for p in sys.path if "site-packages" not in p]
import lambda_function
import pg8000
for module in (lambda_function, pg8000):
    assert os.path.dirname(os.path.abspath(module.__file__)).startswith(root), module.__file__
secrets = json.loads(os.environ["SYNC_SECRETS"])
table = secrets["table"]
state, rows, calls, tables = {}, [], 0, set()
while True:
    calls += 1
    if calls > 200:
        raise SystemExit("no end of hasMore after 200 calls")
    r = lambda_function.lambda_handler({"state": state, "secrets": secrets}, None)
    tables.update(r["insert"])
    rows += r["insert"].get(table, [])
    state = r["state"]
    if not r["hasMore"]:
        break
ids = sorted({int(row["id"]) for row in rows}) == list(range(1, int(os.environ["SYNC_ROWS"]) + 1))
print(json.dumps({"rows": len(rows), "ids": ids, "calls": calls, "tables": sorted(tables)}))
"""


def test_zip_runs_a_full_sync_in_isolation(
    built_zip: Path, pg: Any, table_name: str, tmp_path: Path
) -> None:
    unpacked = tmp_path / "task"
    unpacked.mkdir()
    with zipfile.ZipFile(built_zip) as zf:
        zf.extractall(unpacked)

    pg.execute(
        f"CREATE TABLE {table_name} (id bigint primary key, updated_at timestamp not null, "
        "amount numeric(12,2), note text)"
    )
    # 100 rows share each updated_at value, so pages of 300 end inside runs of ties.
    pg.execute(
        f"INSERT INTO {table_name} (id, updated_at, amount, note) "
        "SELECT g, timestamp '2024-01-01' + (g / 100) * interval '1 minute', "
        f"(g * 1.25)::numeric(12,2), 'note ' || g FROM generate_series(1, {ROWS}) AS g"
    )
    secrets = {
        "host": pg.host,
        "port": str(pg.port),
        "dbname": pg.database,
        "user": pg.user,
        "password": pg.password,
        "table": table_name,
        "cursor": "updated_at",
        "primary_key": "id",
        "limit": "300",
        "sslmode": "disable",
    }
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "ZIP_ROOT": str(unpacked.resolve()),
        "SYNC_SECRETS": json.dumps(secrets),
        "SYNC_ROWS": str(ROWS),
    }
    result = subprocess.run(
        [sys.executable, "-I", "-c", SYNC_SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"sync failed:\n{result.stdout}\n{result.stderr}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rows"] == ROWS, summary
    assert summary["ids"], summary
    assert summary["calls"] >= 9, summary
    assert summary["tables"] == [table_name], summary
