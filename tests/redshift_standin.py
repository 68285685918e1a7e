"""A Redshift stand-in for tests: what PostgreSQL cannot show, on a loopback socket.

This is a test double, not a database. It speaks enough of the PostgreSQL frontend/backend
protocol (version 3) the way Amazon Redshift does for the function's own statements to run
against it:

- startup (an SSL request is declined), then authentication by SHA-256 digest (Redshift's
  request 13) or MD5 (request 5), the parameter statuses Redshift sends, BackendKeyData;
- the extended query protocol (Parse, Bind, Describe, Execute with a row limit and
  PortalSuspended, Flush, Sync, Close) and the simple query protocol;
- RowDescription with Redshift's type OIDs, DataRow with Redshift's text output forms;
- ErrorResponse with Redshift's SQLSTATEs and messages, scripted per test.

It answers only the statements the function sends (the search_path, session settings, BEGIN,
the catalog and late-binding-view lookups, the primary key, the tables of a schema, keyset
pages and tie groups) from small scripted tables whose first column is an integer key, and
records every statement it was sent (``statements``). Anything else gets an error. It does
not parse SQL: it recognises the function's statements by their text. Where its answers come
from is said next to each (redshift_connector's source, the Redshift JDBC driver's source, the
AWS documentation); what only a real cluster can show is listed in the README.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

# Type OIDs Redshift sends (redshift_connector/utils/oids.py; the JDBC driver's Oid.java).
BOOL, INT2, INT4, INT8, TEXT, OID, NAME, CHAR = 16, 21, 23, 20, 25, 26, 19, 18
INT2_ARRAY, NAME_ARRAY = 1005, 1003
BPCHAR, VARCHAR, DATE, TIMESTAMP, TIMESTAMPTZ, TIMETZ = 1042, 1043, 1082, 1114, 1184, 1266
INTERVAL, INTERVAL_Y2M, INTERVAL_D2S = 1186, 1188, 1190
GEOMETRY, GEOGRAPHY, HLLSKETCH, SUPER, VARBYTE = 3000, 3001, 2935, 4000, 6551

# Redshift is "based on PostgreSQL 8.0.2" (AWS documentation) and reports that version; it
# names its UTF-8 client encoding UNICODE (pg8000 maps "unicode" for Amazon Redshift).
PARAMETER_STATUSES = {
    "application_name": "",
    "client_encoding": "UNICODE",
    "DateStyle": "ISO, MDY",
    "integer_datetimes": "on",
    "is_superuser": "off",
    "server_version": "8.0.2",
    "session_authorization": "",
    "TimeZone": "UTC",
}
# Settings PostgreSQL has and Redshift does not (set_config answers 42704 for them, as for any
# parameter it does not recognise: PostgreSQL 8.0's ERRCODE_UNDEFINED_OBJECT).
UNSUPPORTED_SETTINGS = ("bytea_output", "intervalstyle")

SSL_REQUEST = 80877103
PROTOCOL_3 = 196608
AUTH_OK, AUTH_MD5, AUTH_DIGEST = 0, 5, 13
DIGEST_SHA256 = 0  # the algorithm number redshift_connector maps to SHA-256

_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")


@dataclass
class Column:
    name: str
    type_oid: int
    sql_type: str  # format_type()'s text, e.g. "character varying(20)"
    not_null: bool = False


@dataclass
class Table:
    """A scripted table (or view): its first column is an integer key the pages order by."""

    schema: str
    name: str
    columns: list[Column]
    rows: list[list[str | None]]  # each value as Redshift's text output, None for NULL
    primary_key: bool = True  # declares its first column as the primary key
    late_binding: bool = False  # a view WITH NO SCHEMA BINDING: no pg_attribute rows


@dataclass
class ScriptedError:
    """An ErrorResponse sent for every statement whose text contains ``when``."""

    when: str
    code: str
    message: str
    detail: str | None = None
    severity: str = "ERROR"  # FATAL: the connection is closed after the message
    disconnect: bool = False  # close the connection without an answer (a node going away)


class StandInError(Exception):
    def __init__(
        self, code: str, message: str, detail: str | None = None, severity: str = "ERROR"
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.detail, self.severity = code, message, detail, severity


class StandInDisconnect(Exception):
    """Close the connection now, without a word."""


@dataclass
class Result:
    columns: list[tuple[str, int]] | None  # None: the statement returns no rows (NoData)
    rows: list[list[str | None]] = field(default_factory=list)
    tag: str = "SELECT"


def sha256_digest(password: bytes, salt: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """What Redshift expects for request 13 (the JDBC driver's ExtensibleDigest.encode)."""
    inner = hashlib.sha256(password + salt).digest()
    return hashlib.sha256(inner + server_nonce + client_nonce).digest()


def md5_password(password: bytes, user: bytes, salt: bytes) -> bytes:
    inner = hashlib.md5(password + user).hexdigest().encode("ascii")  # noqa: S324 (protocol)
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode("ascii")  # noqa: S324


class RedshiftStandIn:
    """The server: ``with RedshiftStandIn(tables) as rs:`` listens on ``rs.host``/``rs.port``."""

    def __init__(
        self,
        tables: Sequence[Table] = (),
        *,
        auth: str = "sha256",
        user: str = "rs_user",
        password: str = "Rs-Stand-In-Pa55word",  # noqa: S107 (a test server's)
        database: str = "dev",
        errors: Sequence[ScriptedError] = (),
        unsupported_settings: Sequence[str] = UNSUPPORTED_SETTINGS,
        digest_algorithm: int = DIGEST_SHA256,
    ) -> None:
        assert auth in ("sha256", "md5")
        self.tables = list(tables)
        self.auth, self.user, self.password, self.database = auth, user, password, database
        self.errors = list(errors)
        self.unsupported_settings = {s.lower() for s in unsupported_settings}
        self.digest_algorithm = digest_algorithm  # another number: a request no client knows
        self.host = "127.0.0.1"
        self.port = 0
        self.statements: list[str] = []  # every statement received, in order
        self.logins: list[str] = []  # the authentication each successful login used
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> RedshiftStandIn:
        listener = socket.create_server((self.host, 0))
        listener.settimeout(0.2)
        self._listener = listener
        self.port = listener.getsockname()[1]
        thread = threading.Thread(target=self._accept, name="redshift-stand-in", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def secrets(self, table: str | None, **overrides: Any) -> dict[str, Any]:
        """Connector secrets for a table of this server (as tests/helpers.secrets_for)."""
        secrets: dict[str, Any] = {
            "host": self.host,
            "port": str(self.port),
            "dbname": self.database,
            "user": self.user,
            "password": self.password,
            "table": table,
            "cursor": "id",
            "primary_key": "id",
            "sslmode": "disable",
        }
        if table is None:  # e.g. a schema selection instead
            del secrets["table"]
        secrets.update({k: v for k, v in overrides.items() if v is not None})
        for key in [k for k, v in overrides.items() if v is None]:
            secrets.pop(key, None)
        return secrets

    def _accept(self) -> None:
        while self._listener is not None:
            try:
                sock, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            thread.start()
            self._threads.append(thread)

    # -- one connection ----------------------------------------------------------------------------

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(30)
        with sock, sock.makefile("rwb") as f:
            try:
                if self._startup(f):
                    _Session(self, f).run()
            except (OSError, ConnectionError, EOFError, struct.error):
                pass  # the client went away

    def _startup(self, f: BinaryIO) -> bool:
        while True:
            length = _I32.unpack(_read(f, 4))[0]
            body = _read(f, length - 4)
            code = _I32.unpack_from(body)[0]
            if code == SSL_REQUEST:
                f.write(b"N")  # the stand-in has no TLS
                f.flush()
                continue
            if code != PROTOCOL_3:
                return False
            parts = body[4:].split(b"\x00")
            params = dict(zip(parts[0::2], parts[1::2], strict=False))
            break
        user = params.get(b"user", b"")
        password = self.password.encode("utf-8")
        if self.auth == "sha256":
            # Request 13: int32 algorithm, then the salt and the server nonce, each after its
            # int32 length (redshift_connector core.py's AUTH_REQ_DIGEST branch).
            salt, server_nonce = os.urandom(4), os.urandom(32)
            request = _I32.pack(AUTH_DIGEST) + _I32.pack(self.digest_algorithm)
            request += _I32.pack(len(salt)) + salt + _I32.pack(len(server_nonce)) + server_nonce
            _send(f, b"R", request)
            f.flush()
            try:
                code, data = _read_message(f)
            except EOFError:
                return False  # the client gave up (e.g. an algorithm it does not know)
            ok = False
            if code == b"d":
                size = _I32.unpack_from(data)[0]
                digest = data[4 : 4 + size]
                nonce_size = _I32.unpack_from(data, 4 + size)[0]
                client_nonce = data[8 + size : 8 + size + nonce_size]
                expected = sha256_digest(password, salt, server_nonce, client_nonce)
                ok = client_nonce.isdigit() and digest == expected
        else:
            salt = os.urandom(4)
            _send(f, b"R", _I32.pack(AUTH_MD5) + salt)
            f.flush()
            code, data = _read_message(f)
            ok = code == b"p" and data.rstrip(b"\x00") == md5_password(password, user, salt)
        if not ok or user.decode("utf-8", "replace") != self.user:
            _error(
                f, "28P01", f'password authentication failed for user "{user.decode()}"', "FATAL"
            )
            f.flush()
            return False
        with self._lock:
            self.logins.append(self.auth)
        _send(f, b"R", _I32.pack(AUTH_OK))
        for name, value in PARAMETER_STATUSES.items():
            if name == "session_authorization":
                value = self.user
            _send(f, b"S", name.encode() + b"\x00" + value.encode() + b"\x00")
        _send(f, b"K", _I32.pack(4242) + _I32.pack(1234))
        _send(f, b"Z", b"I")
        f.flush()
        return True

    # -- answers ---------------------------------------------------------------------------------

    def answer(self, sql: str, params: list[str | None]) -> Result:
        """The result of one statement ($1, $2... bound to ``params``)."""
        with self._lock:
            self.statements.append(sql)
        for scripted in self.errors:
            if scripted.when in sql:
                if scripted.disconnect:
                    raise StandInDisconnect
                raise StandInError(
                    scripted.code, scripted.message, scripted.detail, scripted.severity
                )
        if sql.startswith("BEGIN"):
            return Result(None, tag="BEGIN")
        if "pg_catalog.current_schemas(false)" in sql:
            return Result([("current_schemas", NAME_ARRAY)], [["{public}"]])
        if "pg_catalog.set_config(" in sql:
            return self._set_config(sql, params)
        if "pg_get_late_binding_view_cols()" in sql:
            return self._late_binding(params)
        if "JOIN pg_catalog.pg_attribute a" in sql:
            if "pg_catalog.lower(c.relname)" not in sql:  # every table of one schema
                return self._catalog([None, params[0]])
            return self._catalog(params)
        if "SELECT c.relname, con.conkey" in sql:  # the primary keys of one schema
            keyed = [t for t in self.tables if t.primary_key and t.schema == params[0]]
            return Result(
                [("relname", NAME), ("conkey", INT2_ARRAY)], [[t.name, "{1}"] for t in keyed]
            )
        if "con.conkey" in sql:
            return self._primary_key(params)
        if sql.startswith("SELECT c.relname\nFROM pg_catalog.pg_class c"):
            schema = params[0]
            names = sorted(t.name for t in self.tables if t.schema == schema)
            return Result([("relname", NAME)], [[n] for n in names])
        match = _PAGE.fullmatch(sql)
        if match:
            return self._page(match, params)
        raise StandInError("0A000", "the Redshift stand-in does not answer this statement")

    def _set_config(self, sql: str, params: list[str | None]) -> Result:
        if "'statement_timeout'" in sql:
            return Result([("set_config", TEXT)], [[params[0]]])
        names, values = params[0::2], params[1::2]
        for name in names:
            if str(name).lower() in self.unsupported_settings:
                raise StandInError("42704", f'unrecognized configuration parameter "{name}"')
        # What Redshift's set_config answers for client_encoding is unverified; its parameter
        # status says UNICODE, so the stand-in answers that too (the function takes it as UTF8).
        answered = [
            "UNICODE" if str(n).lower() == "client_encoding" else v
            for n, v in zip(names, values, strict=True)
        ]
        columns = [("set_config", TEXT)] * len(values)
        return Result(columns, [answered])

    def _table(self, name: str | None, schema: str | None) -> Iterator[Table]:
        for table in self.tables:
            if (name is None or str(name).lower() == table.name.lower()) and (
                schema is None or schema.lower() == table.schema.lower()
            ):
                yield table

    def _catalog(self, params: list[str | None]) -> Result:
        columns = [
            ("nspname", NAME),
            ("relname", NAME),
            ("attname", NAME),
            ("atttypid", OID),
            ("format_type", TEXT),
            ("attnotnull", BOOL),
            ("attnum", INT2),
            ("typtype", CHAR),
        ]
        rows: list[list[str | None]] = []
        schema = params[1] if len(params) > 1 else None
        for table in self._table(params[0], schema):
            if table.late_binding:
                continue  # Redshift keeps no pg_attribute rows for late-binding views
            for i, c in enumerate(table.columns, 1):
                rows.append(
                    [
                        table.schema,
                        table.name,
                        c.name,
                        str(c.type_oid),
                        c.sql_type,
                        *("t" if c.not_null else "f", str(i), "b"),
                    ]
                )
        return Result(columns, rows)

    def _late_binding(self, params: list[str | None]) -> Result:
        # pg_get_late_binding_view_cols(): view_schema, view_name, col_name, col_type, col_num
        # (AWS documentation of the function); col_type is format_type's text.
        columns = [
            ("view_schema", NAME),
            ("view_name", NAME),
            ("col_name", NAME),
            ("col_type", VARCHAR),
            ("col_num", INT4),
        ]
        schema = params[1] if len(params) > 1 else None
        rows: list[list[str | None]] = []
        for table in self._table(params[0], schema):
            if table.late_binding:
                for i, c in enumerate(table.columns, 1):
                    rows.append([table.schema, table.name, c.name, c.sql_type, str(i)])
        return Result(columns, rows)

    def _primary_key(self, params: list[str | None]) -> Result:
        rows = [["{1}"] for t in self._table(params[1], params[0]) if t.primary_key]
        return Result([("conkey", INT2_ARRAY)], rows)

    def _page(self, match: re.Match[str], params: list[str | None]) -> Result:
        tables = list(self._table(match["table"], match["schema"]))
        if not tables:
            raise StandInError(
                "42P01", f'relation "{match["schema"]}.{match["table"]}" does not exist'
            )
        table = tables[0]
        wanted = [name.strip('"') for name in match["columns"].split(", ")]
        at = [[c.name for c in table.columns].index(name) for name in wanted]
        rows = sorted(table.rows, key=lambda r: int(str(r[0])))
        where = match["where"] or ""
        if where:
            # Keyset conditions on the integer key alone: > (strict), >= (from a start, or
            # inclusive), = (a tie group).
            bound = int(str(params[0]))
            key = f'"{table.columns[0].name}"'
            if f"{key} > " in where:
                rows = [
                    r
                    for r in rows
                    if int(str(r[0])) > bound or (f"{key} = " in where and int(str(r[0])) == bound)
                ]
            elif f"{key} >= " in where:
                rows = [r for r in rows if int(str(r[0])) >= bound]
            else:
                rows = [r for r in rows if int(str(r[0])) == bound]
        if match["limit"]:
            rows = rows[: int(match["limit"])]
        columns = [(table.columns[i].name, table.columns[i].type_oid) for i in at]
        return Result(columns, [[r[i] for i in at] for r in rows])


_PAGE = re.compile(
    r'SELECT (?P<columns>.+?) FROM "(?P<schema>[^"]+)"\."(?P<table>[^"]+)"'
    r"(?: WHERE (?P<where>.+?))? ORDER BY .+?(?: LIMIT (?P<limit>[0-9]+))?",
    re.S,
)


class _Session:
    """One logged-in connection: the query protocols, each error skipping to the next Sync."""

    def __init__(self, server: RedshiftStandIn, f: BinaryIO) -> None:
        self.server, self.f = server, f
        self.prepared: dict[bytes, str] = {}
        self.portals: dict[bytes, tuple[Result | None, int]] = {}
        self.failed = False
        self.in_transaction = False

    def run(self) -> None:
        while True:
            code, data = _read_message(self.f)
            if code == b"X":
                return
            if code == b"S":
                self.failed = False
                _send(self.f, b"Z", b"T" if self.in_transaction else b"I")
                self.f.flush()
            elif code == b"H":
                self.f.flush()
            elif code == b"Q":
                self._simple(data[:-1].decode("utf-8"))
            elif not self.failed:
                try:
                    self._extended(code, data)
                except StandInError as e:
                    self.failed = True
                    _error(self.f, e.code, e.message, e.severity, e.detail)
                    self.f.flush()
                    if e.severity == "FATAL":
                        return
                except StandInDisconnect:
                    return

    def _extended(self, code: bytes, data: bytes) -> None:
        if code == b"P":
            name, rest = data.split(b"\x00", 1)
            query = rest.split(b"\x00", 1)[0].decode("utf-8")
            self.prepared[name] = query
            _send(self.f, b"1", b"")
        elif code == b"B":
            portal, rest = data.split(b"\x00", 1)
            statement, rest = rest.split(b"\x00", 1)
            formats = _I16.unpack_from(rest)[0]
            at = 2 + 2 * formats
            count = _I16.unpack_from(rest, at)[0]
            at += 2
            params: list[str | None] = []
            for _ in range(count):
                size = _I32.unpack_from(rest, at)[0]
                at += 4
                if size < 0:
                    params.append(None)
                else:
                    params.append(rest[at : at + size].decode("utf-8"))
                    at += size
            result = self.server.answer(self.prepared[statement], params)
            if result.tag == "BEGIN":
                self.in_transaction = True
            self.portals[portal] = (result, 0)
            _send(self.f, b"2", b"")
        elif code == b"D":
            result, _ = self.portals[data[1:].split(b"\x00", 1)[0]]
            if result is None or result.columns is None:
                _send(self.f, b"n", b"")
            else:
                _row_description(self.f, result.columns)
        elif code == b"E":
            portal = data.split(b"\x00", 1)[0]
            max_rows = _I32.unpack_from(data, len(portal) + 1)[0]
            result, sent = self.portals[portal]
            assert result is not None
            rows = result.rows[sent:] if max_rows <= 0 else result.rows[sent : sent + max_rows]
            for row in rows:
                _data_row(self.f, row)
            sent += len(rows)
            self.portals[portal] = (result, sent)
            if max_rows > 0 and sent < len(result.rows):
                _send(self.f, b"s", b"")  # PortalSuspended: the client may Execute again
            else:
                tag = result.tag if result.columns is None else f"SELECT {sent}"
                _send(self.f, b"C", tag.encode() + b"\x00")
        elif code == b"C":
            _send(self.f, b"3", b"")
        else:
            raise StandInError("08P01", f"unexpected message type {code!r}")

    def _simple(self, sql: str) -> None:
        try:
            result = self.server.answer(sql, [])
        except StandInError as e:
            _error(self.f, e.code, e.message, detail=e.detail)
        else:
            if result.columns is not None:
                _row_description(self.f, result.columns)
                for row in result.rows:
                    _data_row(self.f, row)
            tag = result.tag if result.columns is None else f"SELECT {len(result.rows)}"
            _send(self.f, b"C", tag.encode() + b"\x00")
        _send(self.f, b"Z", b"T" if self.in_transaction else b"I")
        self.f.flush()


def _read(f: BinaryIO, size: int) -> bytes:
    data = f.read(size)
    if data is None or len(data) != size:
        raise EOFError
    return data


def _read_message(f: BinaryIO) -> tuple[bytes, bytes]:
    code = _read(f, 1)
    length = _I32.unpack(_read(f, 4))[0]
    return code, _read(f, length - 4)


def _send(f: BinaryIO, code: bytes, payload: bytes) -> None:
    f.write(code + _I32.pack(len(payload) + 4) + payload)


def _row_description(f: BinaryIO, columns: list[tuple[str, int]]) -> None:
    body = bytearray(_I16.pack(len(columns)))
    for name, type_oid in columns:
        body += name.encode("utf-8") + b"\x00"
        body += struct.pack("!ihihih", 0, 0, type_oid, -1, -1, 0)
    _send(f, b"T", bytes(body))


def _data_row(f: BinaryIO, row: Sequence[str | None]) -> None:
    body = bytearray(_I16.pack(len(row)))
    for value in row:
        if value is None:
            body += _I32.pack(-1)
        else:
            data = value.encode("utf-8")
            body += _I32.pack(len(data)) + data
    _send(f, b"D", bytes(body))


def _error(
    f: BinaryIO, code: str, message: str, severity: str = "ERROR", detail: str | None = None
) -> None:
    fields = [("S", severity), ("V", severity), ("C", code), ("M", message)]
    if detail is not None:
        fields.append(("D", detail))
    body = b"".join(k.encode() + v.encode("utf-8") + b"\x00" for k, v in fields) + b"\x00"
    _send(f, b"E", body)
