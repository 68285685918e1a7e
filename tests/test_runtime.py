"""The built zip under the real Lambda runtime client (issue 18): ``python -m awslambdaric
lambda_function.lambda_handler`` with AWS_LAMBDA_RUNTIME_API pointing at a loopback stand-in
(tests/runtimeapi.py) and the unzipped package as its only code. The handler returns the
finished JSON document as bytes, which the runtime posts unchanged."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, remember_row_values, secrets_for
from runtimeapi import RuntimeApi

import lambda_function as lf


@pytest.fixture(scope="module")
def task_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deployment zip, built by build_zip.sh and unzipped: the function's only code."""
    build = tmp_path_factory.mktemp("runtime_build")
    result = subprocess.run(
        ["bash", str(ROOT / "build_zip.sh"), "--output", str(build / "function.zip")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"build_zip.sh failed:\n{result.stdout}\n{result.stderr}"
    root = build / "task"
    with zipfile.ZipFile(build / "function.zip") as zf:
        zf.extractall(root)
    return root


@contextlib.contextmanager
def run_runtime(task_root: Path, api: RuntimeApi, **env: str) -> Iterator[None]:
    """The runtime client, as Lambda starts it: its working directory (first on sys.path)
    is the unzipped package; no PYTHONPATH, so lambda_function and pg8000 come from there."""
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "LAMBDA_TASK_ROOT": str(task_root),
        "AWS_LAMBDA_FUNCTION_NAME": "redshift-lambda",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "PYTHONDONTWRITEBYTECODE": "1",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "awslambdaric", "lambda_function.lambda_handler"],
        cwd=task_root,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.kill()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def runtime(task_root: Path) -> Iterator[RuntimeApi]:
    with RuntimeApi() as api, run_runtime(task_root, api):
        yield api


def make_table(pg: Any, table: str, rows: int, width: int) -> None:
    pg.execute(
        f"CREATE TABLE {table} (id bigint primary key, updated_at timestamptz not null, "
        "amount numeric(12,2), ok boolean, f float8, note text, b bytea)"
    )
    pg.execute(
        f"INSERT INTO {table} SELECT g, timestamptz '2024-01-01' + (g / 7) * interval '1 s', "
        f"g * 1.25, g % 2 = 0, g / 3.0, repeat('é\"', g % 3) || repeat('x', {width}), "
        f"decode(md5(g::text), 'hex') FROM generate_series(1, {rows}) g"
    )


def test_runtime_posts_the_bytes_the_dict_path_parses_to(runtime, pg, table_name) -> None:  # type: ignore[no-untyped-def]
    """The response the runtime posts is the handler's bytes, unchanged: strict JSON that
    parses to exactly the dict ``run_invocation`` returns for the same request, written as
    ``json.dumps`` writes that dict, inside the budget and the 6,291,556-byte cap."""
    make_table(pg, table_name, 60_000, 90)
    secrets = secrets_for(pg, table_name, max_response_bytes="6000000")
    state: dict[str, Any] = {}
    delivered, calls = 0, 0
    while True:
        calls += 1
        request = {"state": state, "secrets": secrets}
        posted = runtime.invoke(request)
        assert posted.kind == "response", posted.body[:300]
        body = posted.body
        assert len(body) <= lf.LAMBDA_RESPONSE_LIMIT_BYTES
        assert len(body) <= 6_000_000
        got = json.loads(body)
        assert body == json.dumps(got).encode("utf-8")  # byte for byte the runtime's own form
        expected = lf.run_invocation(request, time_left_ms=900_000)
        # (a sync's start time is the clock's: the two invocations may be a second apart)
        assert got["state"].get("started", 0) - expected["state"].get("started", 0) in (-1, 0, 1)
        for response in (got, expected):
            response["state"].pop("started", None)
        assert got == expected
        rows = got["insert"][table_name]
        remember_row_values(rows)
        delivered += len(rows)
        if calls == 1:
            assert len(body) > 5_000_000  # a full response: the cap is really exercised
        state = got["state"]
        if not got["hasMore"]:
            break
    assert delivered == 60_000 and calls >= 2


def test_runtime_reports_errors_without_secrets(runtime, pg, table_name) -> None:  # type: ignore[no-untyped-def]
    """A refused login and a bad setting arrive as the runtime's errorMessage/errorType,
    naming the problem, with no password in them."""
    pg.execute(f"CREATE TABLE {table_name} (id int primary key, updated_at timestamp)")
    wrong = "Wr0ng-" + "p" * 20
    posted = runtime.invoke({"state": {}, "secrets": secrets_for(pg, table_name, password=wrong)})
    assert posted.kind == "error"
    error = posted.json()
    assert error["errorType"] == "SourceError"
    assert "authentication failed" in error["errorMessage"]
    assert wrong not in posted.body.decode() and pg.password not in posted.body.decode()

    posted = runtime.invoke({"state": {}, "secrets": secrets_for(pg, table_name, limit="lots")})
    assert posted.kind == "error"
    error = posted.json()
    assert error["errorType"] == "ConfigurationError"
    assert "limit" in error["errorMessage"]
    assert pg.password not in posted.body.decode()


def test_bytes_can_be_turned_off(task_root, pg, table_name) -> None:  # type: ignore[no-untyped-def]
    """With REDSHIFT_LAMBDA_RETURN_BYTES=false the handler returns the dict and the runtime
    serialises it: the same response."""
    make_table(pg, table_name, 500, 10)
    request = {"state": {}, "secrets": secrets_for(pg, table_name)}
    with RuntimeApi() as api, run_runtime(task_root, api, REDSHIFT_LAMBDA_RETURN_BYTES="false"):
        posted = api.invoke(request)
    assert posted.kind == "response"
    got = posted.json()
    remember_row_values(got["insert"][table_name])
    assert got == lf.run_invocation(request, time_left_ms=900_000)


def test_returns_bytes_follows_the_runtime_and_the_setting() -> None:
    assert lf.returns_bytes({"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001"})
    assert not lf.returns_bytes({})
    assert not lf.returns_bytes(
        {"AWS_LAMBDA_RUNTIME_API": "x", "REDSHIFT_LAMBDA_RETURN_BYTES": "false"}
    )
    assert lf.returns_bytes({"REDSHIFT_LAMBDA_RETURN_BYTES": "TRUE"})
    with pytest.raises(lf.ConfigurationError, match="must be true or false"):
        lf.returns_bytes({"REDSHIFT_LAMBDA_RETURN_BYTES": "yes"})
