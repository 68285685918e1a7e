"""Shared fixtures: throwaway PostgreSQL servers (one plain, one TLS-only) and table names."""

from __future__ import annotations

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

from pgserver import PostgresServer  # noqa: E402


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """A plain (no TLS) server with superuser ``admin`` and database ``test``."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def pg_tls() -> Iterator[PostgresServer]:
    """A server that accepts TLS connections only; its CA is ``pg_tls.ca_pem``."""
    with PostgresServer(tls_only=True, name="pg_tls") as server:
        yield server


@pytest.fixture
def table_name(request: pytest.FixtureRequest) -> str:
    """A unique lower-case table name for this test, e.g. ``t_test_paging_3_1a2b3c``."""
    stem = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower()).strip("_")[:40]
    return f"t_{stem}_{secrets.token_hex(3)}"
