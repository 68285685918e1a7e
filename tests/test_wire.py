"""The wire code's use of pg8000 internals goes through one adapter, ``PgWire``, with a
version guard (issue 18): these tests fail loudly if pg8000 moves what it relies on."""

from __future__ import annotations

import time
from typing import Any

import pg8000.native
import pytest
from helpers import secrets_for

import lambda_function as lf


def test_pg8000_has_every_internal_the_wire_uses(pg: Any) -> None:
    """On the pinned pg8000 the guard finds nothing missing, and the internals do what the
    wire code expects of them (a query through them returns rows, errors come back)."""
    config = lf.parse_config(secrets_for(pg, "t"))
    with lf.Source(config, time.monotonic() + 60, transaction=False) as source:
        assert source.con is not None and source.wire is not None
        assert lf.check_pg8000(source.con) == []
        page = lf.wire_query(source.wire, "SELECT 1, 'x'::text, NULL::int", {})
        assert page.rows == [[1, "x", None]] and page.complete
        with pytest.raises(pg8000.native.DatabaseError):
            lf.wire_query(source.wire, "SELECT 1/0", {})
        again = lf.wire_query(source.wire, "SELECT 2", {})  # the connection is ready again
        assert again.rows == [[2]]


class Bare:
    """A connection object without pg8000's internals."""


def test_a_pg8000_without_the_internals_is_refused_by_name(monkeypatch: Any) -> None:
    with pytest.raises(lf.SourceError) as caught:
        lf.PgWire(Bare())
    message = str(caught.value)
    assert "the connection has no _sock" in message and "no _usock" in message
    assert "message_types" in message
    monkeypatch.setattr(pg8000, "__version__", "9.0.0")
    with pytest.raises(lf.SourceError, match=r"pg8000 9\.0\.0 is not a version .*1\.31\.x"):
        lf.PgWire(Bare())


def test_another_pg8000_version_fails_the_connection_clearly(pg: Any, monkeypatch: Any) -> None:
    """Regression (issue 18): a pg8000 whose internals may differ is refused when the session
    starts, with a message naming the version, and the connection is closed."""
    monkeypatch.setattr(pg8000, "__version__", "1.99.0")
    config = lf.parse_config(secrets_for(pg, "t"))
    source = lf.Source(config, time.monotonic() + 60)
    with pytest.raises(lf.SourceError, match=r"pg8000 1\.99\.0 is not a version"):
        source.__enter__()
    assert source.con is None


def test_the_session_is_set_up_in_one_round_trip(pg: Any, monkeypatch: Any) -> None:
    """Regression (issue 18): the set-up took five queries in separate round trips (search
    path, settings, optional settings, BEGIN, each with its timeout); now one write and the
    answers to it, and the session is set as before."""
    sends: list[int] = []
    send = lf.PgWire.send

    def counting(self: Any, data: bytes | bytearray) -> None:
        sends.append(len(data))
        send(self, data)

    monkeypatch.setattr(lf.PgWire, "send", counting)
    config = lf.parse_config(secrets_for(pg, "t"))
    with lf.Source(config, time.monotonic() + 60) as source:
        assert len(sends) == 1
        assert source.search_path == ["public"]
        settings = source.query(
            "test",
            "SELECT current_setting('search_path'), "
            "current_setting('bytea_output'), current_setting('TimeZone'), "
            "current_setting('transaction_read_only')",
            {},
        ).rows
        assert settings == [["pg_catalog", "hex", "UTC", "on"]]


def test_an_optional_setting_the_server_lacks_fails_alone(pg: Any, monkeypatch: Any) -> None:
    """A setting the server does not know (as Redshift knows no bytea_output) is skipped; the
    other optional settings, sent in the same round trip, still apply."""
    monkeypatch.setattr(
        lf,
        "OPTIONAL_SESSION_SETTINGS",
        {"no_such_setting": "x", "bytea_output": "hex", "intervalstyle": "postgres"},
    )
    config = lf.parse_config(secrets_for(pg, "t"))
    with lf.Source(config, time.monotonic() + 60) as source:
        rows = source.query(
            "test", "SELECT current_setting('bytea_output'), current_setting('IntervalStyle')", {}
        ).rows
        assert rows == [["hex", "postgres"]]
    monkeypatch.setattr(lf, "SESSION_SETTINGS", {**lf.SESSION_SETTINGS, "no_such_setting": "x"})
    with pytest.raises(lf.SourceError, match="starting the session"):
        lf.Source(config, time.monotonic() + 60).__enter__()
