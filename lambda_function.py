"""Copy Redshift tables to Fivetran, batch after batch, exactly.

An AWS Lambda function for Fivetran's "AWS Lambda" connector (and, through ``connector.py``,
the core of a Connector SDK connector). Each invocation reads the next slice of the configured
tables, each in (cursor..., primary key...) order with a keyset query (or, for a full-refresh
table, in key order, finding the rows that disappeared), and returns it as Fivetran's JSON
response (``state``, ``insert``, ``delete``, ``schema``, ``hasMore``), or writes it to the S3
object Fivetran names. See docs/configuration.md for the settings and docs/how-it-works.md for
how it works.

Map, top to bottom (everything above "Credentials" is pure):

- Constants, Errors
- Names: identifiers parsed and quoted through one helper
- Configuration: every setting validated up front; TableSpec per table
- State: version 3, an entry per destination table; a full-refresh table's key set in parts
  (inline, or in the S3 key store: ``KeyStore``), its lifecycle in ``FullRefresh``
- SQL building: keyset pages, tie groups, catalog and session statements
- Value encoding: one Codec per base type (decode, JSON text, position text, orderability,
  tie comparison); the row transcoders generated from it per column layout (a DataRow's
  bytes straight to the row's JSON text)
- Batch assembly, the pager: ``read_batch`` (a ``_Pager``) reads one table's pages from a
  position under a byte budget, settles the end of the batch with the database, streams to a
  sink if given
- Credentials: ``login_credentials`` (password, or temporary IAM credentials from AWS)
- Database I/O: the wire protocol (one round trip per query, rows streamed in chunks under
  a byte cap; pg8000's internals only through ``PgWire``), ``RedshiftConnection`` (pg8000
  plus Redshift's SHA-256 login), ``Source`` (one read-only REPEATABLE READ session, set up in
  one round trip), catalog lookup (late-binding views too; a schema's at once)
- S3 output: ``S3Upload`` and ``JsonObjectStream`` for Fivetran's sync through S3
- Batch assembly across tables, the outputs: ``Response`` (the Lambda response, or the S3
  object's rows and the small returned response), ``serve_table``, full-refresh deletes
- Lambda handler: ``lambda_handler``, ``run_invocation`` (for callers without the Lambda
  envelope), the setup test, ``describe_tables``
- Command line: ``python lambda_function.py EVENT.json``
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import fnmatch
import functools
import gc
import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import socket
import ssl
import struct
import sys
import time
import traceback
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, TypeGuard

import pg8000.native
from pg8000.converters import PG_TYPES

__version__ = "0.1.0"

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

LAMBDA_RESPONSE_LIMIT_BYTES = 6_291_556
DEFAULT_PORT = 5439
DEFAULT_LIMIT = 100_000
MAX_LIMIT = 10_000_000
DEFAULT_MAX_RESPONSE_BYTES = 5_500_000
MAX_MAX_RESPONSE_BYTES = 6_000_000
MIN_MAX_RESPONSE_BYTES = 10_000
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_MAX_BACKFILL_S = 3600  # then a sync ends, and the next serves caught-up tables first
DEFAULT_SSLMODE = "verify-full"
SSLMODES = ("disable", "require", "verify-ca", "verify-full")
FIRST_PAGE_ROWS = 1_000  # rows read first when the state has no bytes-per-row estimate yet
MIN_PAGE_ROWS = 100
PAGE_OVERSHOOT = 1.01  # read a little more than the byte budget is expected to hold
# Rows stream from the server in chunks (Execute with a row limit), so memory is bounded by
# bytes whatever the row widths: a page keeps at most about READ_BYTES_FACTOR times the
# response budget left of the server's row bytes, and the rest of its result is never read.
FIRST_CHUNK_ROWS = 64
MAX_CHUNK_ROWS = 5_000
READ_BYTES_FACTOR = 2
READ_BYTES_SLACK = 65_536
LOCAL_RUN_TIME_MS = 900_000  # time assumed when there is no Lambda context (local runs)
TIME_MARGIN_MAX_MS = 15_000  # kept free at the end of an invocation to return cleanly
MIN_TIME_LEFT_MS = 3_000  # below this an invocation refuses to start a query
MIN_ROOM_BYTES = 2_000  # a table is served only with at least this much room left for rows
SETUP_STATE_MAX_BYTES = 32_000  # a setup test's answer echoes a state up to this size
STATE_VERSION = 3
MAX_IDENTIFIER_BYTES = 127  # Redshift's limit
MAX_SHOWN_CHARS = 60  # a bad setting's value is echoed at most this long, escaped
MAX_NAME_SHOWN = 2 * MAX_IDENTIFIER_BYTES  # a table name in a message: whole (names are no secret)
FIRST_USER_OID = 16_384  # PostgreSQL's FirstNormalObjectId: built-in types have smaller OIDs
MAX_JSON_INT_DIGITS = 4_000  # below Python's int/str conversion limit (4,300 digits)
APPLICATION_NAME = "redshift-lambda"

# Type OIDs (PostgreSQL's, which Redshift shares for the types it has).
OID_BOOL, OID_BYTEA, OID_INT8, OID_INT2, OID_INT4, OID_OID = 16, 17, 20, 21, 23, 26
OID_JSON, OID_JSONB, OID_FLOAT4, OID_FLOAT8 = 114, 3802, 700, 701
OID_TIMESTAMP, OID_TIMESTAMPTZ, OID_NUMERIC, OID_DATE = 1114, 1184, 1700, 1082
OID_INTERVAL = 1186
# Redshift's own types (OIDs from redshift_connector/utils/oids.py and the Redshift JDBC driver's
# Oid.java): interval year to month / day to second columns, SUPER, VARBYTE, GEOMETRY,
# GEOGRAPHY, HLLSKETCH; TIMETZ is PostgreSQL's.
OID_TIMETZ, OID_INTERVAL_Y2M, OID_INTERVAL_D2S = 1266, 1188, 1190
OID_SUPER, OID_VARBYTE, OID_GEOMETRY, OID_GEOGRAPHY, OID_HLLSKETCH = 4000, 6551, 3000, 3001, 2935
# Types whose values are text by nature: char, name, text, bpchar, varchar ("char" is 18).
TEXT_OIDS = frozenset({18, 19, 25, 1042, 1043})

# The settings (the connector's secrets): name -> one-line meaning. docs/configuration.md's
# table lists them.
SETTINGS: dict[str, str] = {
    "host": "Redshift endpoint host name",
    "port": "port",
    "dbname": "database name (alias: database)",
    "database": "alias of dbname",
    "user": "database user",
    "password": "password of that user",
    "table": "table or schema.table to copy (one table; or use tables / schema)",
    "cursor": "column(s) that order rows and grow when a row changes",
    "primary_key": "column(s) that identify a row (default: the table's declared key)",
    "mode": "incremental (with a cursor) or full (re-read each sync, deletes found)",
    "tables": "JSON array of tables, each with its own cursor, key, mode, destination",
    "schema": "copy every table of this schema (tables without a cursor: full refresh)",
    "include": "comma-separated name patterns (*, ?) selecting tables of schema",
    "exclude": "comma-separated name patterns (*, ?) leaving tables of schema out",
    "deletes": "soft (default: _fivetran_deleted = true) or hard",
    "s3_max_bytes": "byte budget of one S3 object (sync through S3)",
    "key_store": "s3://bucket/prefix where full tables' key sets go once too large for the state",
    "limit": "maximum rows per response",
    "max_response_bytes": "byte budget of one serialised response",
    "sslmode": "disable, require, verify-ca or verify-full",
    "sslrootcert": "PEM text of the CA certificate(s) to trust",
    "destination_table": "table name Fivetran writes to",
    "connect_timeout_s": "seconds to wait for a connection",
    "statement_timeout_s": "upper bound on one query's seconds",
    "lookback": "how far back each new sync starts (time cursors)",
    "max_backfill_s": "time a sync spends on initial loads and full re-reads once other tables "
    "are caught up (default 1h)",
    "auth": "password or iam (temporary credentials for the function's IAM role)",
    "cluster_identifier": "provisioned cluster's identifier (auth=iam)",
    "workgroup": "Redshift Serverless workgroup name (auth=iam)",
    "db_user": "database user for GetClusterCredentials (auth=iam, provisioned)",
    "db_groups": "comma-separated database groups db_user joins for the session",
    "auto_create": "true or false: create db_user if it does not exist",
    "region": "AWS region of the cluster or workgroup (auth=iam)",
}

logger = logging.getLogger("redshift_lambda")


def log_level_from_env(environ: Mapping[str, str]) -> int:
    """LOG_LEVEL (DEBUG, INFO, WARNING, ERROR) as a logging level; INFO when unset or unknown."""
    name = environ.get("LOG_LEVEL", "INFO").strip().upper()
    level = logging.getLevelNamesMapping().get(name)
    return level if isinstance(level, int) else logging.INFO


logger.setLevel(log_level_from_env(os.environ))
_log_fields: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_fields")


def log(level: int, event: str, **fields: Any) -> None:
    """Log one structured line: a JSON object with the event, the invocation's sync_id and
    ``fields``. JSON escapes every control character, so no value can forge a line. Fields are
    counts, sizes, timings and names, never a secret or a row value."""
    if logger.isEnabledFor(level):
        record = {"event": event, **_log_fields.get({}), **fields}
        logger.log(level, "%s", json.dumps(record, ensure_ascii=False, default=str))


JSONValue = Any
Row = dict[str, JSONValue]

# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class ConnectorError(Exception):
    """Base of every error this function raises on purpose."""

    logged = False  # set once the handler has logged it (the command line then stays quiet)


class ConfigurationError(ConnectorError):
    """A setting or the request is missing or malformed."""


class StateError(ConnectorError):
    """The state in the request is malformed or belongs to another configuration."""


class SourceError(ConnectorError):
    """The database could not be reached or refused a query."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class SourceTimeoutError(SourceError):
    """A query or the connection ran out of time."""


class NoPrimaryKeyError(ConfigurationError):
    """A table (or view) without a declared primary key, and none configured."""


class RowTooLargeError(ConnectorError):
    """A single row does not fit in the response byte budget."""


# ---------------------------------------------------------------------------------------------
# Names: parse the settings' identifiers, quote them through one helper
# ---------------------------------------------------------------------------------------------

_BARE_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def validate_identifier(name: str, setting: str) -> str:
    """Return ``name`` if it can be a Redshift identifier, else raise ConfigurationError."""
    if not name:
        raise ConfigurationError(f"{setting}: a name is empty; expected a column or table name")
    if "\x00" in name:
        raise ConfigurationError(f"{setting}: a name contains a NUL character, which is invalid")
    size = len(name.encode("utf-8"))
    if size > MAX_IDENTIFIER_BYTES:
        raise ConfigurationError(
            f"{setting}: a name is {size} bytes long; Redshift allows at most "
            f"{MAX_IDENTIFIER_BYTES} bytes"
        )
    return name


def quote_identifier(name: str) -> str:
    """Quote one identifier for SQL text: the only way a name enters a statement."""
    validate_identifier(name, "identifier")
    return '"' + name.replace('"', '""') + '"'


def parse_identifiers(text: str, separator: str, setting: str) -> tuple[str, ...]:
    """Split ``text`` on ``separator`` into identifiers.

    A part is a bare name (folded to lower case, as Redshift does) or a double-quoted SQL
    identifier (kept exactly; ``""`` inside stands for one ``"``).
    """
    expected = (
        'expected names like orders, public.orders or "Sales Data"."Order Lines"'
        if separator == "."
        else 'expected a comma-separated list of column names like updated_at, id or "Order Id"'
    )
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            j, chars = i + 1, []
            while True:
                if j >= n:
                    raise ConfigurationError(f"{setting}: unbalanced double quote; {expected}")
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        chars.append('"')
                        j += 2
                        continue
                    break
                chars.append(text[j])
                j += 1
            parts.append(validate_identifier("".join(chars), setting))
            i = j + 1
        else:
            j = i
            while j < n and text[j] != separator and not text[j].isspace():
                j += 1
            word = text[i:j]
            if not _BARE_IDENTIFIER.fullmatch(word):
                problem = (
                    "an empty name" if not word else "a name with characters that need quoting"
                )
                raise ConfigurationError(f"{setting}: {problem}; {expected}")
            parts.append(validate_identifier(word.lower(), setting))
            i = j
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            return tuple(parts)
        if text[i] != separator:
            raise ConfigurationError(f"{setting}: unexpected character after a name; {expected}")
        i += 1


def shown(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """A user-given value as it may appear in a message or log line: quoted, with control and
    other non-printable characters escaped (no forged log lines), cut to ``limit`` characters."""
    text = str(value)
    cut = len(text) > limit
    text = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit]
    )
    return "'" + text.replace("'", "\\'") + "'" + ("..." if cut else "")


_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_HOST_EXPECTED = (
    "expected a host name or IP address such as "
    "examplecluster.abc123xyz789.us-west-2.redshift.amazonaws.com, with no scheme, user, "
    "password or port (the port is its own setting)"
)


def parse_host(value: str) -> str:
    """The ASCII form of a host name or IP address; raise ConfigurationError otherwise.

    The value is never echoed: a host pasted as a URL may carry a password.
    """

    def bad(problem: str) -> ConfigurationError:
        return ConfigurationError(f"setting 'host' {problem}; {_HOST_EXPECTED}")

    if "://" in value:
        raise bad("looks like a URL")
    if "@" in value:
        raise bad("contains '@' (a user or password does not belong in it)")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise bad("contains a space or a control character")
    if "/" in value:
        raise bad("contains '/'")
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(value[1:-1] if value[:1] == "[" else value))
    if ":" in value:
        raise bad("contains ':'")
    name = value[:-1] if value.endswith(".") else value
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise bad("is not a valid international host name") from None
    labels = name.split(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise bad("is not a valid host name (labels of letters, digits and '-', 1 to 63 each)")
    return name


def display_name(parts: Sequence[str]) -> str:
    """The dotted, quoted-where-needed form of a name for messages and state keys."""
    return ".".join(
        p if _BARE_IDENTIFIER.fullmatch(p) and p == p.lower() else quote_identifier(p)
        for p in parts
    )


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


MODES = ("incremental", "full")
DELETE_MODES = ("soft", "hard")
TABLE_KEYS = ("table", "cursor", "primary_key", "mode", "destination")


@dataclass(frozen=True)
class TableSpec:
    """One table to copy, as configured: full tables have no cursor (they are re-read in key
    order each sync, and rows gone from the source become deletes)."""

    table: tuple[str, ...]  # (name,) or (schema, name)
    cursor: tuple[str, ...]
    primary_key: tuple[str, ...] | None  # None: the table's declared key
    mode: str
    destination: str
    selected: bool = False  # found by the schema selection (not listed in 'tables')

    @property
    def name(self) -> str:
        return display_name(self.table)


@dataclass(frozen=True)
class SchemaSelection:
    """Every table of a schema whose name matches include and not exclude."""

    schema: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]

    def selects(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.include) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.exclude
        )


@dataclass(frozen=True)
class Config:
    """Every setting, parsed and validated."""

    host: str
    port: int
    database: str
    user: str
    password: str = field(repr=False)
    tables: tuple[TableSpec, ...]  # configured one by one, in the order they are served
    selection: SchemaSelection | None  # more tables, found in the catalog
    deletes: str
    limit: int
    limit_given: bool  # syncing through S3 the default is no row limit, only s3_max_bytes
    s3_max_bytes: int
    max_response_bytes: int
    sslmode: str
    sslrootcert: str | None = field(repr=False)
    connect_timeout_s: float
    statement_timeout_s: float | None
    lookback_s: int
    auth: AuthConfig | None = None  # None: log in with user and password
    key_store: KeyStoreConfig | None = None  # None: full tables' key sets in the state only
    max_backfill_s: int = DEFAULT_MAX_BACKFILL_S


def _blank(value: Any) -> bool:
    """Whether a setting's value counts as not given: absent, null, or only blanks. The one
    rule every setting (and every key of a 'tables' item) follows."""
    return value is None or (isinstance(value, str) and not value.strip())


def _text_setting(secrets: Mapping[str, Any], key: str, *, required: bool) -> str | None:
    value = secrets.get(key)
    if _blank(value):
        if required:
            raise ConfigurationError(f"setting '{key}' is missing; expected {SETTINGS[key]}")
        return None
    if not isinstance(value, str):
        raise ConfigurationError(
            f"setting '{key}' must be a string, not {type(value).__name__}; "
            f"expected {SETTINGS[key]}"
        )
    return value.strip() if key != "password" else value


def _int_setting(secrets: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = secrets.get(key)
    if _blank(value):
        return default
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigurationError(
            f"setting '{key}' must be a whole number like \"{default}\", not {type(value).__name__}"
        )
    if isinstance(value, str):
        if not re.fullmatch(r"\s*[0-9]+\s*", value):
            raise ConfigurationError(
                f"setting '{key}' must be a whole number like \"{default}\", got {shown(value)}"
            )
        value = int(value)
    if not low <= value <= high:
        raise ConfigurationError(f"setting '{key}' must be between {low} and {high}, got {value}")
    return value


def _seconds_setting(secrets: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = secrets.get(key)
    if _blank(value):
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigurationError(f"setting '{key}' must be a number of seconds like \"30\"")
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigurationError(
            f"setting '{key}' must be a number of seconds like \"30\", got {shown(value)}"
        ) from None
    if not math.isfinite(seconds) or not 0 < seconds <= 3600:
        raise ConfigurationError(
            f"setting '{key}' must be more than 0 and at most 3600 seconds, got {shown(value)}"
        )
    return seconds


_DURATION = re.compile(r"\s*([0-9]+)\s*([smhd]?)\s*")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_s(value: Any, key: str) -> int:
    """Seconds in ``3600``, ``"3600"``, ``"90s"``, ``"15m"``, ``"2h"`` or ``"1d"``."""
    if _blank(value):
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        seconds = value
    else:
        match = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise ConfigurationError(
                f'setting \'{key}\' must be a duration like "3600", "90s", "15m", "2h" or "1d", '
                f"got {shown(value)}"
            )
        seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds > 366 * 86400:
        raise ConfigurationError(f"setting '{key}' must be at most 366 days, got {shown(value)}")
    return seconds


def parse_config(secrets: Any) -> Config:
    """Validate every setting before anything connects; raise ConfigurationError if one is bad."""
    if not isinstance(secrets, Mapping):
        raise ConfigurationError(
            "the request's 'secrets' must be an object of settings (host, dbname, user, ...)"
        )
    unknown = sorted(str(k) for k in secrets if k not in SETTINGS)
    if unknown:
        guesses = {shown(k): close_setting(k) for k in unknown[:20]}
        log(
            logging.WARNING,
            "unknown settings ignored",
            names=[shown(k) for k in unknown][:20],
            **(
                {"did_you_mean": {k: g for k, g in guesses.items() if g}}
                if any(guesses.values())
                else {}
            ),
        )

    host_text = _text_setting(secrets, "host", required=True)
    assert host_text is not None
    host = parse_host(host_text)
    auth = parse_auth(secrets, host)
    dbname = _text_setting(secrets, "dbname", required=False)
    database = _text_setting(secrets, "database", required=False)
    if dbname and database and dbname != database:
        raise ConfigurationError("settings 'dbname' and 'database' disagree; set only one of them")
    if not (dbname or database):
        raise ConfigurationError("setting 'dbname' is missing; expected the database name")
    user = _text_setting(secrets, "user", required=auth is None)
    password = _text_setting(secrets, "password", required=auth is None)

    tables, selection = parse_tables(secrets)

    sslmode = (_text_setting(secrets, "sslmode", required=False) or DEFAULT_SSLMODE).lower()
    if sslmode not in SSLMODES:
        hint = (
            " (they fall back to an unencrypted connection)"
            if sslmode in ("allow", "prefer")
            else ""
        )
        raise ConfigurationError(
            f"setting 'sslmode' must be one of {', '.join(SSLMODES)}, got {shown(sslmode)}; "
            f"'allow' and 'prefer' are not offered{hint}"
        )
    sslrootcert = _text_setting(secrets, "sslrootcert", required=False)
    if sslrootcert is not None:
        sslrootcert = normalize_pem(sslrootcert)

    config = Config(
        host=str(host),
        port=_int_setting(secrets, "port", DEFAULT_PORT, 1, 65535),
        database=str(dbname or database),
        user=str(user or ""),
        password=str(password or ""),
        tables=tables,
        selection=selection,
        deletes=_choice_setting(secrets, "deletes", DELETE_MODES),
        s3_max_bytes=_int_setting(
            secrets, "s3_max_bytes", DEFAULT_S3_MAX_BYTES, MIN_S3_MAX_BYTES, MAX_S3_MAX_BYTES
        ),
        limit=_int_setting(secrets, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        limit_given=not _blank(secrets.get("limit")),
        max_response_bytes=_int_setting(
            secrets,
            "max_response_bytes",
            DEFAULT_MAX_RESPONSE_BYTES,
            MIN_MAX_RESPONSE_BYTES,
            MAX_MAX_RESPONSE_BYTES,
        ),
        sslmode=sslmode,
        sslrootcert=sslrootcert,
        connect_timeout_s=_seconds_setting(secrets, "connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S)
        or DEFAULT_CONNECT_TIMEOUT_S,
        statement_timeout_s=_seconds_setting(secrets, "statement_timeout_s", None),
        lookback_s=parse_duration_s(secrets.get("lookback"), "lookback"),
        auth=auth,
        key_store=parse_key_store(_text_setting(secrets, "key_store", required=False)),
        max_backfill_s=parse_duration_s(secrets.get("max_backfill_s"), "max_backfill_s")
        if _text_setting(secrets, "max_backfill_s", required=False) is not None
        else DEFAULT_MAX_BACKFILL_S,
    )
    if config.sslrootcert is not None:  # fail now, before any connection, if the PEM does not load
        ssl_context(replace(config, sslmode=DEFAULT_SSLMODE))
    return config


def _choice_setting(secrets: Mapping[str, Any], key: str, choices: Sequence[str]) -> str:
    """One of ``choices`` (the first is the default), case-insensitively."""
    value = (_text_setting(secrets, key, required=False) or choices[0]).lower()
    if value not in choices:
        raise ConfigurationError(
            f"setting '{key}' must be one of {', '.join(choices)}, got {shown(value)}"
        )
    return value


def _table_spec(item: Mapping[str, Any], where: str | None) -> TableSpec:
    """A TableSpec from one table's settings. ``where`` names the table's place in 'tables'
    in every error; None for the one-table settings, whose errors name each setting."""

    def text(key: str) -> str | None:
        value = item.get(key)
        if _blank(value):
            return None
        if not isinstance(value, str):
            raise ConfigurationError(f"{label(key)} must be a string")
        return value.strip()

    def label(key: str) -> str:  # how an error names a setting of this table
        return f"setting '{key}'" if where is None else f"{where}: '{key}'"

    def names_where(key: str) -> str:
        return key if where is None else f"{where}: {key}"

    destination_key = "destination_table" if where is None else "destination"
    table_text = text("table")
    if table_text is None:
        raise ConfigurationError(f"{label('table')} is missing; expected table or schema.table")
    table = parse_identifiers(table_text, ".", names_where("table"))
    if len(table) > 2:
        raise ConfigurationError(
            f"{label('table')} has more than two parts; expected table or schema.table"
        )
    if where is not None:
        where = f"{where} ({display_name(table)})"
    cursor_text = text("cursor")
    cursor = parse_identifiers(cursor_text, ",", names_where("cursor")) if cursor_text else ()
    key_text = text("primary_key")
    primary_key = parse_identifiers(key_text, ",", names_where("primary_key")) if key_text else None
    for setting, names in (("cursor", cursor), ("primary_key", primary_key or ())):
        if len(set(names)) != len(names):
            raise ConfigurationError(f"{label(setting)} names a column twice")
    mode = (text("mode") or ("incremental" if cursor or where is None else "full")).lower()
    if mode not in MODES:
        raise ConfigurationError(
            f"{label('mode')} must be one of {', '.join(MODES)}, got {shown(mode)}"
        )
    if mode == "incremental" and not cursor:
        raise ConfigurationError(
            f"{label('cursor')} is missing; expected column(s) that order rows and grow when a "
            "row changes, e.g. updated_at (or mode full: re-read the table each sync)"
        )
    if mode == "full" and cursor:
        raise ConfigurationError(
            f"{label('cursor')} is set, but mode full reads in key order and takes no cursor; "
            "remove it or use mode incremental"
        )
    destination = text(destination_key) or table[-1]
    validate_identifier(destination, names_where(destination_key))
    return TableSpec(table, cursor, primary_key, mode, destination)


def parse_tables(
    secrets: Mapping[str, Any],
) -> tuple[tuple[TableSpec, ...], SchemaSelection | None]:
    """The configured tables: ``table`` (one, with the settings cursor, primary_key, mode,
    destination_table), or ``tables`` (a JSON array), and/or ``schema`` with patterns."""
    table_text = _text_setting(secrets, "table", required=False)
    tables_text = _text_setting(secrets, "tables", required=False)
    schema_text = _text_setting(secrets, "schema", required=False)
    if table_text and tables_text:
        raise ConfigurationError(
            "settings 'table' and 'tables' are both set; set 'table' for one table or 'tables' "
            "for several"
        )
    specs: list[TableSpec] = []
    if table_text:
        single = {
            "table": table_text,
            "cursor": _text_setting(secrets, "cursor", required=False),
            "primary_key": _text_setting(secrets, "primary_key", required=False),
            "mode": _text_setting(secrets, "mode", required=False),
            "destination_table": _text_setting(secrets, "destination_table", required=False),
        }
        specs.append(_table_spec(single, None))
    elif tables_text:
        specs.extend(_parse_tables_json(tables_text))
    if not table_text and (tables_text or schema_text):
        for key in ("cursor", "primary_key", "mode", "destination_table"):
            if _text_setting(secrets, key, required=False):
                raise ConfigurationError(
                    f"setting '{key}' belongs to setting 'table', which is not set; in "
                    "'tables' each table has its own"
                )
    selection = None
    if schema_text:
        schema = parse_identifiers(schema_text, ".", "schema")
        if len(schema) != 1:
            raise ConfigurationError("setting 'schema' must be one schema name, like public")
        include = _patterns(secrets, "include") or ("*",)
        selection = SchemaSelection(schema[0], include, _patterns(secrets, "exclude"))
    elif _text_setting(secrets, "include", required=False) or _text_setting(
        secrets, "exclude", required=False
    ):
        raise ConfigurationError("settings 'include' and 'exclude' need setting 'schema'")
    if not specs and selection is None:
        raise ConfigurationError(
            "setting 'table' is missing; expected table or schema.table to copy (or 'tables', "
            "a JSON array of tables, or 'schema' to copy every table of a schema)"
        )
    _check_destinations(specs)
    return tuple(specs), selection


def _parse_tables_json(text: str) -> list[TableSpec]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigurationError(
            f"setting 'tables' is not valid JSON ({e.msg} at character {e.pos}); expected an "
            'array like [{"table": "public.orders", "cursor": "updated_at", "primary_key": '
            '"id"}, {"table": "public.countries", "mode": "full"}]'
        ) from None
    if not isinstance(items, list) or not items:
        raise ConfigurationError(
            "setting 'tables' must be a non-empty JSON array of tables (objects with table, "
            'cursor, primary_key, mode, destination; or plain "schema.table" strings)'
        )
    specs = []
    for i, item in enumerate(items, 1):
        where = f"setting 'tables', table {i}"
        if isinstance(item, str):
            item = {"table": item}
        if not isinstance(item, Mapping):
            raise ConfigurationError(f'{where}: must be an object or a "schema.table" string')
        unknown = [k for k in item if k not in TABLE_KEYS]
        if unknown:
            raise ConfigurationError(
                f"{where}: unknown key {shown(unknown[0])}; expected {', '.join(TABLE_KEYS)}"
            )
        specs.append(_table_spec(item, where))
    return specs


def _patterns(secrets: Mapping[str, Any], key: str) -> tuple[str, ...]:
    text = _text_setting(secrets, key, required=False)
    if text is None:
        return ()
    patterns = tuple(p.strip() for p in text.split(","))
    if not all(patterns):
        raise ConfigurationError(
            f"setting '{key}' has an empty pattern; expected comma-separated name patterns "
            "like orders_*, *_archive"
        )
    return patterns


_NOT_NAME_CHARACTER = re.compile(r"[^A-Za-z0-9_]")
_LEADING_UNDERSCORES = re.compile(r"_+([a-z][a-z0-9_]*)")


def fivetran_table_name(name: str) -> str:
    """The destination table name Fivetran's naming makes of a table name ``name``.

    Fivetran's documented rules (Connector SDK troubleshooting, "Schema and upsert table names
    produce different destination tables"; its local tester implements them the same way):
    accents removed; every character but an ASCII letter, digit or ``_`` becomes ``_``;
    camelCase is split into words, as is every change between digits and other characters;
    runs of ``_`` become one; lower case; a leading digit gets a ``_`` before it; for tables,
    leading ``_`` before a letter are dropped. So ``OrderLines``, ``order_lines``,
    ``Order Lines`` and ``order-lines`` are all ``order_lines``; ``Café2`` is ``cafe_2``.
    """
    decomposed = unicodedata.normalize("NFD", name)
    text = unicodedata.normalize(
        "NFC", "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
    )
    text = _NOT_NAME_CHARACTER.sub("_", text)
    out: list[str] = []
    previous = ""
    for c in text:
        if (previous.islower() and c.isupper()) or (previous.isdigit() != c.isdigit()):
            out.append("_")  # a new word (before a leading digit too: the prefix rule)
        out.append(c.lower())
        previous = c
    text = re.sub("_+", "_", "".join(out))
    leading = _LEADING_UNDERSCORES.fullmatch(text)
    return leading.group(1) if leading else text


def _check_destinations(specs: Sequence[TableSpec]) -> None:
    """Two tables may not write to one destination table: not the same name, nor two names
    that Fivetran's naming turns into the same one (their rows would be merged)."""
    seen: dict[str, TableSpec] = {}
    for spec in specs:
        named = fivetran_table_name(spec.destination)
        other = seen.setdefault(named, spec)
        if other is not spec:
            names = [shown(n, MAX_NAME_SHOWN) for n in (other.destination, spec.destination, named)]
            same = (
                f"destination table {names[2]}"
                if other.destination == spec.destination
                else f"destination tables {names[0]} and {names[1]}, which Fivetran's naming "
                f"makes the same table {names[2]}"
            )
            raise ConfigurationError(
                f"tables {other.name} and {spec.name} both write to {same}; their rows would "
                "end up in one table: give one of them another destination ('destination' in "
                "'tables', 'destination_table' with 'table')"
            )


_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)


def normalize_pem(text: str) -> str:
    """Rebuild PEM certificates pasted into a one-line field (newlines lost or escaped)."""
    bodies = _PEM_BLOCK.findall(text.replace("\\n", "\n"))
    if not bodies:
        raise ConfigurationError(
            "setting 'sslrootcert' must hold PEM text starting with -----BEGIN CERTIFICATE-----"
        )
    blocks = []
    for body in bodies:
        b64 = "".join(body.split())
        lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
        blocks.append(
            "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"
        )
    return "".join(blocks)


def ssl_context(config: Config) -> ssl.SSLContext | bool:
    """The TLS setup for ``sslmode``; False means no TLS. Never pg8000's unverified default."""
    if config.sslmode == "disable":
        return False
    if config.sslrootcert is None:
        context = ssl.create_default_context()  # the system trust store
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and host name
        try:
            context.load_verify_locations(cadata=config.sslrootcert)
        except (ssl.SSLError, ValueError) as e:
            raise ConfigurationError(
                "setting 'sslrootcert' could not be loaded as PEM CA certificate(s)"
            ) from e
    if config.sslmode == "require" and config.sslrootcert is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif config.sslmode in ("require", "verify-ca"):  # libpq: a root certificate makes require
        # verify the chain, as verify-ca does
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
    return context


# ---------------------------------------------------------------------------------------------
# State: one entry per destination table, and which tables the current sync has finished
# ---------------------------------------------------------------------------------------------

Key = tuple[JSONValue, ...]

# Full-refresh key sets. A table's keys, in the order the database reads them, are kept in
# parts: inline in the state while small, else in the S3 key store (the key_store setting).
# Each part is one range of the next sync's re-read; a part is zlib over a compact text.
INLINE_PART_KEYS = 50_000  # keys per inline part (its settled bitmap: 6 KB at most)
STORE_PART_KEYS = 100_000  # keys per key-store object at most
TABLE_STATE_MAX_BYTES = 64_000  # a full table's entry in the state, at most
CONNECTOR_STATE_MAX_BYTES = 1_000_000  # the whole state, at most
INLINE_SET_MAX_BYTES = 24_000  # one key set kept in the state (two coexist during a sync)
INLINE_SETS_MAX_BYTES = 400_000  # every full table's key sets kept in the state, together
CONFIRM_KEYS = 2_000  # stored keys checked against the table in one query before they are deleted
REMOVE_OBJECTS = 10_000  # key-store objects of retired generations removed at a sync's start
KEY_SAMPLE_ROWS = 1_000  # keys read to estimate what a table's key set weighs
_KEYS_INT, _KEYS_TEXT = b"I", b"T"
_JSON_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def encode_keys(keys: Sequence[Key]) -> bytes:
    """A key sequence (in the database's order) as compact bytes: a one-column integer key as
    runs of consecutive values (delta-coded, NULLs counted first), any other key front-coded
    (each key's JSON text as the length it shares with the previous one, then the rest); then
    zlib. Exact: ``decode_keys`` gives the same sequence back."""
    nulls = 0
    while nulls < len(keys) and keys[nulls] == (None,):
        nulls += 1
    ints = keys[nulls:]
    if all(len(k) == 1 and type(k[0]) is int for k in ints):
        runs: list[str] = [str(nulls)]
        previous = 0
        i = 0
        while i < len(ints):
            first = last = ints[i][0]
            assert isinstance(first, int) and isinstance(last, int)
            i += 1
            while i < len(ints) and ints[i][0] == last + 1:
                last += 1
                i += 1
            runs.append(f"{first - previous}+{last - first}")
            previous = last
        return _KEYS_INT + zlib.compress(",".join(runs).encode(), 9)
    lines: list[str] = []
    before = ""
    for key in keys:
        text = _JSON_COMPACT(list(key))
        shared = len(os.path.commonprefix((before, text)))  # noqa: RUF071 (text)
        lines.append(f"{shared} {text[shared:]}")
        before = text
    return _KEYS_TEXT + zlib.compress("\n".join(lines).encode(), 9)


def decode_keys(data: bytes) -> list[Key]:
    """The keys ``encode_keys`` wrote; ValueError if ``data`` is not such bytes."""
    kind, body = data[:1], data[1:]
    try:
        text = zlib.decompress(body).decode()
    except (zlib.error, UnicodeDecodeError) as e:
        raise ValueError("not an encoded key set") from e
    keys: list[Key] = []
    if kind == _KEYS_INT:
        nulls, *runs = text.split(",")
        keys.extend([(None,)] * int(nulls))
        previous = 0
        for run in runs:
            delta, length = run.split("+")
            first = previous + int(delta)
            previous = first + int(length)
            keys.extend((k,) for k in range(first, previous + 1))
        return keys
    if kind != _KEYS_TEXT:
        raise ValueError("not an encoded key set")
    before = ""
    for line in text.split("\n") if text else ():
        shared, rest = line.split(" ", 1)
        before = before[: int(shared)] + rest
        value = json.loads(before)
        if not isinstance(value, list):
            raise ValueError("not an encoded key set")
        keys.append(tuple(value))
    return keys


def encode_bits(bits: Sequence[bool]) -> str:
    """A bitmap (which keys of a part are settled) as short text: zlib, then base64."""
    data = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            data[i >> 3] |= 1 << (i & 7)
    return base64.b64encode(zlib.compress(bytes(data), 9)).decode()


def decode_bits(text: str, count: int) -> list[bool]:
    data = zlib.decompress(base64.b64decode(text, validate=True))
    if len(data) != (count + 7) // 8:
        raise ValueError("bitmap of the wrong length")
    return [bool(data[i >> 3] & (1 << (i & 7))) for i in range(count)]


_GENERATION = re.compile(r"[0-9a-f]{16}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StoredSet:
    """Where one key set lives: ``inline`` parts (base64 of ``encode_keys``) in the state, or
    generation ``gen`` of the key store, ``parts`` objects listed by a manifest whose SHA-256 is
    ``manifest``. ``count`` keys in all, ``sizes`` the keys of each part."""

    count: int = 0
    inline: tuple[str, ...] = ()
    sizes: tuple[int, ...] = ()
    gen: str | None = None
    manifest: str | None = None

    @property
    def parts(self) -> int:
        return len(self.sizes)

    def to_json(self) -> dict[str, Any]:
        if self.gen is None:
            return {"count": self.count, "sizes": list(self.sizes), "inline": list(self.inline)}
        return {
            "count": self.count,
            "parts": self.parts,
            "gen": self.gen,
            "manifest": self.manifest,
        }

    @staticmethod
    def from_json(value: Any, what: str) -> StoredSet | None:
        if value is None:
            return None
        problem = f"'{what}' must be a key set this function wrote"
        if not isinstance(value, Mapping) or not _whole(value.get("count")):
            raise _state_error(problem)
        count = int(value["count"])
        if "gen" in value:
            gen, manifest, parts = value.get("gen"), value.get("manifest"), value.get("parts")
            if not (
                isinstance(gen, str)
                and _GENERATION.fullmatch(gen)
                and isinstance(manifest, str)
                and _DIGEST.fullmatch(manifest)
                and _whole(parts)
            ):
                raise _state_error(problem)
            # The sizes of the parts come from the (verified) manifest.
            return StoredSet(count, sizes=(0,) * int(parts), gen=gen, manifest=manifest)
        inline, sizes = value.get("inline"), value.get("sizes")
        if not (
            isinstance(inline, list)
            and all(isinstance(p, str) for p in inline)
            and isinstance(sizes, list)
            and all(_whole(s) for s in sizes)
            and len(sizes) == len(inline)
            and sum(sizes) == count
        ):
            raise _state_error(problem)
        return StoredSet(count, tuple(inline), tuple(sizes))


def _whole(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def inline_parts(keys: Sequence[Key]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``keys`` as inline parts of at most INLINE_PART_KEYS keys, and the size of each."""
    parts, sizes = [], []
    for i in range(0, len(keys), INLINE_PART_KEYS):
        chunk = keys[i : i + INLINE_PART_KEYS]
        parts.append(base64.b64encode(encode_keys(chunk)).decode())
        sizes.append(len(chunk))
    return tuple(parts), tuple(sizes)


def inline_part(stored: StoredSet, index: int) -> list[Key]:
    """The keys of one inline part, checked against the size the state gives it."""
    try:
        keys = decode_keys(base64.b64decode(stored.inline[index], validate=True))
    except ValueError:
        keys = None
    if keys is None or len(keys) != stored.sizes[index]:
        raise _state_error(f"inline key part {index} is damaged")
    return keys


@dataclass(frozen=True)
class TableState:
    """Where one table's sync stands. Position values are the server's text of each value."""

    source: str | None  # "schema.table" the entry was written for; None for a seed-style state
    cursor: tuple[str, ...]
    primary_key: tuple[str, ...]
    after: tuple[str | None, ...] | None = None  # last delivered (cursor..., key...) values
    complete: bool = False  # the response that wrote it finished the table's sync
    bytes_per_row: int | None = None  # learnt from the previous batch, sizes the next read
    start: str | None = None  # resume at leading cursor >= start (seed-style state only)
    mode: str = "incremental"
    loaded: bool = False  # a sync of the table finished once: its initial load is over
    # Full refresh (see FullRefresh): the keys the last finished sync delivered, those this
    # sync delivered so far, and where the re-read stands: the range of stored part ``part``,
    # its phase (reading or deleting) and which of the part's keys are settled (a bitmap).
    keys: StoredSet | None = None
    next: StoredSet | None = None
    phase: str = "reading"
    part: int = 0
    settled: str | None = None
    pending: tuple[Key, ...] = ()  # in memory only: keys delivered, not yet in ``next``


@dataclass(frozen=True)
class SyncState:
    """The request's state: an entry per destination table, and the tables the current sync
    has finished (every table finished: the next invocation starts a new sync)."""

    tables: dict[str, TableState] = field(default_factory=dict)
    done: tuple[str, ...] = ()
    seed: TableState | None = None  # a state written by Fivetran's sample function
    started: int | None = None  # epoch seconds the current sync began (while it goes on)


def _state_error(problem: str) -> StateError:
    return StateError(
        f"the request's state is not usable: {problem}. Expected the state this function "
        "returned earlier; to start over, re-sync the table in Fivetran (that clears the state)"
    )


def _string_list(value: Any, what: str, *, allow_null: bool = False) -> tuple[Any, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) or (allow_null and v is None) for v in value
    ):
        kind = "strings or nulls" if allow_null else "strings"
        raise _state_error(f"'{what}' must be a list of {kind}")
    return tuple(value)


def _seed_state(value: Any) -> TableState:
    """A state written by Fivetran's sample function: {"cursor": "<last cursor value>"}."""
    if isinstance(value, float) and math.isfinite(value):
        # The sample turned decimals into floats: resume from just below the float, so the
        # row it rounded (up or down) is read again rather than skipped.
        start = format(Decimal(repr(math.nextafter(value, -math.inf))), "f")
    elif isinstance(value, str | int) and not isinstance(value, bool):
        start = str(value)
    else:
        raise _state_error("the seed-style 'cursor' value must be a string or a number")
    return TableState(source=None, cursor=(), primary_key=(), start=start)


def _table_state(destination: str, entry: Any) -> TableState:
    if not isinstance(entry, Mapping):
        raise _state_error(f"the entry for {shown(destination)} must be an object")
    source = entry.get("source")
    if not isinstance(source, str):
        raise _state_error("'source' must be a string")
    after = entry.get("after")
    complete = entry.get("complete")
    if not isinstance(complete, bool):
        raise _state_error("'complete' must be true or false")
    bytes_per_row = entry.get("bytes_per_row")
    if bytes_per_row is not None and (
        not isinstance(bytes_per_row, int) or isinstance(bytes_per_row, bool) or bytes_per_row < 1
    ):
        raise _state_error("'bytes_per_row' must be a positive whole number or null")
    mode = entry.get("mode", "incremental")
    if mode not in MODES:
        raise _state_error(f"'mode' must be one of {', '.join(MODES)}")
    loaded = entry.get("loaded", complete)
    if not isinstance(loaded, bool):
        raise _state_error("'loaded' must be true or false")
    table = TableState(
        source=source,
        loaded=loaded,
        cursor=_string_list(entry.get("cursor", []), "cursor"),
        primary_key=_string_list(entry.get("primary_key"), "primary_key"),
        after=None if after is None else _string_list(after, "after", allow_null=True),
        complete=complete,
        bytes_per_row=bytes_per_row,
        mode=mode,
    )
    if mode != "full":
        return table
    if "phase" not in entry:
        return _legacy_full_entry(table, entry)
    phase, part, settled = entry.get("phase"), entry.get("part"), entry.get("settled")
    if phase not in FULL_PHASES:
        raise _state_error(f"'phase' must be one of {', '.join(FULL_PHASES)}")
    if not _whole(part):
        raise _state_error("'part' must be a whole number")
    if settled is not None and not isinstance(settled, str):
        raise _state_error("'settled' must be a string or null")
    return replace(
        table,
        keys=StoredSet.from_json(entry.get("keys"), "keys"),
        next=StoredSet.from_json(entry.get("next"), "next"),
        phase=phase,
        part=part,
        settled=settled,
    )


FULL_PHASES = ("reading", "deleting")


def _legacy_full_entry(table: TableState, entry: Mapping[str, Any]) -> TableState:
    """A full table's entry from state version 1 or 2: its whole key set (and the keys still to
    delete) as JSON. They become the stored key set, and the table's sync starts over: the
    re-read finds its deletes again (each one checked against the table)."""
    keys: list[Key] = []
    for name in ("keys", "deleting"):
        value = entry.get(name)
        if value is None:
            continue
        if (
            isinstance(value, Mapping)
            and set(value) == {"runs"}
            and isinstance(value["runs"], list)
        ):
            runs = value["runs"]
            if all(
                isinstance(r, list) and len(r) == 2 and all(type(v) is int for v in r) for r in runs
            ):
                keys.extend((k,) for a, b in runs for k in range(a, b + 1))
                continue
        if isinstance(value, Mapping) and set(value) == {"items"}:
            items = value["items"]
            if isinstance(items, list) and all(isinstance(k, list) for k in items):
                keys.extend(tuple(k) for k in items)
                continue
        raise _state_error(f"'{name}' must be a key set this function wrote")
    inline, sizes = inline_parts(keys)
    return replace(table, after=None, complete=True, keys=StoredSet(len(keys), inline, sizes))


def read_state(state: Any) -> SyncState:
    """Parse the request's state (version 2; version 1 and the sample's still resume)."""
    if state is None:
        return SyncState()
    if not isinstance(state, Mapping):
        raise _state_error(f"it is a {type(state).__name__}, not an object")
    if not state:
        return SyncState()
    if "tables" not in state and set(state) == {"cursor"}:
        return SyncState(seed=_seed_state(state["cursor"]))
    version = state.get("version")
    if version not in (1, 2, STATE_VERSION):
        raise _state_error(f"'version' must be {STATE_VERSION} (or 1 or 2, from older releases)")
    tables = state.get("tables")
    if not isinstance(tables, Mapping):
        raise _state_error("'tables' must be an object keyed by destination table")
    done = state.get("done", []) if version != 1 else []
    started = state.get("started")
    if started is not None and not _whole(started):
        raise _state_error("'started' must be a whole number of seconds")
    return SyncState(
        tables={str(d): _table_state(str(d), e) for d, e in tables.items()},
        done=_string_list(done, "done"),
        started=started,
    )


def _entry_json(table: TableState) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "source": table.source,
        "mode": table.mode,
        "cursor": list(table.cursor),
        "primary_key": list(table.primary_key),
        "after": None if table.after is None else list(table.after),
        "complete": table.complete,
        "loaded": table.loaded,
        "bytes_per_row": table.bytes_per_row,
    }
    if table.mode == "full":
        entry["keys"] = None if table.keys is None else table.keys.to_json()
        entry["next"] = _next_json(table.next, table.pending)
        entry["phase"], entry["part"], entry["settled"] = table.phase, table.part, table.settled
    return entry


def _next_json(stored: StoredSet | None, pending: Sequence[Key]) -> dict[str, Any] | None:
    """The new key set as the state will hold it once ``pending`` is written (sized exactly
    inline; in the key store the same length, its new manifest's digest not yet known)."""
    if not pending:
        return None if stored is None else stored.to_json()
    if stored is not None and stored.gen is not None:
        extra = -(-len(pending) // STORE_PART_KEYS)
        grown = replace(
            stored, count=stored.count + len(pending), sizes=stored.sizes + (0,) * extra
        )
        return grown.to_json()
    inline, sizes = inline_parts(pending)
    base = stored or StoredSet()
    return StoredSet(base.count + len(pending), base.inline + inline, base.sizes + sizes).to_json()


def write_state(sync: SyncState) -> dict[str, Any]:
    """The state to return."""
    state: dict[str, Any] = {
        "version": STATE_VERSION,
        "tables": {d: _entry_json(t) for d, t in sync.tables.items()},
        "done": list(sync.done),
    }
    if sync.started is not None:
        state["started"] = sync.started
    return state


# ---------------------------------------------------------------------------------------------
# SQL building (identifiers through quote_identifier, values only as bound parameters)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    sql_type: str  # format_type() of the column, e.g. "numeric(12,2)"
    nullable: bool


@dataclass(frozen=True)
class TablePlan:
    """The resolved table: its columns and the order it is paged in."""

    schema: str
    name: str
    columns: tuple[Column, ...]
    cursor: tuple[str, ...]
    primary_key: tuple[str, ...]

    @property
    def source(self) -> str:
        return display_name((self.schema, self.name))

    @property
    def order(self) -> tuple[Column, ...]:
        """Cursor columns, then key columns not already among them: a unique ordering."""
        by_name = {c.name: c for c in self.columns}
        names = self.cursor + tuple(k for k in self.primary_key if k not in self.cursor)
        return tuple(by_name[n] for n in names)


_BUILTIN_TYPE = re.compile(r"[a-z][a-z0-9_ ]*(\([0-9]+(,[0-9]+)?\))?( with(out)? time zone)?")


def _bound(column: Column, param: str) -> str:
    """A bound parameter cast to the column's type: built-in types only (after domains are
    resolved to their base type); others are left for the server to infer."""
    if column.type_oid < FIRST_USER_OID and _BUILTIN_TYPE.fullmatch(column.sql_type):
        return f"CAST(:{param} AS {column.sql_type})"
    return f":{param}"


def _compare(column: Column, value: str | None, param: str) -> tuple[str, str]:
    """(``column`` sorts after ``value``, ``column`` equals ``value``), NULLs sorting first."""
    name = quote_identifier(column.name)
    if value is None:
        return f"{name} IS NOT NULL", f"{name} IS NULL"
    bound = _bound(column, param)
    return f"{name} > {bound}", f"{name} = {bound}"


def keyset_condition(
    order: Sequence[Column], after: Sequence[str | None], inclusive: bool = False
) -> tuple[str, dict[str, str | None]]:
    """Rows after ``after`` in ``order`` (NULLs first), written without row constructors; with
    ``inclusive``, also the rows equal to it.

    For (a, b, c) and values (x, y, z): ``a >= x AND (a > x OR (a = x AND b > y) OR (a = x AND
    b = y AND c > z))``, inclusive adds ``OR (a = x AND b = y AND c = z)``. The redundant
    ``a >= x`` lets the database skip to the range.
    """
    condition, params = _lexicographic(order, after, _compare, "v", inclusive)
    if after[0] is not None:
        condition = (
            f"{quote_identifier(order[0].name)} >= {_bound(order[0], 'v0')} AND ({condition})"
        )
    return condition, params


def _compare_before(column: Column, value: str | None, param: str) -> tuple[str, str]:
    """(``column`` sorts before ``value``, ``column`` equals ``value``), NULLs sorting first."""
    name = quote_identifier(column.name)
    if value is None:
        return "FALSE", f"{name} IS NULL"
    bound = _bound(column, param)
    before = f"{name} < {bound}"
    if column.nullable:
        before = f"({name} IS NULL OR {before})"
    return before, f"{name} = {bound}"


def upto_condition(
    order: Sequence[Column], until: Sequence[str | None]
) -> tuple[str, dict[str, str | None]]:
    """Rows sorting at or before ``until`` in ``order`` (NULLs first), without row
    constructors: for (a, b) and (x, y), ``a < x OR (a = x AND b < y) OR (a = x AND b = y)``."""
    return _lexicographic(order, until, _compare_before, "u", inclusive=True)


def _lexicographic(
    order: Sequence[Column],
    values: Sequence[str | None],
    compare: Callable[[Column, str | None, str], tuple[str, str]],
    prefix: str,
    inclusive: bool,
) -> tuple[str, dict[str, str | None]]:
    """The rows that ``compare`` (strictly after, or strictly before) puts on one side of
    ``values`` in ``order``, as an OR of ANDs with bound parameters ``prefix0``...; with
    ``inclusive``, also the rows equal to them."""
    params: dict[str, str | None] = {}
    equal: list[str] = []
    terms: list[str] = []
    for i, (column, value) in enumerate(zip(order, values, strict=True)):
        if value is not None:
            params[f"{prefix}{i}"] = value
        strict, same = compare(column, value, f"{prefix}{i}")
        if strict != "FALSE":  # nothing sorts before a NULL (NULLs first)
            terms.append("(" + " AND ".join([*equal, strict]) + ")")
        equal.append(same)
    if inclusive:
        terms.append("(" + " AND ".join(equal) + ")")
    return " OR ".join(terms), params


def _select_sql(plan: TablePlan, where: str, limit: int | None) -> str:
    columns = ", ".join(quote_identifier(c.name) for c in plan.columns)
    order_by = ", ".join(
        quote_identifier(c.name) + (" NULLS FIRST" if c.nullable else "") for c in plan.order
    )
    source = f"{quote_identifier(plan.schema)}.{quote_identifier(plan.name)}"
    sql = f"SELECT {columns} FROM {source}{where} ORDER BY {order_by}"
    return sql if limit is None else f"{sql} LIMIT {int(limit)}"


def build_page_sql(
    plan: TablePlan,
    limit: int,
    after: Sequence[str | None] | None = None,
    start: str | None = None,
    lookback_s: int = 0,
    inclusive: bool = False,
    until: Sequence[str | None] | None = None,
) -> tuple[str, dict[str, str | None]]:
    """The page query: the next ``limit`` rows after ``after`` (or from ``start``), in order,
    and with ``until`` none sorting after it (a full table's range).

    ``after`` may be a prefix of the order columns (with ``inclusive``: a new sync resuming at
    the last cursor value, tied rows included).
    """
    params: dict[str, str | None] = {}
    where = ""
    if until is not None:
        upto, params = upto_condition(plan.order, until)
        where = f" WHERE ({upto})"
    if after is not None:
        condition, after_params = keyset_condition(plan.order[: len(after)], after, inclusive)
        params.update(after_params)
        where = f"{where} AND ({condition})" if where else f" WHERE {condition}"
    elif start is not None:
        lead = quote_identifier(plan.order[0].name)
        params["start"] = start
        lower = _bound(plan.order[0], "start")
        if lookback_s:
            params["lookback"] = f"{int(lookback_s)} seconds"
            lower = f"{lower} - CAST(:lookback AS INTERVAL)"
        where = f"{where} AND {lead} >= {lower}" if where else f" WHERE {lead} >= {lower}"
    return _select_sql(plan, where, limit), params


def build_group_sql(
    plan: TablePlan, values: Sequence[str | None]
) -> tuple[str, dict[str, str | None]]:
    """Every row whose order columns equal ``values`` as the database compares them (its
    collations, trailing blanks, numeric scales): the rows one position cannot tell apart."""
    params: dict[str, str | None] = {}
    terms = []
    for i, (column, value) in enumerate(zip(plan.order, values, strict=True)):
        if value is not None:
            params[f"v{i}"] = value
        terms.append(_compare(column, value, f"v{i}")[1])
    return _select_sql(plan, " WHERE " + " AND ".join(terms), None), params


# Every statement runs with search_path pinned to pg_catalog (set first in the session), and
# names every function with its schema: a function or operator a user creates in another
# schema can never take part.
CATALOG_SQL = """SELECT n.nspname, c.relname, a.attname, a.atttypid,
 pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attnum, t.typtype
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')
 AND pg_catalog.lower(c.relname) = pg_catalog.lower(CAST(:table AS VARCHAR))
 AND {schema_condition}
 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY n.nspname, c.relname, a.attnum"""
CATALOG_SCHEMA_GIVEN = "pg_catalog.lower(n.nspname) = pg_catalog.lower(CAST(:schema AS VARCHAR))"
CATALOG_SCHEMA_ANY = "TRUE"  # the table's schema is then chosen by the user's search_path

# A late-binding view (Redshift's CREATE VIEW ... WITH NO SCHEMA BINDING) has no pg_attribute
# rows: Redshift lists its columns through pg_get_late_binding_view_cols(), with the type as
# format_type's text and no type OID (AWS documentation of the function). PostgreSQL has no
# such function (SQLSTATE 42883): no late-binding views there.
LATE_BINDING_SQL = """SELECT cols.view_schema, cols.view_name, cols.col_name, cols.col_type,
 cols.col_num
FROM pg_catalog.pg_get_late_binding_view_cols()
 cols(view_schema NAME, view_name NAME, col_name NAME, col_type VARCHAR, col_num INT)
WHERE pg_catalog.lower(cols.view_name) = pg_catalog.lower(CAST(:table AS VARCHAR))
 AND {schema_condition}
ORDER BY cols.view_schema, cols.view_name, cols.col_num"""
LATE_BINDING_SCHEMA_GIVEN = (
    "pg_catalog.lower(cols.view_schema) = pg_catalog.lower(CAST(:schema AS VARCHAR))"
)
SQLSTATE_UNDEFINED_FUNCTION = "42883"
# format_type's text of each type (without its modifier) -> the OID its values arrive with.
TYPE_OIDS_BY_NAME = {
    "boolean": OID_BOOL,
    "smallint": OID_INT2,
    "integer": OID_INT4,
    "bigint": OID_INT8,
    "real": OID_FLOAT4,
    "double precision": OID_FLOAT8,
    "numeric": OID_NUMERIC,
    "character": 1042,
    "character varying": 1043,
    "text": 25,
    "date": OID_DATE,
    "time without time zone": 1083,
    "time with time zone": OID_TIMETZ,
    "timestamp without time zone": OID_TIMESTAMP,
    "timestamp with time zone": OID_TIMESTAMPTZ,
    "interval": OID_INTERVAL,
    "interval year to month": OID_INTERVAL_Y2M,
    "interval day to second": OID_INTERVAL_D2S,
    "super": OID_SUPER,
    "varbyte": OID_VARBYTE,
    "binary varying": OID_VARBYTE,
    "geometry": OID_GEOMETRY,
    "geography": OID_GEOGRAPHY,
    "hllsketch": OID_HLLSKETCH,
}
_TYPE_MODIFIER = re.compile(r"\([0-9, ]*\)")


def type_oid_by_name(sql_type: str) -> int:
    """The OID of a type given as format_type's text, e.g. ``character varying(20)``; 0 (text)
    for a type this table does not list."""
    return TYPE_OIDS_BY_NAME.get(" ".join(_TYPE_MODIFIER.sub("", sql_type).split()).lower(), 0)


# One step down a domain: its base type, the base's kind and the type text with the domain's
# modifier. Redshift has no domains; PostgreSQL sends a domain's values with the base's OID.
DOMAIN_SQL = """SELECT b.oid, b.typtype, pg_catalog.format_type(b.oid, d.typtypmod)
FROM pg_catalog.pg_type d
JOIN pg_catalog.pg_type b ON b.oid = d.typbasetype
WHERE d.oid = CAST(:oid AS OID)"""
MAX_DOMAIN_DEPTH = 32

# pg_constraint, not information_schema: the latter hides constraints from SELECT-only users.
PRIMARY_KEY_SQL = """SELECT con.conkey
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE con.contype = 'p'
 AND n.nspname = CAST(:schema AS VARCHAR) AND c.relname = CAST(:table AS VARCHAR)"""

# The same for every table of one schema (and their primary keys), read once when a schema
# selection names many tables.
CATALOG_OF_SCHEMA_SQL = CATALOG_SQL.replace(
    "\n AND pg_catalog.lower(c.relname) = pg_catalog.lower(CAST(:table AS VARCHAR))", ""
).format(schema_condition=CATALOG_SCHEMA_GIVEN)
PRIMARY_KEYS_OF_SCHEMA_SQL = PRIMARY_KEY_SQL.replace(
    "SELECT con.conkey", "SELECT c.relname, con.conkey"
).replace(" AND c.relname = CAST(:table AS VARCHAR)", "")

# The tables and views of one schema, for the 'schema' setting.
SCHEMA_TABLES_SQL = """SELECT c.relname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND n.nspname = CAST(:schema AS VARCHAR)
ORDER BY c.relname"""

# The schemas a bare table name is looked up in, read before search_path is pinned.
SEARCH_PATH_SQL = "SELECT pg_catalog.current_schemas(false)"

# Session settings the encoders and the SQL depend on, whatever a role or database sets:
# exact, stable text for every type, and no user schema on the path. Each is checked against
# what the server reports. The optional ones exist on PostgreSQL only; Redshift may not know
# them (and has no type they would change).
SESSION_SETTINGS = {
    "search_path": "pg_catalog",
    "client_encoding": "UTF8",
    "timezone": "UTC",
    "datestyle": "ISO, MDY",
    "extra_float_digits": "2",
}
OPTIONAL_SESSION_SETTINGS = {"bytea_output": "hex", "intervalstyle": "postgres"}
# Names a server may report for the value set: Redshift reports client_encoding UNICODE,
# PostgreSQL's alias of UTF8.
SETTING_ALIASES = {"unicode": "utf8"}
SQLSTATE_UNDEFINED_OBJECT = "42704"  # e.g. an unrecognized configuration parameter


def session_sql(settings: Mapping[str, str]) -> tuple[str, dict[str, str | None]]:
    """One statement setting every one of ``settings``, each returning the server's value."""
    params: dict[str, str | None] = {}
    calls = []
    for i, (name, value) in enumerate(settings.items()):
        params[f"n{i}"], params[f"v{i}"] = name, value
        calls.append(f"pg_catalog.set_config(:n{i}, :v{i}, false)")
    return "SELECT " + ", ".join(calls), params


# Set before every query, in the same round trip: each query ends before the invocation does.
TIMEOUT_SQL = "SELECT pg_catalog.set_config('statement_timeout', :ms, false)"
# One snapshot for every page of an invocation (Redshift runs every level as serializable).
BEGIN_SQL = "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"


# ---------------------------------------------------------------------------------------------
# Value encoding: the server's text straight to JSON-safe values, chosen once per type OID
# ---------------------------------------------------------------------------------------------


def _bool_in(text: str) -> bool:
    return text == "t"


def _float_in(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None  # NaN and ±Infinity are not JSON


def _timestamp_in(text: str) -> str:
    """``2024-01-02 03:04:05.123456`` -> ``2024-01-02T03:04:05.123456`` (exact, no parsing)."""
    if text[-3:] == " BC":
        return text  # BC dates, like 'infinity', stay as the server writes them
    return text.replace(" ", "T", 1)


def _timestamptz_in(text: str) -> str:
    """``2024-01-02 03:04:05+00`` -> ``2024-01-02T03:04:05Z`` (the session runs in UTC)."""
    if text[-3:] == "+00" and len(text) > 21 and text[10] == " ":
        return text[:10] + "T" + text[11:-3] + "Z"
    return _timestamp_in(text)


def _bytea_in(text: str) -> str:
    if text.startswith("\\x"):
        return base64.b64encode(bytes.fromhex(text[2:])).decode("ascii")
    return text


def _float_json(text: str) -> str:
    value = float(text)
    return repr(value) if math.isfinite(value) else "null"  # NaN and ±Infinity are not JSON


def _bytea_json(text: str) -> str:
    if text.startswith("\\x"):
        return '"' + binascii.b2a_base64(bytes.fromhex(text[2:]), newline=False).decode() + '"'
    return _escape(text)


def _json_float(text: str) -> float | str:
    """A JSON number with a fraction or exponent: a float when the float is exactly the number
    written (as its shortest text), else the number's own text, so no digit is lost and no
    value beyond a double's range (1e400) becomes Infinity, which strict JSON cannot hold."""
    value = float(text)
    if math.isfinite(value):
        digits = sum(c.isdigit() for c in text)
        if digits <= 15 and "e" not in text and "E" not in text:
            return value  # up to 15 significant digits always survive a double
        if Decimal(repr(value)) == Decimal(text):
            return value
    return text


def _json_int(text: str) -> int | str:
    return int(text) if len(text) <= MAX_JSON_INT_DIGITS else text


_json_decode = json.JSONDecoder(
    parse_float=_json_float, parse_int=_json_int, parse_constant=str
).decode


def _json_in(text: str) -> JSONValue:
    return _json_decode(text)


def _timestamp_position(value: str) -> str:
    if len(value) > 18 and value[10] == "T":
        return value[:10] + " " + value[11:]
    return value  # infinity, BC


def _timestamptz_position(value: str) -> str:
    text = _timestamp_position(value)
    return text[:-1] + "+00" if text != value and text.endswith("Z") else text


def _bytea_position(value: str) -> str:
    return "\\x" + base64.b64decode(value).hex()


def _loose_text(value: JSONValue) -> JSONValue:
    """Text as a case-, accent- and trailing-blank-insensitive collation might compare it."""
    if not isinstance(value, str):
        return value
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().rstrip()


def _loose_numeric(value: JSONValue) -> JSONValue:
    try:
        return str(Decimal(value).normalize()) if isinstance(value, str) else value
    except InvalidOperation:
        return value


def _same(value: JSONValue) -> JSONValue:
    return value


@dataclass(frozen=True)
class Codec:
    """What the function knows of one base type, in one place.

    ``decode``: the server's text to a JSON value. ``json``: a Python expression in ``v`` (the
    server's text) giving the value's JSON text, inlined into the row transcoders generated per
    column layout (``row_transcoder``); None: the JSON encoder's text of ``decode(v)``. It must
    give what the encoder gives for ``decode(v)`` (tests/test_transcode.py checks each codec).
    The expression may use ``_esc`` (the output's string escaper), ``_enc`` (its encoder) and
    the module's names. ``position``: an encoded value back to the server's text, to bind it
    into the next query. ``orderable``: whether it can page (floats and JSON cannot: NaN, no
    total order). ``loosen``: a comparison at least as loose as the database's equality, to
    find rows it may hold equal (text under a collation or with trailing blanks, numeric
    scales, intervals); exact for types whose encoded values are equal exactly when the
    database holds them equal.
    """

    decode: Callable[[str], JSONValue] = str
    json: str | None = None
    position: Callable[[Any], str] = str
    orderable: bool = True
    loosen: Callable[[JSONValue], JSONValue] = _loose_text
    ascii: bool = False  # the server's text of the type is always ASCII (numbers, dates...)


_QUOTED = "'\"' + v + '\"'"  # text the server writes with nothing to escape (digits, dates)
_EXACT_TEXT = Codec(json=_QUOTED, loosen=_same, ascii=True)
_INTEGER = Codec(decode=int, json="v", loosen=_same, ascii=True)
_FLOAT = Codec(_float_in, "_float_json(v)", orderable=False, loosen=_same, ascii=True)
_JSON = Codec(decode=_json_in, orderable=False, loosen=_same)
_UNORDERED_TEXT = Codec(orderable=False, loosen=_same)  # exact text no bound value can page
CODECS: dict[int, Codec] = {
    OID_BOOL: Codec(
        _bool_in,
        "('true' if v == 't' else 'false')",
        lambda v: "true" if v else "false",
        loosen=_same,
        ascii=True,
    ),
    OID_INT2: _INTEGER,
    OID_INT4: _INTEGER,
    OID_INT8: _INTEGER,
    OID_OID: _INTEGER,
    OID_FLOAT4: _FLOAT,
    OID_FLOAT8: _FLOAT,
    OID_NUMERIC: Codec(json=_QUOTED, loosen=_loose_numeric, ascii=True),  # the server's digits
    OID_TIMESTAMP: Codec(
        _timestamp_in,
        "('\"' + (v.replace(' ', 'T', 1) if v[-3:] != ' BC' else v) + '\"')",
        _timestamp_position,
        loosen=_same,
        ascii=True,
    ),
    OID_TIMESTAMPTZ: Codec(
        _timestamptz_in,
        "('\"' + v[:10] + 'T' + v[11:-3] + 'Z\"' if v[-3:] == '+00' and len(v) > 21 and "
        "v[10] == ' ' else '\"' + _timestamp_in(v) + '\"')",
        _timestamptz_position,
        loosen=_same,
        ascii=True,
    ),
    OID_DATE: _EXACT_TEXT,
    1083: _EXACT_TEXT,  # time
    2950: _EXACT_TEXT,  # uuid
    OID_INTERVAL: Codec(loosen=lambda v: v is None, ascii=True),  # '1 day' = '24:00:00'
    OID_BYTEA: Codec(_bytea_in, "_bytea_json(v)", _bytea_position, loosen=_same, ascii=True),
    OID_JSON: _JSON,
    OID_JSONB: _JSON,
    # Redshift's types (text forms: redshift_connector's type_utils.py and the AWS
    # documentation). Each is the server's own text, exact and a JSON string; those whose
    # order a bound text cannot reproduce (a VARBYTE literal is not its hex) cannot page.
    OID_TIMETZ: _EXACT_TEXT,  # '04:05:06+00': time and offset, compared as the server does
    OID_INTERVAL_Y2M: Codec(loosen=lambda v: v is None),  # '1 year 2 mons', like interval
    OID_INTERVAL_D2S: Codec(loosen=lambda v: v is None),  # '1 day 02:03:04', like interval
    OID_SUPER: _UNORDERED_TEXT,  # its JSON text, e.g. '{"a":[1,2]}' or '"abc"'
    OID_VARBYTE: _UNORDERED_TEXT,  # its bytes in hexadecimal, e.g. '616263'
    OID_GEOMETRY: _UNORDERED_TEXT,  # hexadecimal EWKB
    OID_GEOGRAPHY: _UNORDERED_TEXT,  # hexadecimal EWKB
    OID_HLLSKETCH: _UNORDERED_TEXT,  # the sketch's JSON (sparse) or base64 (dense) text
}
# Every other type (char, varchar, text, inet, arrays, enums, any type the function does not
# know) is the server's text, compared loosely; load_plan logs a note for an unknown one.
TEXT_CODEC = Codec()


def codec(type_oid: int) -> Codec:
    return CODECS.get(type_oid, TEXT_CODEC)


# What the connection decodes with: every type pg8000 knows, and any other, as text, but for
# the codecs' own decoders.
ALL_IN_ADAPTERS: dict[int, Callable[[str], JSONValue]] = {
    **dict.fromkeys(PG_TYPES, str),
    **{oid: c.decode for oid, c in CODECS.items()},
}


def position_text(type_oid: int, value: JSONValue) -> str | None:
    """The server's text of an encoded value, for binding it back into the next query."""
    return None if value is None else codec(type_oid).position(value)


# -- Row transcoders: a DataRow's bytes straight to a JSON object's text ----------------------
#
# A row never becomes Python values: one function per column layout and output style,
# generated from the codec table, unpacks every value inline and formats the row's JSON text
# in one go (the general path, decode then encode, is what each codec's ``json`` must equal).
# It returns the row's JSON text, nothing else: the few values the pager needs (the order
# columns of a page's last row, of tied rows, the keys of a full table) are read back from it.


@dataclass(frozen=True)
class JsonStyle:
    """How rows are written: the Lambda response's form (as ``json.dumps`` writes it, ASCII
    only) or the S3 object's (compact, UTF-8)."""

    name: str
    item: str  # between a row's members
    colon: str  # between a name and its value
    escape: Callable[[str], str]
    encode: Callable[[Any], str]
    size: Callable[[str], int]  # a text's exact UTF-8 bytes


RowReader = Callable[[bytes], Any]


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "backslashreplace"))


def _value_expression(type_oid: int, at: int) -> str:
    """The generated code's expression for one value's JSON text, ``v`` its server text."""
    c = codec(type_oid)
    if c.json is not None:
        return c.json
    return "_esc(v)" if c.decode is str else f"_enc(_decode{at}(v))"


def _transcoder_source(oids: Sequence[int], names: Sequence[str], style: JsonStyle) -> str:
    members = style.item.join(
        (style.escape(n) + style.colon).replace("%", "%%") + "%s" for n in names
    )
    bound = "unpack=unpack, _esc=_esc, _enc=_enc, len=len, str=str, " + "".join(
        f"_decode{at}=_decode{at}" + ", " for at in range(len(oids))
    )
    # The payload as Latin-1: one character per byte, so the length headers' offsets hold;
    # a value of a type whose text may not be ASCII is decoded again as UTF-8 when it is not.
    lines = [f"def transcode(data, {bound}):", "    t = data.decode('latin-1')", "    i = 2"]
    for at, oid in enumerate(oids):
        lines += [
            "    n = unpack(data, i)[0]",
            "    i += 4",
            "    if n < 0:",
            f"        j{at} = 'null'",
            "    else:",
            "        v = t[i:i + n]",
        ]
        if not codec(oid).ascii:
            lines.append("        if not v.isascii():\n            v = str(data[i:i + n], 'utf-8')")
        lines += ["        i += n", f"        j{at} = {_value_expression(oid, at)}"]
    values = ", ".join(f"j{at}" for at in range(len(oids)))
    lines.append(f"    return {'{' + members + '}'!r} % ({values},)")
    return "\n".join(lines)


_transcoders: dict[tuple[Any, ...], Callable[[bytes], str]] = {}


def row_transcoder(
    oids: Sequence[int], names: Sequence[str], style: JsonStyle
) -> Callable[[bytes], str]:
    """The function turning a DataRow message's payload of this column layout into the row's
    JSON object text, in ``style`` (its exact size: ``style.size``)."""
    cache_key = (tuple(oids), tuple(names), style.name)
    found = _transcoders.get(cache_key)
    if found is None:
        namespace: dict[str, Any] = {
            **globals(),
            "unpack": _INT32.unpack_from,
            "_esc": style.escape,
            "_enc": style.encode,
            **{f"_decode{at}": codec(oid).decode for at, oid in enumerate(oids)},
        }
        exec(_transcoder_source(oids, names, style), namespace)  # noqa: S102
        found = _transcoders[cache_key] = namespace["transcode"]
    return found


def row_decoder(oids: Sequence[int]) -> Callable[[bytes], list[JSONValue]]:
    """The general path: a DataRow's values decoded one by one (catalog and set-up queries)."""
    funcs = [ALL_IN_ADAPTERS.get(oid, str) for oid in oids]

    def decode(data: bytes) -> list[JSONValue]:
        row: list[JSONValue] = []
        i = 2
        for func in funcs:
            size = _INT32.unpack_from(data, i)[0]
            i += 4
            if size < 0:
                row.append(None)
                continue
            row.append(func(str(data[i : i + size], "utf-8")))
            i += size
        return row

    return decode


# ---------------------------------------------------------------------------------------------
# Batch assembly: rows cut to the byte budget, measured as the response will be serialised
# ---------------------------------------------------------------------------------------------

# The Lambda runtime serialises with default separators; ensure_ascii is its default on most
# runtimes and gives the largest size, so sizes measured this way are an upper bound.
_encode = json.JSONEncoder(ensure_ascii=True, allow_nan=False).encode
_escape: Callable[[str], str] = json.encoder.encode_basestring_ascii
# Strict, compact JSON as UTF-8, for the S3 object. A lone surrogate (possible in a json
# column's "\ud800") is not encodable: backslashreplace writes it as the JSON escape \ud800,
# which reads back the same.
_s3_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
LAMBDA_JSON = JsonStyle("lambda", ", ", ": ", _escape, _encode, len)  # ASCII only
S3_JSON = JsonStyle("s3", ",", ":", json.encoder.encode_basestring, _s3_encode, _utf8_size)


def json_size(value: JSONValue) -> int:
    """Bytes of ``value`` serialised as the Lambda runtime does (upper bound)."""
    return len(_encode(value))


@dataclass(frozen=True)
class Batch:
    """What one invocation read, independent of the response shape it is sent in."""

    rows: list[str]  # the delivered rows' JSON object texts, in the style they were read in
    state: TableState | None  # None: the request's state stands unchanged
    has_more: bool
    row_bytes: int  # UTF-8 bytes of the rows with a 2-byte separator between them
    pages: int  # queries it took
    keys: list[Key] = field(default_factory=list)  # the rows' primary keys (with_keys only)


@dataclass(frozen=True)
class Page:
    """The rows of one query, in result order, as its row reader made them (value lists, or
    JSON texts). When ``complete`` is false the read stopped at its byte cap: the rows are
    a prefix of the result, and the last one is only a look-ahead."""

    rows: list[Any]
    complete: bool


# The reader for a result's rows, given the type OIDs its RowDescription announces.
ReaderFor = Callable[[Sequence[int]], RowReader]
# Runs one query in the invocation's read-only transaction, keeping at most about max_bytes of
# the server's row data (at least two rows), each row made by the reader.
Fetch = Callable[[str, dict[str, str | None], int, ReaderFor], Page]


def _read_cap(room: int) -> int:
    """Server row bytes a read may keep for ``room`` bytes of response left."""
    return READ_BYTES_FACTOR * max(room, 0) + READ_BYTES_SLACK


def _resume_point(
    previous: TableState | None, plan: TablePlan, config: Config
) -> tuple[tuple[str | None, ...] | None, str | None, int, bool]:
    """Where an invocation starts reading: (after, start, lookback_s, inclusive)."""
    if previous is None:
        return None, None, 0, False
    if previous.start is not None:  # a seed-style state: its cursor value, inclusively
        return None, previous.start, 0, False
    after = previous.after
    if previous.mode == "full":  # re-read from the first key each sync, strictly inside one
        return (None if previous.complete else after), None, 0, False
    if previous.complete and after and after[0] is not None:
        # A new sync. Rows committed since the last one may carry the last cursor value with
        # any key (second-precision timestamps), or with lookback an older one still: resume
        # inclusively at that value. Inside a sync, paging stays strict.
        if config.lookback_s:
            return None, after[0], config.lookback_s, False
        return after[: len(plan.cursor)], None, 0, True
    return after, None, 0, False


def read_batch(
    fetch: Fetch,
    plan: TablePlan,
    previous: TableState | None,
    config: Config,
    overhead: Callable[[TableState], int],
    time_left_ms: Callable[[], float],
    base: TableState | None = None,
    annotate: Callable[[TableState, list[Key]], TableState] | None = None,
    sink: Callable[[list[str]], None] | None = None,
    max_read_bytes: int | None = None,
    shared: bool = False,
    until: tuple[str | None, ...] | None = None,
    style: JsonStyle = LAMBDA_JSON,
    with_keys: bool = False,
) -> Batch:
    """Read the rows that follow ``previous``, as many as the limit and the byte budget allow.

    ``fetch`` runs one query in the invocation's read-only transaction; ``overhead`` gives the
    serialised size of a response that carries a state but no rows (and whatever else the
    response holds). Pages are read until the budget is full, so each response but the last is
    nearly full. Rows arrive as JSON object texts in ``style`` with their exact sizes; only
    their order columns are ever decoded (for positions, ties and keys). The batch's state is
    ``base`` (default: a fresh entry) with the new position, passed through ``annotate`` with
    the primary keys of the delivered rows (a full table adds them); ``with_keys`` also gives
    those keys in the batch.

    With ``sink`` (a streamed output, e.g. an S3 object) the rows that are certainly in the
    batch go to it page by page, so memory holds one page and the run of rows that tie
    loosely with the last one (the only rows the end of the batch can still take back); the
    batch's ``rows`` are then that tail. ``max_read_bytes`` caps what one page, and a group of
    tied rows, keeps. ``shared``: the response already holds other rows, so when nothing fits
    the room they left the batch is empty with more to come, not an error. ``until``: no row
    sorting after it is read (a full table's range); the batch is then complete at the range's
    end.
    """
    pager = _Pager(fetch, plan, previous, config, overhead, style)
    pager.base = (
        base if base is not None else TableState(plan.source, plan.cursor, plan.primary_key)
    )
    pager.annotate, pager.sink, pager.max_read_bytes = annotate, sink, max_read_bytes
    pager.with_keys = with_keys or annotate is not None
    pager.until = until
    pager.budget = config.max_response_bytes - overhead(replace(pager.base, after=None)) + 2
    pager.read_pages(time_left_ms)
    return pager.settle(shared)


class _Pager:
    """One ``read_batch``: the rows kept so far (their JSON texts), the bytes they take with
    their separators, what the sink took. The few values it needs of a row (order columns,
    keys) it reads back from the row's JSON: the decoded values, as the codecs make them."""

    def __init__(
        self,
        fetch: Fetch,
        plan: TablePlan,
        previous: TableState | None,
        config: Config,
        overhead: Callable[[TableState], int],
        style: JsonStyle,
    ) -> None:
        self.fetch, self.plan, self.previous, self.config = fetch, plan, previous, config
        self.overhead, self.style = overhead, style
        self.order = plan.order
        self.names = [c.name for c in plan.columns]
        self.order_names = [c.name for c in self.order]
        self.key_at = [self.order_names.index(k) for k in plan.primary_key]
        self.loosen = [codec(c.type_oid).loosen for c in self.order]
        self.size = style.size
        self.base = TableState(plan.source, plan.cursor, plan.primary_key)
        self.annotate: Callable[[TableState, list[Key]], TableState] | None = None
        self.sink: Callable[[list[str]], None] | None = None
        self.max_read_bytes: int | None = None
        self.with_keys = False
        self.until: tuple[str | None, ...] | None = None  # a full table's range ends there
        self.budget = 0  # bytes for the rows with their ", " separators (+ 2: the first has none)
        self.rows: list[str] = []
        self.used = self.pages = self.flushed = 0  # flushed: rows already handed to the sink
        self.last_flushed: str | None = None
        self.lookahead: str | None = None  # the first row after the batch, when known
        self.exhausted = self.has_more = self.shrinking = False
        self.groups: dict[tuple[JSONValue, ...], list[str] | None] = {}

    # -- rows: their order values, decoded only here ------------------------------------------

    def reader(self, oids: Sequence[int]) -> RowReader:
        if len(oids) != len(self.names):
            raise SourceError(
                f"reading rows: the server sent {len(oids)} columns for the "
                f"{len(self.names)} of table {self.plan.source}"
            )
        return row_transcoder(oids, self.names, self.style)

    def values(self, row: str) -> tuple[JSONValue, ...]:
        """The order columns' values of a row (as the codecs decode them)."""
        members = json.loads(row)
        return tuple(members[name] for name in self.order_names)

    def loose(self, row: str) -> tuple[JSONValue, ...]:
        return tuple(f(v) for f, v in zip(self.loosen, self.values(row), strict=True))

    def position(self, row: str) -> tuple[str | None, ...]:
        return tuple(
            position_text(c.type_oid, v) for c, v in zip(self.order, self.values(row), strict=True)
        )

    def keys(self, rows: Sequence[str]) -> list[Key]:
        if not self.with_keys:
            return []
        at = self.key_at
        return [tuple(values[i] for i in at) for values in map(self.values, rows)]

    def read_cap(self, room: int) -> int:
        cap = _read_cap(room)
        return cap if self.max_read_bytes is None else min(cap, self.max_read_bytes)

    # -- reading pages -------------------------------------------------------------------------

    def read_pages(self, time_left_ms: Callable[[], float]) -> None:
        """Read pages until the budget, the limit or the time is used up, or the table ends;
        leaves ``lookahead`` at the first row not taken, when known."""
        config = self.config
        after, start, lookback_s, inclusive = _resume_point(self.previous, self.plan, config)
        bytes_per_row = self.previous.bytes_per_row if self.previous else None
        while True:
            if self.pages and time_left_ms() < MIN_TIME_LEFT_MS:
                return  # deliver what is read; the next invocation goes on from there
            room = self.budget - self.used
            if bytes_per_row:
                estimate = int(room / bytes_per_row * PAGE_OVERSHOOT) + 1
            else:
                estimate = FIRST_PAGE_ROWS
            want = min(config.limit - self.flushed - len(self.rows), max(estimate, MIN_PAGE_ROWS))
            if self.max_read_bytes is not None:  # a streamed batch: pages of what is kept
                want = min(want, max(MIN_PAGE_ROWS, self.max_read_bytes // (bytes_per_row or 1)))
            sql, params = build_page_sql(
                self.plan, want + 1, after, start, lookback_s, inclusive, self.until
            )
            page = self.read_page(sql, params, self.read_cap(room))  # one more: what follows
            if page.complete:
                values = page.rows[:want]
                self.lookahead = page.rows[want] if len(page.rows) > want else None
            else:
                values, self.lookahead = page.rows[:-1], page.rows[-1]
            if not self.take(values):
                return
            if self.lookahead is None:
                self.exhausted = True
                return
            if (
                not self.rows
                or self.flushed + len(self.rows) >= config.limit
                or self.loose(self.rows[-1]) == self.loose(self.lookahead)
            ):
                return  # a repeated (cursor, key) may straddle the page end: settled later
            after = self.position(self.rows[-1])
            start, lookback_s, inclusive = None, 0, False
            bytes_per_row = max(1, self.used // (self.flushed + len(self.rows)))
            self.flush()

    def read_page(self, sql: str, params: dict[str, str | None], cap: int) -> Page:
        try:
            page = self.fetch(sql, params, cap, self.reader)
        except SourceError as e:
            if self.pages == 0 and params and (e.sqlstate or "").startswith("22"):
                raise _state_error(
                    "its position values do not fit the types of column(s) "
                    f"{', '.join(c.name for c in self.order)} (SQLSTATE {e.sqlstate})"
                ) from None
            raise
        self.pages += 1
        return page

    def take(self, values: list[str]) -> bool:
        """Keep the rows of a page that fit the budget; False when one did not (it is then
        the look-ahead)."""
        used, budget, size = self.used, self.budget, self.size
        for fit, row in enumerate(values):
            used += size(row) + 2
            if used > budget:
                self.rows += values[:fit]
                self.used = used - size(row) - 2
                self.lookahead = row
                return False
        self.rows += values
        self.used = used
        return True

    def flush(self) -> None:
        """Hand the sink every row but the loosely tied run at the end."""
        rows = self.rows
        keep = len(rows) - 1
        last = self.loose(rows[-1]) if rows else ()
        while keep > 0 and self.loose(rows[keep - 1]) == last:
            keep -= 1
        if self.sink is None or keep <= 0:
            return
        out, self.rows = rows[:keep], rows[keep:]  # ``used`` still counts them: the batch's
        self.sink(out)
        if self.annotate is not None:  # the flushed rows' part of the state, e.g. their keys
            self.base = self.annotate(self.base, self.keys(out))
        self.flushed += len(out)
        self.last_flushed = out[-1]

    # -- settling the end of the batch ----------------------------------------------------------

    def settle(self, shared: bool) -> Batch:
        """Settle where the batch ends. Resuming strictly after its last row skips every row
        the database holds equal to it (Redshift does not enforce primary keys; collations may
        ignore case): such a group is delivered whole or not at all. Then the state is sized
        exactly, and rows are given back while it does not fit."""
        self.has_more = not self.exhausted
        while True:
            tie = self.settle_tie(shared)
            if isinstance(tie, Batch):
                return tie
            if tie:
                continue
            if not self.rows and not self.flushed:
                return self.empty(shared)
            batch = self.finish()
            if batch is not None:
                return batch

    def settle_tie(self, shared: bool) -> Batch | bool:
        """When the batch ends inside a group of rows the database holds equal, take the whole
        group in or give its rows back (True: look again); False: no such group."""
        rows, lookahead = self.rows, self.lookahead
        if not rows or lookahead is None or self.loose(rows[-1]) != self.loose(lookahead):
            return False
        last = self.values(rows[-1])
        if last not in self.groups:  # read at most what one page may keep: memory is bounded
            sql, params = build_group_sql(self.plan, self.position(rows[-1]))
            page = self.read_page(sql, params, self.read_cap(self.budget))
            self.groups[last] = page.rows if page.complete else None
        group = self.groups[last]
        members = {self.values(row) for row in group or ()}
        if group is not None and self.values(lookahead) not in members:
            return False
        first_out = lookahead
        while rows and (group is None or self.values(rows[-1]) in members):
            if group is None and self.loose(rows[-1]) != self.loose(first_out):
                break
            first_out = rows.pop()
            self.used -= self.size(first_out) + 2
        group_bytes = sum(self.size(row) + 2 for row in group or ())
        if (
            group is not None
            and not self.shrinking
            and self.used + group_bytes <= self.budget
            and (not rows or self.flushed + len(rows) + len(group) <= self.config.limit)
        ):
            rows += group
            self.used += group_bytes
            self.lookahead, self.has_more = None, True  # what follows differs from the group
            return True
        if not rows and not self.flushed:
            if shared:  # a response of its own may hold them
                return Batch(rows=[], state=None, has_more=True, row_bytes=0, pages=self.pages)
            raise self.group_too_large()
        self.lookahead, self.has_more = first_out, True
        return True

    def group_too_large(self) -> SourceError:
        limit = f"one response of max_response_bytes={self.config.max_response_bytes}"
        if self.max_read_bytes is not None:
            limit = f"the {self.max_read_bytes} bytes one read of the S3 sync may hold"
        return SourceError(
            f"table {self.plan.source} has more rows with the same values of "
            f"({', '.join(c.name for c in self.order)}) than fit in {limit}; the primary_key "
            "must identify a row for exact paging"
            + ("" if self.max_read_bytes is not None else ", or raise max_response_bytes")
        )

    def empty(self, shared: bool) -> Batch:
        """The batch when no row is in it."""
        if self.lookahead is not None:
            if shared:  # the room other tables left is too small; a new response is not
                return Batch(rows=[], state=None, has_more=True, row_bytes=0, pages=self.pages)
            raise _row_too_large(self.plan, self.config)
        # The position stays; a sync that ends on an empty batch is still marked complete, so
        # the next sync starts as a new one.
        state, previous = None, self.previous
        if previous is not None and previous.source is not None and not previous.complete:
            state = replace(previous, complete=True)
        return Batch(rows=[], state=state, has_more=False, row_bytes=0, pages=self.pages)

    def finish(self) -> Batch | None:
        """The batch with its state, sized exactly; None when rows were given back to make it
        fit (settle again)."""
        rows, plan = self.rows, self.plan
        last_row = rows[-1] if rows else self.last_flushed
        assert last_row is not None
        state = replace(
            self.base,
            source=plan.source,
            cursor=plan.cursor,
            primary_key=plan.primary_key,
            after=self.position(last_row),
            complete=not self.has_more,
            bytes_per_row=max(1, self.used // (self.flushed + len(rows))),
            start=None,
        )
        keys = self.keys(rows)
        if self.annotate is not None:
            state = self.annotate(state, keys)
        excess = self.overhead(state) + self.used - 2 - self.config.max_response_bytes
        if excess <= 0:  # exact, with the state
            return Batch(
                rows=list(rows),
                state=state,
                has_more=self.has_more,
                row_bytes=self.used - 2,
                pages=self.pages,
                keys=keys,
            )
        if not rows:
            raise _state_error(f"its entry for {plan.source} does not fit in a response")
        # Give back rows worth the excess at once (each also takes its part of the state, if
        # any, with it), then measure again: a few rounds, not one per row.
        self.shrinking = True
        given = 0
        while rows and given < excess:
            self.lookahead, self.has_more = rows.pop(), True
            self.used -= self.size(self.lookahead) + 2
            given += self.size(self.lookahead) + 2
        return None


def _row_too_large(plan: TablePlan, config: Config) -> RowTooLargeError:
    return RowTooLargeError(
        f"a row of table {plan.source} does not fit in a response of max_response_bytes="
        f"{config.max_response_bytes}; raise max_response_bytes (at most "
        f"{MAX_MAX_RESPONSE_BYTES}) or exclude the wide column with a view"
    )


# ---------------------------------------------------------------------------------------------
# Credentials: auth=iam, temporary database credentials for the function's own IAM role
# ---------------------------------------------------------------------------------------------

AUTH_MODES = ("password", "iam")
IAM_ONLY_SETTINGS = ("cluster_identifier", "workgroup", "db_user", "db_groups", "auto_create")
MIN_CREDENTIALS_S, MAX_CREDENTIALS_S = 900, 3600  # DurationSeconds bounds of the AWS APIs
# Asked for as long as the APIs allow, and kept in the warm process (never on disk) for the
# next invocations with the same settings, while they outlive the invocation by the margin.
CREDENTIALS_DURATION_S = MAX_CREDENTIALS_S
CREDENTIALS_MARGIN_S = 60  # valid a little longer than the invocation can run
AWS_API_TIMEOUT_S = 10.0
AWS_API_ATTEMPTS = 3
# Tests only: where boto3 sends the credentials calls instead of AWS (a local stand-in). An
# environment variable of the function, never a setting, so a request cannot redirect it.
AWS_ENDPOINT_URL_ENV = "REDSHIFT_LAMBDA_AWS_ENDPOINT_URL"

_REGION_PART = r"(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]+)"
# <cluster>.<id>.<region>.redshift.amazonaws.com, and <workgroup>.<account>.<region>.
# redshift-serverless.amazonaws.com (.com.cn in China).
_PROVISIONED_HOST = re.compile(
    r"(?P<name>[a-z][a-z0-9-]*)\.[a-z0-9]+\."
    + _REGION_PART
    + r"\.redshift\.amazonaws\.com(?:\.cn)?"
)
_SERVERLESS_HOST = re.compile(
    r"(?P<name>[a-z0-9-]+)\.[0-9]{12}\."
    + _REGION_PART
    + r"\.redshift-serverless\.amazonaws\.com(?:\.cn)?"
)
_REGION = re.compile(_REGION_PART)
_CLUSTER_IDENTIFIER = re.compile(r"[a-z](?:-?[a-z0-9])*")  # no "--", no trailing "-"
_WORKGROUP = re.compile(r"[a-z0-9-]{3,64}")
_DB_USER_OR_GROUP = re.compile(r"[A-Za-z][A-Za-z0-9_+.@-]{0,63}")
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{12,}\b")
_LONG_TOKEN = re.compile(r"[A-Za-z0-9/+=]{40,}")


class CredentialsError(SourceError):
    """AWS did not give temporary database credentials (auth=iam)."""


@dataclass(frozen=True)
class AuthConfig:
    """auth=iam: which AWS call gives the temporary database credentials, for what."""

    region: str
    cluster_identifier: str | None = None  # a provisioned cluster
    workgroup: str | None = None  # Redshift Serverless (GetCredentials)
    db_user: str | None = None  # GetClusterCredentials; None: GetClusterCredentialsWithIAM
    db_groups: tuple[str, ...] = ()
    auto_create: bool = False

    @property
    def api_call(self) -> str:
        if self.workgroup is not None:
            return "redshift-serverless:GetCredentials"
        if self.db_user is not None:
            return "redshift:GetClusterCredentials"
        return "redshift:GetClusterCredentialsWithIAM"


def _auto_create_setting(secrets: Mapping[str, Any]) -> bool:
    value = secrets.get("auto_create")
    if _blank(value):
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigurationError("setting 'auto_create' must be true or false")


def parse_auth(
    secrets: Mapping[str, Any], host: str, environ: Mapping[str, str] | None = None
) -> AuthConfig | None:
    """The auth=iam settings, validated; None for auth=password (the default)."""
    environ = os.environ if environ is None else environ
    mode = (_text_setting(secrets, "auth", required=False) or "password").lower()
    if mode not in AUTH_MODES:
        raise ConfigurationError(
            "setting 'auth' must be password (user and password in the settings) or iam "
            "(temporary credentials for the function's IAM role)"
        )
    if mode == "password":
        extra = [k for k in (*IAM_ONLY_SETTINGS, "region") if not _blank(secrets.get(k))]
        if extra:
            raise ConfigurationError(
                f"setting(s) {', '.join(extra)} apply only with auth=iam; set auth=iam or "
                "remove them"
            )
        return None
    if not _blank(secrets.get("password")):
        raise ConfigurationError(
            "setting 'password' is not used with auth=iam (each invocation gets a temporary "
            "password from AWS); remove it"
        )
    if not _blank(secrets.get("user")):
        raise ConfigurationError(
            "setting 'user' is not used with auth=iam; set db_user to log in as that database "
            "user (GetClusterCredentials), or leave both out to log in as the function's IAM "
            "role (GetClusterCredentialsWithIAM, or GetCredentials on Serverless)"
        )
    sslmode = (_text_setting(secrets, "sslmode", required=False) or DEFAULT_SSLMODE).lower()
    if sslmode == "disable":
        raise ConfigurationError(
            "setting 'sslmode' cannot be disable with auth=iam: Redshift accepts IAM "
            "credentials only over TLS; use verify-full (the default) or require"
        )

    cluster = _text_setting(secrets, "cluster_identifier", required=False)
    workgroup = _text_setting(secrets, "workgroup", required=False)
    if cluster and workgroup:
        raise ConfigurationError(
            "settings 'cluster_identifier' and 'workgroup' exclude each other; set "
            "cluster_identifier for a provisioned cluster or workgroup for Redshift Serverless"
        )
    name = host.lower().rstrip(".")
    from_host = _PROVISIONED_HOST.fullmatch(name) or _SERVERLESS_HOST.fullmatch(name)
    if cluster is None and workgroup is None:
        if from_host is None:
            raise ConfigurationError(
                "setting 'cluster_identifier' is missing and cannot be read from 'host' (not "
                "an endpoint name like <cluster>.<id>.<region>.redshift.amazonaws.com); set "
                "cluster_identifier for a provisioned cluster, or workgroup for Redshift "
                "Serverless"
            )
        if from_host.re is _PROVISIONED_HOST:
            cluster = from_host["name"]
        else:
            workgroup = from_host["name"]
    if cluster is not None:
        cluster = cluster.lower()
        if len(cluster) > 63 or not _CLUSTER_IDENTIFIER.fullmatch(cluster):
            raise ConfigurationError(
                "setting 'cluster_identifier' must be a cluster identifier: 1 to 63 letters, "
                "digits and hyphens, starting with a letter, without two hyphens in a row or "
                "one at the end"
            )
    if workgroup is not None:
        workgroup = workgroup.lower()
        if not _WORKGROUP.fullmatch(workgroup):
            raise ConfigurationError(
                "setting 'workgroup' must be a workgroup name: 3 to 64 lower-case letters, "
                "digits and hyphens"
            )

    region = _text_setting(secrets, "region", required=False)
    source = ""
    if region is None and from_host is not None:
        region, source = from_host["region"], " (from 'host')"
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if region is None and environ.get(variable):
            region, source = environ[variable], f" (from {variable})"
    if region is None:
        raise ConfigurationError(
            "setting 'region' is missing: 'host' does not name the region and neither "
            "AWS_REGION nor AWS_DEFAULT_REGION is set; expected an AWS region like us-east-1"
        )
    region = region.strip().lower()
    if not _REGION.fullmatch(region):
        raise ConfigurationError(
            f"setting 'region'{source} is not an AWS region; expected a region like us-east-1"
        )

    db_user = _text_setting(secrets, "db_user", required=False)
    groups_text = _text_setting(secrets, "db_groups", required=False)
    auto_create = _auto_create_setting(secrets)
    if workgroup is not None or db_user is None:
        extra = [k for k in ("db_user", "db_groups", "auto_create") if not _blank(secrets.get(k))]
        if extra:
            reason = (
                "Redshift Serverless maps the function's IAM role to the database user "
                "IAMR:<role name> (GetCredentials takes no user, groups or auto_create)"
                if workgroup is not None
                else "without db_user the function logs in as its IAM role "
                "(GetClusterCredentialsWithIAM), which takes no groups and always creates "
                "the user"
            )
            raise ConfigurationError(
                f"setting(s) {', '.join(extra)} cannot be used here: {reason}; remove them"
                + ("" if workgroup is not None else ", or set db_user")
            )
    if db_user is not None and (
        not _DB_USER_OR_GROUP.fullmatch(db_user) or db_user.lower() == "public"
    ):
        raise ConfigurationError(
            "setting 'db_user' must be a database user name: 1 to 64 letters, digits or "
            "_ + . @ -, starting with a letter (not PUBLIC)"
        )
    groups: tuple[str, ...] = ()
    if groups_text is not None:
        groups = tuple(g.strip() for g in groups_text.split(","))
        if not all(_DB_USER_OR_GROUP.fullmatch(g) for g in groups):
            raise ConfigurationError(
                "setting 'db_groups' must be a comma-separated list of database group names "
                "like readers, analysts (each 1 to 64 letters, digits or _ + . @ -, starting "
                "with a letter)"
            )
        if len({g.lower() for g in groups}) != len(groups):
            raise ConfigurationError("setting 'db_groups' names a group twice")
    return AuthConfig(region, cluster, workgroup, db_user, groups, auto_create)


def _partition(region: str | None) -> str:
    """The ARN partition of a region (aws when it is not known)."""
    region = region or ""
    if region.startswith("cn-"):
        return "aws-cn"
    return "aws-us-gov" if region.startswith("us-gov-") else "aws"


def iam_grant_hint(auth: AuthConfig, database: str) -> str:
    """The least-privilege grant that the credentials call needs, as ARNs."""
    prefix = f"arn:{_partition(auth.region)}"
    if auth.workgroup is not None:
        return (
            f"redshift-serverless:GetCredentials on the workgroup's ARN, {prefix}:"
            f"redshift-serverless:{auth.region}:<account>:workgroup/<workgroup id> (aws "
            f"redshift-serverless get-workgroup --workgroup-name {auth.workgroup} shows it)"
        )
    arn = f"{prefix}:redshift:{auth.region}:<account>:"
    cluster = auth.cluster_identifier
    if auth.db_user is None:
        return f"redshift:GetClusterCredentialsWithIAM on {arn}dbname:{cluster}/{database}"
    hint = (
        f"redshift:GetClusterCredentials on {arn}dbuser:{cluster}/{auth.db_user} and "
        f"{arn}dbname:{cluster}/{database}"
    )
    if auth.auto_create:
        hint += f", redshift:CreateClusterUser on {arn}dbuser:{cluster}/{auth.db_user}"
    if auth.db_groups:
        groups = ", ".join(f"{arn}dbgroup:{cluster}/{g}" for g in auth.db_groups)
        hint += f", redshift:JoinGroup on {groups}"
    return hint


def _scrub(text: str) -> str:
    """An AWS error message without anything that looks like a key or a token, shortened."""
    text = _LONG_TOKEN.sub("...", _ACCESS_KEY_ID.sub("<access key id>", text))
    return text if len(text) <= 400 else text[:400] + "..."


# What the error codes of AWS answers mean, for the credentials calls and S3 alike: the one
# table both translations (aws_error, s3_error) read.
AWS_ERROR_KINDS: dict[str, str] = {
    **dict.fromkeys(
        (
            "AccessDenied",
            "AccessDeniedException",
            "UnauthorizedOperation",
            "AllAccessDisabled",
            "AccountProblem",
        ),
        "denied",
    ),
    **dict.fromkeys(
        ("ClusterNotFound", "ClusterNotFoundFault", "ResourceNotFoundException", "NoSuchBucket"),
        "not found",
    ),
    "NoSuchUpload": "upload gone",
    "InvalidBucketName": "invalid bucket",
    **dict.fromkeys(
        (
            "Throttling",
            "ThrottlingException",
            "TooManyRequestsException",
            "RequestLimitExceeded",
            "SlowDown",
            "ServiceUnavailable",
            "InternalError",
            "RequestTimeout",
            "503",
            "500",
        ),
        "throttled",
    ),
    **dict.fromkeys(
        (
            "InvalidClientTokenId",
            "UnrecognizedClientException",
            "SignatureDoesNotMatch",
            "InvalidSignatureException",
            "IncompleteSignature",
            "MissingAuthenticationToken",
            "ExpiredToken",
            "ExpiredTokenException",
            "InvalidAccessKeyId",
            "InvalidToken",
            "TokenRefreshRequired",
        ),
        "caller",
    ),
}


def aws_error_kind(code: str, status: int | None = None) -> str | None:
    """What an AWS error answer means (AWS_ERROR_KINDS; ``kms`` for an SSE-KMS key's refusal),
    from its code, else its HTTP status; None when neither says."""
    if code.startswith("KMS."):
        return "kms"
    kind = AWS_ERROR_KINDS.get(code)
    if kind is None and code == "unknown" and status == 403:
        return "denied"
    if kind is None and status in (500, 503):
        return "throttled"
    return kind


def _auth_target(auth: AuthConfig) -> tuple[str, str | None]:
    """The setting naming what the credentials are for, and its value."""
    if auth.workgroup is not None:
        return "workgroup", auth.workgroup
    return "cluster_identifier", auth.cluster_identifier


def aws_error(
    code: str, message: str, auth: AuthConfig, database: str, status: int | None = None
) -> CredentialsError:
    """Translate an AWS error answer into a message a user can act on, without secrets."""
    call = auth.api_call
    kind = aws_error_kind(code, status)
    setting, name = _auth_target(auth)
    target = f"{setting.replace('_identifier', '')} '{name}'"
    if kind == "denied":
        return CredentialsError(
            f"{call} was denied ({code}: {_scrub(message)}); grant the function's execution "
            f"role {iam_grant_hint(auth, database)}"
        )
    if kind == "not found":
        return CredentialsError(
            f"{call}: {target} was not found in region {auth.region} ({code}); check the "
            f"settings '{setting}' and 'region'"
        )
    if kind == "throttled":
        return CredentialsError(
            f"{call} for {target} in region {auth.region}: AWS throttled the request or was "
            f"unavailable ({code}), also after {AWS_API_ATTEMPTS} attempts; the next "
            "invocation tries again"
        )
    if kind == "caller":
        return CredentialsError(
            f"{call}: AWS did not accept the function's own AWS credentials ({code}); in "
            "Lambda they come from its execution role, locally from the AWS profile or "
            "AWS_ACCESS_KEY_ID"
        )
    return CredentialsError(f"{call} failed ({code}: {_scrub(message)})")


def fetch_iam_credentials(auth: AuthConfig, database: str, time_left_s: float) -> tuple[str, str]:
    """Ask AWS for a temporary database user name and password (the only AWS call)."""
    try:  # the Lambda runtime provides boto3; it is not in the zip, and auth=password needs none
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise CredentialsError(
            "auth=iam needs boto3, which the AWS Lambda Python runtime provides; to run the "
            "function elsewhere, pip install boto3"
        ) from None
    call = auth.api_call
    service = call.split(":")[0]
    duration_s = CREDENTIALS_DURATION_S
    timeout_s = max(1.0, min(AWS_API_TIMEOUT_S, time_left_s / (2 * AWS_API_ATTEMPTS)))
    client_config = botocore.config.Config(
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"mode": "standard", "total_max_attempts": AWS_API_ATTEMPTS},
        user_agent_extra=f"{APPLICATION_NAME}/{__version__}",
    )
    errors = botocore.exceptions
    try:
        client = boto3.session.Session().client(
            service,
            region_name=auth.region,
            endpoint_url=os.environ.get(AWS_ENDPOINT_URL_ENV) or None,
            config=client_config,
        )
        if auth.workgroup is not None:
            answer = client.get_credentials(
                workgroupName=auth.workgroup, dbName=database, durationSeconds=duration_s
            )
            user, password = answer.get("dbUser"), answer.get("dbPassword")
        elif auth.db_user is not None:
            params: dict[str, Any] = {
                "DbUser": auth.db_user,
                "DbName": database,
                "ClusterIdentifier": auth.cluster_identifier,
                "DurationSeconds": duration_s,
                "AutoCreate": auth.auto_create,
            }
            if auth.db_groups:
                params["DbGroups"] = list(auth.db_groups)
            answer = client.get_cluster_credentials(**params)
            user, password = answer.get("DbUser"), answer.get("DbPassword")
        else:
            answer = client.get_cluster_credentials_with_iam(
                DbName=database,
                ClusterIdentifier=auth.cluster_identifier,
                DurationSeconds=duration_s,
            )
            user, password = answer.get("DbUser"), answer.get("DbPassword")
    except errors.ClientError as e:
        error = e.response.get("Error") or {}
        code, message = str(error.get("Code") or "unknown"), str(error.get("Message") or "")
        status = (e.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        raise aws_error(code, message, auth, database, status) from None
    except (errors.ConnectionError, errors.HTTPClientError) as e:
        raise CredentialsError(
            f"{call}: cannot reach the {service} API in {auth.region} ({type(e).__name__}); "
            "a function in a VPC has no internet access: give its subnets a NAT gateway or an "
            f"interface VPC endpoint for com.amazonaws.{auth.region}.{service}"
        ) from None
    except (
        errors.NoCredentialsError,
        errors.PartialCredentialsError,
        errors.CredentialRetrievalError,
    ) as e:
        raise CredentialsError(
            f"{call}: no AWS credentials found ({type(e).__name__}); in Lambda they come from "
            "the execution role, locally from the AWS profile or AWS_ACCESS_KEY_ID"
        ) from None
    except errors.BotoCoreError as e:
        raise CredentialsError(f"{call} failed in the AWS SDK ({type(e).__name__})") from None
    if not (isinstance(user, str) and user and isinstance(password, str) and password):
        raise CredentialsError(f"{call}: AWS answered without a database user and password")
    log(logging.INFO, "iam credentials", api=call, db_user=user, valid_s=duration_s)
    return user, password


@dataclass(frozen=True)
class _CachedLogin:
    key: tuple[Any, ...]  # everything that shapes the credentials (see _login_key)
    user: str
    password: str = field(repr=False)
    valid_until: float  # time.monotonic() at which AWS lets them expire (or a little before)


# The temporary credentials of the last auth=iam login, for the next invocations of this warm
# process: one entry at most, in memory only (never on disk), dropped when a login fails.
_iam_login: list[_CachedLogin] = []


def _login_key(auth: AuthConfig, database: str) -> tuple[Any, ...]:
    """Everything the credentials depend on: the call and its parameters (AuthConfig), the
    database, where the call goes, and whose AWS identity asks (never the secret key)."""
    environ = os.environ
    identity = tuple(environ.get(v) for v in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE"))
    return (auth, database, environ.get(AWS_ENDPOINT_URL_ENV) or None, identity)


def iam_credentials(auth: AuthConfig, database: str, time_left_s: float) -> tuple[str, str]:
    """Temporary credentials for ``auth``: those of an earlier invocation of this process with
    the same settings while they stay valid for this invocation plus CREDENTIALS_MARGIN_S,
    else new ones from AWS (fetch_iam_credentials), kept for the next invocations."""
    key = _login_key(auth, database)
    needed_s = max(0.0, time_left_s) + CREDENTIALS_MARGIN_S
    cached = _iam_login[0] if _iam_login else None
    if cached is not None and cached.key == key:
        left_s = cached.valid_until - time.monotonic()
        if left_s >= needed_s:
            log(logging.DEBUG, "iam credentials reused", api=auth.api_call, valid_s=int(left_s))
            return cached.user, cached.password
    _iam_login.clear()  # another configuration's, or too close to expiring
    asked = time.monotonic()  # the credentials expire CREDENTIALS_DURATION_S after AWS made them
    user, password = fetch_iam_credentials(auth, database, time_left_s)
    _iam_login.append(_CachedLogin(key, user, password, asked + CREDENTIALS_DURATION_S))
    return user, password


def forget_iam_credentials() -> None:
    """Drop the kept credentials (a login with them failed; tests start clean)."""
    _iam_login.clear()


def login_credentials(config: Config, deadline: float) -> tuple[str, str]:
    """The user name and password to log in with: the settings', or temporary ones from AWS."""
    if config.auth is None:
        return config.user, config.password
    return iam_credentials(config.auth, config.database, deadline - time.monotonic())


# ---------------------------------------------------------------------------------------------
# Database I/O
# ---------------------------------------------------------------------------------------------

# SQLSTATE classes whose server messages name objects, never values: safe to pass on.
_SAFE_SQLSTATE_CLASSES = {"08", "0A", "25", "28", "3D", "3F", "42", "53", "54", "55", "57"}


SQLSTATE_INTERNAL_ERROR = "XX000"
_QUOTED_LITERAL = re.compile(r"'(?:[^']|'')*'?|\"(?:[^\"]|\"\")*\"?")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_$])[-+]?[0-9][0-9.:eE+-]*")
MAX_SERVER_MESSAGE_CHARS = 300


def _without_values(message: str) -> str:
    """A server message with every quoted text emptied (single or double quotes: either may
    hold a value) and every number replaced by ``#`` (a name's digits stay), at most
    MAX_SERVER_MESSAGE_CHARS long."""
    text = _NUMBER.sub("#", _QUOTED_LITERAL.sub(lambda m: m[0][0] * 2, message))
    text = " ".join(text.split())
    return (
        text if len(text) <= MAX_SERVER_MESSAGE_CHARS else text[:MAX_SERVER_MESSAGE_CHARS] + "..."
    )


def _source_error(
    exc: BaseException, config: Config, action: str, table: str | None = None
) -> ConnectorError:
    """Translate a driver error into a message a user can act on, without values or secrets."""
    where = f"{config.host}:{config.port}"
    connecting = action == "connecting"  # network failures then point at the settings
    if isinstance(exc, pg8000.native.DatabaseError) and exc.args and isinstance(exc.args[0], dict):
        code = str(exc.args[0].get("C", ""))
        message = str(exc.args[0].get("M", ""))
        if code == "57014":
            return SourceTimeoutError(
                f"{action}: the query was cancelled by the statement timeout; the table may "
                "need a sort key on the cursor, or set a smaller 'limit' (SQLSTATE 57014)",
                code,
            )
        if code == "28000":
            return SourceError(
                f"{action}: {where} refused the connection: {message}; if the server requires "
                "encryption, use sslmode=verify-full (the default) (SQLSTATE 28000)",
                code,
            )
        if code == "28P01":
            hint = (
                "check 'user' and 'password'"
                if config.auth is None
                else "the database refused the temporary IAM credentials: does the user exist "
                "(or set auto_create=true)?"
            )
            return SourceError(
                f"{action}: authentication failed for user {shown(config.user)} at {where}; "
                f"{hint} (SQLSTATE {code})",
                code,
            )
        if code == "42501":
            return SourceError(
                f"{action}: permission denied ({message}); grant the user USAGE on the schema "
                f"and SELECT on the table{' ' + table if table else ''} (SQLSTATE 42501)",
                code,
            )
        if code[:2] in _SAFE_SQLSTATE_CLASSES:
            return SourceError(f"{action}: the database said: {message} (SQLSTATE {code})", code)
        if code == SQLSTATE_INTERNAL_ERROR:
            # Redshift reports most of its own failures (a node that failed, a query it cannot
            # plan, a value it cannot convert) as XX000: its message is passed on with every
            # quoted text and every number taken out, as they may be row values.
            return SourceError(
                f"{action}: Redshift reported an internal error: {_without_values(message)} "
                f"(SQLSTATE {code}; quoted texts and numbers are withheld)",
                code,
            )
        return SourceError(
            f"{action}: the database refused the query (SQLSTATE {code}); its message is "
            "withheld because it may quote row values",
            code,
        )
    causes = [exc, exc.__cause__, exc.__context__]
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return SourceError(
                f"{action}: the TLS certificate of {where} could not be verified "
                f"({cause.verify_message}); set 'sslrootcert' to the CA certificate(s) that "
                "signed it (for Redshift, Amazon's CA bundle). sslmode=require without "
                "sslrootcert would still encrypt, but it gives up authenticating the server: "
                "anyone on the network path could then pose as it"
            )
        if isinstance(cause, TimeoutError):
            return SourceTimeoutError(
                f"{action}: {where} did not answer in time"
                + (
                    f" ({config.connect_timeout_s:g} s, 'connect_timeout_s'); check 'host' and "
                    "'port', and that the network lets the function reach them: the cluster's "
                    "security group must allow inbound TCP on that port from the function (in "
                    "a VPC: its subnets and security group)"
                    if connecting
                    else ""
                )
            )
    if "Authentication method" in str(exc):
        return SourceError(
            f"{action}: {where} asks for a login method the function cannot do ({exc}); "
            "expected a password stored as MD5 or SHA-256 (Redshift), SCRAM (PostgreSQL), "
            "or auth=iam"
        )
    if "refuses SSL" in str(exc):
        return SourceError(
            f"{action}: {where} does not accept TLS connections; set sslmode=disable only if "
            "the network path is trusted"
        )
    reason = ", ".join(
        type(c).__name__ + (f" ({c.strerror})" if isinstance(c, OSError) and c.strerror else "")
        for c in causes
        if c is not None
    )
    hint = ""
    if connecting and any(isinstance(c, socket.gaierror) for c in causes):
        hint = (
            "; the name in 'host' does not resolve: check 'host' (the cluster's endpoint, e.g. "
            "<cluster>.<id>.<region>.redshift.amazonaws.com) and, for a function in a VPC, "
            "that its DNS resolves the endpoint"
        )
    elif connecting and any(isinstance(c, ConnectionRefusedError) for c in causes):
        hint = (
            f"; nothing listens on port {config.port} there: check 'port' (Redshift's default "
            f"is {DEFAULT_PORT}) and 'host', and that the cluster is available"
        )
    elif connecting and any(isinstance(c, OSError) for c in causes):
        hint = (
            "; check 'host' and 'port', and the network path: the cluster's security group "
            "must allow inbound TCP on that port from the function"
        )
    return SourceError(f"{action}: cannot talk to {where}: {reason}{hint}")


# -- The wire: each query in one round trip, its rows streamed in chunks ----------------------
#
# pg8000 reads a whole result into memory before returning it, in three round trips. Here a
# query is Parse, Bind, Describe and Execute with a row limit, sent at once after any prelude
# statements (whose results are dropped); the rows come in chunks (PortalSuspended between
# them) until the caller's byte cap is reached, and the rest of the result is never sent.
# Rows are decoded inline with pg8000's own adapters (registered per connection), so the
# values are exactly what pg8000 would return.

_HEADER = struct.Struct("!ci")
_INT32 = struct.Struct("!i")
_INT16 = struct.Struct("!h")
_NUL = b"\x00"
_SYNC = b"S\x00\x00\x00\x04"
_FLUSH = b"H\x00\x00\x00\x04"
_DESCRIBE_PORTAL = b"D\x00\x00\x00\x06P\x00"


def _message(code: bytes, payload: bytes) -> bytes:
    return code + _INT32.pack(len(payload) + 4) + payload


def _execute_message(max_rows: int) -> bytes:
    return _message(b"E", _NUL + _INT32.pack(max_rows))


# pg8000's placeholder rewriting reads the SQL character by character (and looks each name up
# in a list): a statement of 2,000 bound keys took 56 ms. Statements repeat, so it is cached.
_to_statement = functools.lru_cache(maxsize=128)(pg8000.native.to_statement)


def _parse_bind(sql: str, params: Mapping[str, str | None], encoding: str) -> bytes:
    """Parse and Bind messages for ``sql`` with ``:name`` placeholders and text values."""
    statement, make_values = _to_statement(sql)
    bind = bytearray(_NUL + _NUL + _INT16.pack(0))
    values = make_values(params)
    bind += _INT16.pack(len(values))
    for value in values:
        if value is None:
            bind += _INT32.pack(-1)
        else:
            data = str(value).encode(encoding)
            bind += _INT32.pack(len(data)) + data
    bind += _INT16.pack(0)
    parse = _NUL + statement.encode(encoding) + _NUL + _INT16.pack(0)
    return _message(b"P", parse) + _message(b"B", bytes(bind))


# The pg8000 versions whose internals PgWire uses (checked on every connection: a pg8000 that
# moved them fails loudly, naming what is missing, instead of misreading the wire).
PG8000_VERSIONS = ("1.31.",)


class PgWire:
    """The pg8000 internals the wire code uses, all here: a connection's buffered socket file
    (``_sock``, read and write), its raw socket (``_usock``, for timeouts), and its message
    handlers (``message_types``: errors, notices, parameter status, ReadyForQuery, with
    ``pg8000.core.Context``). Everything else of the protocol is done here."""

    def __init__(self, con: Any) -> None:
        problems = check_pg8000(con)
        if problems:
            raise SourceError(
                f"pg8000 {pg8000.__version__} is not a version this function was built for "
                f"({' or '.join(v + 'x' for v in PG8000_VERSIONS)}): {'; '.join(problems)}"
            )
        self.file = con._sock
        self.raw = con._usock
        self.handlers: dict[bytes, Callable[[bytes, Any], None]] = con.message_types

    def settimeout(self, seconds: float) -> None:
        self.raw.settimeout(seconds)

    def send(self, data: bytes | bytearray) -> None:
        self.file.write(data)
        self.file.flush()

    def handle(self, code: bytes, data: bytes, context: Any) -> None:
        """Let pg8000 handle a message this code does not read itself."""
        self.handlers[code](data, context)

    @staticmethod
    def context(sql: str) -> Any:
        return pg8000.core.Context(sql)


def check_pg8000(con: Any) -> list[str]:
    """What of the internals PgWire needs this pg8000 connection lacks (empty when none)."""
    problems = []
    if not str(pg8000.__version__).startswith(PG8000_VERSIONS):
        problems.append(f"version {pg8000.__version__}")
    for name in ("_sock", "_usock", "message_types"):
        if not hasattr(con, name):
            problems.append(f"the connection has no {name}")
    handlers = getattr(con, "message_types", {})
    for code in (b"E", b"N", b"S", b"Z", b"1", b"2", b"3", b"n", b"I"):
        if code not in handlers:
            problems.append(f"no handler for message {code.decode()!r}")
    context = getattr(getattr(pg8000, "core", None), "Context", None)
    if context is None or "error" not in getattr(context("SELECT 1"), "__dict__", {}):
        problems.append("pg8000.core.Context has no error")
    return problems


def _row_description(data: bytes) -> list[int]:
    """The type OIDs of a RowDescription message's columns."""
    count = _INT16.unpack_from(data, 0)[0]
    oids, i = [], 2
    for _ in range(count):
        i = data.index(_NUL, i) + 1  # the column name
        oids.append(_INT32.unpack_from(data, i + 6)[0])  # after table OID and attribute number
        i += 18
    return oids


def wire_query(
    con: Any,
    sql: str,
    params: Mapping[str, str | None],
    *,
    prelude: Sequence[tuple[str, Mapping[str, str | None]]] = (),
    max_bytes: int | None = None,
    reader: ReaderFor = row_decoder,
) -> Page:
    """Run ``sql`` on pg8000 connection ``con``; keep at most about ``max_bytes`` of row data.

    Each row is what ``reader`` (given the result's column type OIDs) makes of a DataRow's
    payload: by default its values, decoded. The prelude statements run first in the same
    round trip; an error in any statement raises pg8000's DatabaseError once the server is
    ready again.
    """
    wire = con if isinstance(con, PgWire) else PgWire(con)
    out = bytearray()
    for prelude_sql, prelude_params in prelude:
        out += _parse_bind(prelude_sql, prelude_params, "utf-8") + _execute_message(0)
    chunk = 0 if max_bytes is None else FIRST_CHUNK_ROWS
    out += _parse_bind(sql, params, "utf-8") + _DESCRIBE_PORTAL
    out += _execute_message(chunk) + _FLUSH
    read, header = wire.file.read, _HEADER.unpack
    context = wire.context(sql)
    make: RowReader | None = None
    rows: list[Any] = []
    append = rows.append
    kept = widest = 0
    cap = math.inf if max_bytes is None else max_bytes
    full = dropped = complete = synced = False
    pending = len(prelude)  # statements whose results come first and are dropped
    try:
        wire.send(out)
        while True:
            head = read(5)  # inline: this loop runs once per row
            if len(head) != 5:
                raise pg8000.native.InterfaceError("network error")
            code, length = header(head)
            data = read(length - 4)
            if len(data) != length - 4:
                raise pg8000.native.InterfaceError("network error")
            if code == b"D":
                if make is None:
                    continue  # a row of a prelude statement
                if full:
                    dropped = True
                    continue
                append(make(data))
                size = len(data)
                kept += size
                if size > widest:
                    widest = size
                if kept > cap and len(rows) >= 2:
                    full = True
            elif code == b"T":
                make = reader(_row_description(data))
            elif code == b"C":
                if pending:
                    pending -= 1
                    continue
                complete = not dropped
                wire.send(_SYNC)
                synced = True
            elif code == b"s":  # the chunk is done and the result goes on
                if full:
                    wire.send(_SYNC)
                    synced = True
                else:
                    assert max_bytes is not None
                    room_rows = (max_bytes - kept) // max(widest, 1) + 1
                    chunk = max(1, min(MAX_CHUNK_ROWS, 4 * chunk, room_rows))
                    wire.send(_execute_message(chunk) + _FLUSH)
            elif code == b"E":
                wire.handle(code, data, context)
                if not synced:
                    wire.send(_SYNC)
                    synced = True
            elif code == b"Z":
                wire.handle(code, data, context)
                break
            else:
                wire.handle(code, data, context)
    except (OSError, ValueError, pg8000.native.InterfaceError) as e:  # ValueError: a write
        if context.error is not None:  # to a closed socket file
            raise context.error from None  # a FATAL error: the server said why, then hung up
        raise pg8000.native.InterfaceError("network error") from e
    if context.error is not None:
        raise context.error
    return Page(rows, complete)


def wire_pipeline(
    wire: PgWire, segments: Sequence[Sequence[tuple[str, Mapping[str, str | None]]]]
) -> list[list[list[JSONValue]] | BaseException]:
    """Run groups of statements in one round trip, each group followed by its own Sync, so an
    error fails only its group; for each group, its last statement's rows (decoded) or the
    error. For small results (the session's set-up)."""
    out = bytearray()
    for statements in segments:
        for sql, params in statements:
            out += _parse_bind(sql, params, "utf-8") + _DESCRIBE_PORTAL + _execute_message(0)
        out += _SYNC
    read, header = wire.file.read, _HEADER.unpack
    results: list[list[list[JSONValue]] | BaseException] = []
    try:
        wire.send(out)
        for statements in segments:
            context = wire.context(statements[-1][0])
            rows: list[list[JSONValue]] = []
            decode: Callable[[bytes], list[JSONValue]] | None = None
            while True:
                head = read(5)
                if len(head) != 5:
                    raise pg8000.native.InterfaceError("network error")
                code, length = header(head)
                data = read(length - 4)
                if len(data) != length - 4:
                    raise pg8000.native.InterfaceError("network error")
                if code == b"T":
                    decode, rows = row_decoder(_row_description(data)), []
                elif code == b"D":
                    if decode is not None:
                        rows.append(decode(data))
                elif code in (b"C", b"n"):
                    pass  # a statement done; the group's last one's rows are kept
                else:
                    wire.handle(code, data, context)
                    if code == b"Z":
                        break
            results.append(rows if context.error is None else context.error)
    except (OSError, ValueError) as e:  # ValueError: a write to a closed socket file
        raise pg8000.native.InterfaceError("network error") from e
    return results


def parse_text_array(text: str) -> list[str]:
    """The elements of a one-dimensional array in PostgreSQL's text form, e.g. {a,"b c"}."""
    if not (text.startswith("{") and text.endswith("}")):
        raise SourceError("the server sent an array in an unexpected form")
    body, items, i = text[1:-1], [], 0
    while i < len(body):
        if body[i] == '"':
            j, chars = i + 1, []
            while body[j] != '"':
                j += body[j] == "\\"
                chars.append(body[j])
                j += 1
            items.append("".join(chars))
            i = j + 1
        else:
            j = body.find(",", i)
            j = len(body) if j < 0 else j
            items.append(body[i:j])
            i = j
        i += 1  # the comma
    return items


AUTH_REQ_DIGEST = 13  # Redshift's request for a SHA-256 password digest
DIGEST_ALGORITHMS = {0: "sha256"}  # the algorithm numbers Redshift sends (redshift_connector)


class RedshiftConnection(pg8000.native.Connection):  # type: ignore[misc]
    """pg8000's connection, answering Redshift's authentication request 13 too.

    Redshift asks for it when the user's password is stored as SHA-256, which pg8000 does not
    know. The request holds an algorithm number (0: SHA-256), a salt and a server nonce, each
    length-prefixed; the answer (message ``d``) is the digest SHA256(SHA256(password + salt) +
    server nonce + client nonce) and the client nonce, each length-prefixed, as Amazon's own
    drivers send it (redshift_connector's core.py, the JDBC driver's ExtensibleDigest). Every
    other request is pg8000's.
    """

    def handle_AUTHENTICATION_REQUEST(self, data: bytes, context: Any) -> None:
        if len(data) < 4 or _INT32.unpack_from(data)[0] != AUTH_REQ_DIGEST:
            super().handle_AUTHENTICATION_REQUEST(data, context)
            return
        fields, at = [], 8
        try:
            algorithm = _INT32.unpack_from(data, 4)[0]
            for _ in range(2):  # the salt, then the server nonce
                size = _INT32.unpack_from(data, at)[0]
                if size < 0 or at + 4 + size > len(data):
                    raise ValueError
                fields.append(data[at + 4 : at + 4 + size])
                at += 4 + size
        except (struct.error, ValueError):
            raise pg8000.native.InterfaceError(
                "Authentication method 13 request is malformed"
            ) from None
        if algorithm not in DIGEST_ALGORITHMS:
            raise pg8000.native.InterfaceError(
                f"Authentication method 13 with digest algorithm {algorithm} not supported"
            )
        if self.password is None:
            raise pg8000.native.InterfaceError(
                "server requesting password authentication, but no password was provided"
            )
        salt, server_nonce = fields
        client_nonce = str(int(time.time() * 1000)).encode("ascii")  # as Amazon's drivers do
        digest = getattr(hashlib, DIGEST_ALGORITHMS[algorithm])
        hashed = digest(digest(self.password + salt).digest() + server_nonce + client_nonce)
        answer = hashed.digest()
        self._send_message(
            b"d",
            _INT32.pack(len(answer)) + answer + _INT32.pack(len(client_nonce)) + client_nonce,
        )
        self._sock.flush()


class Source:
    """One connection in one read-only transaction, closed on exit."""

    def __init__(self, config: Config, deadline: float, *, transaction: bool = True) -> None:
        self.config = config
        self.deadline = deadline
        self.transaction = transaction  # False: each statement on its own (setup tests)
        self.con: pg8000.native.Connection | None = None
        self.wire: PgWire | None = None
        self.search_path: list[str] = []  # the user's schemas, read before the path is pinned
        self.table: str | None = None  # the table being read, for messages
        # Catalog rows of a whole schema, read at once (see prefetch_catalog).
        self._catalog: tuple[str, dict[str, list[Any]], dict[str, list[Any]]] | None = None

    def time_left_ms(self) -> float:
        return (self.deadline - time.monotonic()) * 1000

    def _time_left_or_fail(self) -> float:
        left_ms = self.time_left_ms()
        if left_ms < MIN_TIME_LEFT_MS:
            raise SourceTimeoutError(
                f"only {max(0, int(left_ms))} ms are left in this invocation; raise the Lambda "
                "timeout (up to 15 minutes)"
            )
        return left_ms

    def __enter__(self) -> Source:
        self._time_left_or_fail()
        user, password = login_credentials(self.config, self.deadline)  # auth=iam: from AWS
        config = self.config = replace(self.config, user=user, password=password)
        timeout_s = min(config.connect_timeout_s, self._time_left_or_fail() / 1000)
        sock = None
        try:
            # Our own socket, so that it is closed whatever fails (pg8000 leaves it open when
            # the TLS negotiation times out).
            sock = socket.create_connection((config.host, config.port), timeout_s)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self.con = RedshiftConnection(
                user=config.user,
                password=config.password,
                host=config.host,
                port=config.port,
                database=config.database,
                ssl_context=ssl_context(config),
                sock=sock,
                application_name=APPLICATION_NAME,
            )
        except (pg8000.native.Error, OSError, ssl.SSLError) as e:
            if sock is not None:
                sock.close()
            forget_iam_credentials()  # auth=iam: the next invocation asks AWS again
            raise _source_error(e, config, "connecting") from None
        try:
            self.wire = PgWire(self.con)
            self._start_session()
        except BaseException:
            self.close()
            raise
        return self

    def query(
        self,
        action: str,
        sql: str,
        params: Mapping[str, str | None],
        max_bytes: int | None = None,
        reader: ReaderFor = row_decoder,
    ) -> Page:
        """Run one statement, timed to end before the invocation does."""
        assert self.wire is not None
        left_ms = self._time_left_or_fail()
        timeout_ms = int(left_ms)
        if self.config.statement_timeout_s is not None:
            timeout_ms = min(timeout_ms, int(self.config.statement_timeout_s * 1000))
        # The server gives up first; the socket a little later, still inside the time kept
        # free at the end of the invocation.
        self.wire.settimeout(timeout_ms / 1000 + max(1.0, min(5.0, timeout_ms / 10_000)))
        # (BEGIN goes alone: a statement before it in the same round trip would take the
        # snapshot first.)
        prelude = [] if sql == BEGIN_SQL else [(TIMEOUT_SQL, {"ms": str(max(1, timeout_ms))})]
        started = time.monotonic()
        try:
            page = wire_query(
                self.wire, sql, params, prelude=prelude, max_bytes=max_bytes, reader=reader
            )
        except (pg8000.native.Error, OSError, ssl.SSLError) as e:
            raise _source_error(e, self.config, action, self.table) from None
        log(
            logging.DEBUG,
            "query",
            action=action,
            rows=len(page.rows),
            complete=page.complete,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return page

    def prefetch_catalog(self, schema: str) -> None:
        """Read the catalog rows and primary keys of every table of ``schema`` in two queries,
        for load_plan (a schema selection of many tables costs two catalog queries, not two
        per table)."""
        rows = self.query("reading the catalog", CATALOG_OF_SCHEMA_SQL, {"schema": schema}).rows
        by_table: dict[str, list[Any]] = {}
        for row in rows:
            by_table.setdefault(str(row[1]).lower(), []).append(row)
        keys: dict[str, list[Any]] = {}
        for name, conkey in self.query(
            "reading the primary keys", PRIMARY_KEYS_OF_SCHEMA_SQL, {"schema": schema}
        ).rows:
            keys[str(name)] = [[conkey]]
        self._catalog = (schema.lower(), by_table, keys)

    def cached_catalog(self, table: Sequence[str]) -> list[Any] | None:
        """load_plan's catalog rows for ``table`` if its schema was prefetched, else None."""
        if self._catalog is None or len(table) != 2 or table[0].lower() != self._catalog[0]:
            return None
        return self._catalog[1].get(table[1].lower(), [])

    def cached_primary_key(self, schema: str, name: str) -> list[Any] | None:
        if self._catalog is None or schema.lower() != self._catalog[0]:
            return None
        return self._catalog[2].get(name, [])

    def fetch(
        self, sql: str, params: dict[str, str | None], max_bytes: int, reader: ReaderFor
    ) -> Page:
        return self.query("reading rows", sql, params, max_bytes, reader)

    def _check(self, settings: Mapping[str, str], values: Sequence[JSONValue]) -> None:
        for (name, wanted), got in zip(settings.items(), values, strict=True):
            reported = " ".join(str(got).split()).lower()
            if SETTING_ALIASES.get(reported, reported) != wanted.lower():
                raise SourceError(
                    f"starting the session: the server reports {name}={shown(got)} after it "
                    f"was set to {shown(wanted)}; the function needs that setting to encode "
                    "values exactly"
                )

    def _start_session(self) -> None:
        """The session's set-up in one round trip: the user's search_path read, the settings
        pinned (each optional one on its own, so one the server lacks fails alone), the
        read-only transaction begun; each checked in turn."""
        assert self.con is not None and self.wire is not None
        for oid, adapter in ALL_IN_ADAPTERS.items():  # pg8000's own reads: as row_decoder's
            self.con.register_in_adapter(oid, adapter)
        timeout_ms = int(self._time_left_or_fail())
        if self.config.statement_timeout_s is not None:
            timeout_ms = min(timeout_ms, int(self.config.statement_timeout_s * 1000))
        self.wire.settimeout(timeout_ms / 1000 + max(1.0, min(5.0, timeout_ms / 10_000)))
        optional = [{name: value} for name, value in OPTIONAL_SESSION_SETTINGS.items()]
        segments: list[tuple[str, list[tuple[str, Mapping[str, str | None]]]]] = [
            ("reading the search_path", [(TIMEOUT_SQL, {"ms": str(timeout_ms)})]),
            ("starting the session", [session_sql(SESSION_SETTINGS)]),
        ]
        segments[0][1].append((SEARCH_PATH_SQL, {}))
        segments += [("starting the session", [session_sql(each)]) for each in optional]
        if self.transaction:
            segments.append(("starting a read-only transaction", [(BEGIN_SQL, {})]))
        try:
            results = wire_pipeline(self.wire, [statements for _, statements in segments])
        except (pg8000.native.Error, OSError, ssl.SSLError) as e:
            raise _source_error(e, self.config, "starting the session") from None
        for i, ((action, _), result) in enumerate(zip(segments, results, strict=True)):
            if isinstance(result, BaseException):
                error = _source_error(result, self.config, action)
                in_optional = 2 <= i < 2 + len(optional)
                if in_optional and getattr(error, "sqlstate", None) == SQLSTATE_UNDEFINED_OBJECT:
                    continue  # a setting this server does not have (Redshift)
                raise error
        first, pinned = results[0], results[1]
        assert isinstance(first, list) and isinstance(pinned, list)
        self.search_path = parse_text_array(str(first[0][0]))
        self._check(SESSION_SETTINGS, pinned[0])
        for each, result in zip(optional, results[2:], strict=False):
            if isinstance(result, list):
                self._check(each, result[0])
        log(logging.DEBUG, "session", statements=sum(len(st) for _, st in segments))

    def close(self) -> None:
        con, self.con, self.wire = self.con, None, None
        if con is not None:
            with contextlib.suppress(pg8000.native.Error, OSError):
                con.close()  # a broken connection is gone either way

    def __exit__(self, *exc: object) -> None:
        self.close()


def _resolve(
    names: Sequence[str], available: Sequence[str], setting: str, table: str
) -> tuple[str, ...]:
    """Catalog names for configured names: exact match first, else a unique case-insensitive one."""
    resolved = []
    for name in names:
        if name in available:
            resolved.append(name)
            continue
        matches = [a for a in available if a.lower() == name.lower()]
        if len(matches) != 1:
            listed = ", ".join(available)[:500]
            raise ConfigurationError(
                f"setting '{setting}': column {display_name([name])} is not in table {table}"
                f"; expected one of: {listed}"
            )
        resolved.append(matches[0])
    return tuple(resolved)


def _choose_table(
    found: Sequence[tuple[str, str]], wanted: tuple[str, ...], search_path: Sequence[str]
) -> tuple[str, str] | None:
    """The catalog's (schema, table) for the configured name; None when it matches nothing.

    A bare name is looked up in the user's search_path in order, as the server would: an exact
    match first, else a unique case-insensitive one.
    """
    if len(wanted) == 1:
        rank = {schema: i for i, schema in reversed(list(enumerate(search_path)))}
        found = sorted((k for k in found if k[0] in rank), key=lambda k: rank[k[0]])
        exact = [k for k in found if k[1] == wanted[0]]
        if exact:
            return exact[0]
    else:
        exact = [k for k in found if k == wanted]
        if exact:
            return exact[0]
    if len(found) > 1:
        candidates = ", ".join(display_name(k) for k in sorted(found))[:500]
        raise ConfigurationError(
            f"setting 'table': {display_name(wanted)} matches several tables ({candidates}); "
            "quote the exact name"
        )
    return found[0] if found else None


def _base_type(source: Source, column: Column, kind: str) -> tuple[Column, str]:
    """A domain-typed column as its base type (the OID its values arrive with)."""
    for _ in range(MAX_DOMAIN_DEPTH):
        if kind != "d":
            return column, kind
        step = source.query(
            "reading a domain's base type", DOMAIN_SQL, {"oid": str(column.type_oid)}
        ).rows
        if not step:
            break
        oid, kind, sql_type = step[0]
        column = replace(column, type_oid=int(oid), sql_type=str(sql_type))
    raise SourceError(f"reading the type of column {display_name([column.name])}: no base type")


def _late_binding_columns(
    source: Source, spec: TableSpec
) -> dict[tuple[str, str], list[tuple[Column, str]]]:
    """The columns of late-binding views named like the configured table (Redshift only):
    their types by name, each column nullable (the function cannot know)."""
    params = {"table": spec.table[-1]}
    condition = CATALOG_SCHEMA_ANY
    if len(spec.table) == 2:
        params["schema"] = spec.table[0]
        condition = LATE_BINDING_SCHEMA_GIVEN
    try:
        rows = source.query(
            "reading a late-binding view's columns",
            LATE_BINDING_SQL.format(schema_condition=condition),
            params,
        ).rows
    except SourceError as e:
        if e.sqlstate == SQLSTATE_UNDEFINED_FUNCTION:  # PostgreSQL: no late-binding views
            return {}
        raise
    found: dict[tuple[str, str], list[tuple[Column, str]]] = {}
    for schema, name, column, sql_type, _ in rows:
        oid = type_oid_by_name(str(sql_type))
        found.setdefault((str(schema), str(name)), []).append(
            (Column(str(column), oid, str(sql_type), True), "b")
        )
    return found


def load_plan(source: Source, spec: TableSpec, config: Config) -> TablePlan:
    """Find the table and its columns in the catalog and check the cursor and key columns."""
    params = {"table": spec.table[-1]}
    if len(spec.table) == 2:
        params["schema"] = spec.table[0]
        sql = CATALOG_SQL.format(schema_condition=CATALOG_SCHEMA_GIVEN)
    else:
        sql = CATALOG_SQL.format(schema_condition=CATALOG_SCHEMA_ANY)
    found: dict[tuple[str, str], list[tuple[Column, str]]] = {}
    attnums: dict[tuple[str, str, int], str] = {}
    rows = source.cached_catalog(spec.table)
    if rows is None:
        rows = source.query("reading the catalog", sql, params).rows
    for schema, name, column, type_oid, sql_type, not_null, attnum, kind in rows:
        found.setdefault((schema, name), []).append(
            (Column(column, int(type_oid), str(sql_type), not not_null), str(kind))
        )
        attnums[(schema, name, int(attnum))] = column
    if not found:
        found = _late_binding_columns(source, spec)
    wanted = display_name(spec.table)
    chosen = _choose_table(list(found), spec.table, source.search_path)
    if chosen is None:
        raise ConfigurationError(
            f"setting 'table': {wanted} was not found in database {shown(config.database)} or "
            f"user {shown(source.config.user)} cannot see it; expected an existing table or view"
            + ("" if len(spec.table) == 2 else " on the search_path (or write schema.table)")
        )
    schema, name = chosen
    typed = [_base_type(source, column, kind) for column, kind in found[chosen]]
    columns = tuple(column for column, _ in typed)
    kinds = {column.name: kind for column, kind in typed}
    table = display_name((schema, name))
    available = [c.name for c in columns]
    cursor = _resolve(spec.cursor, available, "cursor", table)
    if spec.primary_key is not None:
        primary_key = _resolve(spec.primary_key, available, "primary_key", table)
    else:
        declared = source.cached_primary_key(schema, name)
        if declared is None:
            declared = source.query(
                "reading the primary key", PRIMARY_KEY_SQL, {"schema": schema, "table": name}
            ).rows
        # conkey arrives as the server's text of a smallint array, e.g. "{2,1}".
        numbers = re.findall(r"-?[0-9]+", str(declared[0][0])) if declared else []
        primary_key = tuple(attnums.get((schema, name, int(n)), "") for n in numbers)
        if "" in primary_key:
            raise SourceError(f"reading the primary key of {table}: the catalog is inconsistent")
        if not primary_key:
            raise NoPrimaryKeyError(
                f"setting 'primary_key' is missing and table {table} declares no primary key; "
                "expected the column(s) that identify a row, e.g. id"
            )
    plan = TablePlan(schema, name, columns, cursor, primary_key)
    source.table = plan.source
    for column in columns:
        if column.type_oid not in CODECS and column.type_oid not in TEXT_OIDS:
            log(
                logging.INFO,
                "unknown_type",
                table=plan.source,
                column=column.name,
                type=column.sql_type,
                oid=column.type_oid,
                note="copied as the server's text",
            )
    for column in plan.order:
        setting = "cursor" if column.name in cursor else "primary_key"
        if not codec(column.type_oid).orderable:
            raise ConfigurationError(
                f"setting '{setting}': column {display_name([column.name])} has type "
                f"{column.sql_type}, which cannot page exactly; expected an integer, numeric, "
                "date, timestamp or text column"
            )
        if column.type_oid >= FIRST_USER_OID and kinds[column.name] != "e":
            # Its comparison operators live outside pg_catalog, which the session pins: the
            # paging's > could then disagree with the ORDER BY.
            raise ConfigurationError(
                f"setting '{setting}': column {display_name([column.name])} has the "
                f"user-defined type {column.sql_type}; expected a column of a built-in type "
                "(or a domain over one), e.g. through a view that casts it"
            )
    if (
        spec.mode == "incremental"
        and config.lookback_s
        and plan.order[0].type_oid
        not in (
            OID_DATE,
            OID_TIMESTAMP,
            OID_TIMESTAMPTZ,
        )
    ):
        raise ConfigurationError(
            f"setting 'lookback' needs a date or timestamp as the first cursor column; "
            f"{display_name([plan.order[0].name])} is {plan.order[0].sql_type}"
        )
    log(
        logging.DEBUG,
        "plan",
        table=plan.source,
        columns=len(plan.columns),
        order=[c.name for c in plan.order],
        primary_key=list(plan.primary_key),
    )
    return plan


def _column_list(names: Sequence[str]) -> str:
    """Column names for a message, as a JSON list: one column "a, b" reads ["a, b"]."""
    return shown(json.dumps(list(names), ensure_ascii=False), MAX_NAME_SHOWN)


def check_state(previous: TableState | None, plan: TablePlan, mode: str) -> None:
    """Refuse a state written for another table, cursor, key or mode: its position means
    nothing here."""
    if previous is None or previous.source is None:
        return
    if previous.source != plan.source:
        raise _state_error(
            f"it was written for table {shown(previous.source, MAX_NAME_SHOWN)} but the "
            f"settings now give {shown(plan.source, MAX_NAME_SHOWN)}"
        )
    if previous.mode != mode:
        raise _state_error(f"it was written for mode {previous.mode} but the settings give {mode}")
    for what, was, now in (
        ("cursor", previous.cursor, plan.cursor),
        ("primary_key", previous.primary_key, plan.primary_key),
    ):
        if tuple(was) != tuple(now):  # lists of names: the one column "a, b" is not a and b
            raise _state_error(
                f"it was written for {what} {_column_list(was)} but the settings now give "
                f"{_column_list(now)}"
            )
    if previous.after is not None and len(previous.after) != len(plan.order):
        raise _state_error(f"'after' must hold {len(plan.order)} values")


# ---------------------------------------------------------------------------------------------
# S3 output: Fivetran's sync through S3, streamed in parts of a multipart upload
# ---------------------------------------------------------------------------------------------

PART_BYTES = 8 * 1024 * 1024  # every part but the last; S3's minimum part is 5 MiB
MIN_PART_BYTES = 5 * 1024 * 1024
MAX_PARTS = 10_000  # S3's limit: with 8 MiB parts an object holds at most 80 GiB
MAX_S3_OBJECT_BYTES = PART_BYTES * MAX_PARTS
DEFAULT_S3_MAX_BYTES = 256 * 1024 * 1024  # the s3_max_bytes setting's default
S3_READ_BYTES = 8 * 1024 * 1024  # server row bytes one page keeps in memory, syncing to S3
S3_DELETE_BYTES = 8 * 1024 * 1024  # deletes one S3 object holds at most (kept in memory)
S3_FINISH_MS = 15_000  # kept free at the end of an S3 invocation to upload the last part
MIN_S3_MAX_BYTES = 1024 * 1024
MAX_S3_MAX_BYTES = 10 * 1024 * 1024 * 1024  # well inside MAX_S3_OBJECT_BYTES
S3_API_ATTEMPTS = 4  # botocore's standard retry mode: throttling (SlowDown, 503) and network
S3_CONNECT_TIMEOUT_S = 10.0
S3_READ_TIMEOUT_S = 60.0  # one part's answer; a part of 8 MiB takes well under a second
S3_CONTENT_TYPE = "application/json"
# Tests only: where boto3 sends the S3 calls instead of AWS (a local S3 server, addressed
# path-style). An environment variable of the function, never a setting, so a request cannot
# redirect the rows.
S3_ENDPOINT_URL_ENV = "REDSHIFT_LAMBDA_S3_ENDPOINT_URL"


class S3Error(ConnectorError):
    """S3 did not take the batch's object (permission, bucket, network, throttling)."""


MAX_S3_KEY_BYTES = 1024  # S3's limit on an object key, in UTF-8 bytes
S3_BUCKET_EXPECTED = (
    "an S3 bucket name as the Fivetran connector's S3 sync method names it: 3 to 63 lower-case "
    "letters, digits, '.' and '-', starting and ending with a letter or digit, like "
    "fivetran-sync-bucket"
)
# What S3 (and boto3, before sending) take as a bucket name: today's rules, and the wider ones
# of buckets made in us-east-1 before March 2018 (capitals, '_', up to 255 characters).
_S3_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,255}")


def s3_bucket_problem(bucket: str) -> str | None:
    """What is wrong with ``bucket`` as an S3 bucket name, or None."""
    if "://" in bucket or bucket.lower().startswith("s3:"):
        return "looks like a URL (s3://...); give the bucket's name alone"
    if "/" in bucket:
        return "contains '/' (a bucket name has no path; the object key is 'file')"
    if bucket.startswith("arn:"):
        return "is an ARN; give the bucket's name"
    if len(bucket) < 3 or len(bucket) > 255:
        return f"is {len(bucket)} characters long"
    if not _S3_BUCKET.fullmatch(bucket):
        bad = next(c for c in bucket if not _S3_BUCKET.fullmatch(c))
        return f"contains {shown(bad)}, which a bucket name cannot hold"
    return None


def s3_grant_hint(bucket: str, region: str | None = None) -> str:
    """The least-privilege grant the S3 sync method needs on ``bucket``."""
    arn = f"arn:{_partition(region)}:s3:::{bucket}/*"
    return (
        f"s3:PutObject on {arn} (a multipart upload needs that same action), plus "
        f"s3:AbortMultipartUpload on {arn} to clean up after a failure"
    )


def s3_error(
    exc: BaseException,
    action: str,
    bucket: str,
    key: str,
    region: str | None = None,
    grant: str | None = None,
) -> S3Error:
    """Translate a botocore error into a message a user can act on: bucket, key, S3 action and
    the grant to add; never the credentials, nor S3's own message (it may quote a request)."""
    import botocore.exceptions as errors  # present whenever an S3 call could fail

    where = f"S3 {action} to bucket {shown(bucket)} (key {shown(key)})"
    if isinstance(exc, errors.ClientError):
        error = exc.response.get("Error") or {}
        code = str(error.get("Code") or "unknown")
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        answer = f"{code}, HTTP {status}" if status else code
        kind = aws_error_kind(code, status)
        if kind == "denied":
            grant = grant or s3_grant_hint(bucket, region)
            if action == "AbortMultipartUpload":
                grant = f"s3:AbortMultipartUpload on arn:{_partition(region)}:s3:::{bucket}/*"
            return S3Error(
                f"{where} was denied ({answer}); grant the function's execution role {grant}. "
                "A bucket policy or an SSE-KMS key may also refuse it (then also "
                "kms:GenerateDataKey on the bucket's key)"
            )
        if kind == "kms":
            return S3Error(
                f"{where} was refused by the bucket's SSE-KMS key ({answer}); grant the "
                "function's execution role kms:GenerateDataKey and kms:Decrypt on that key"
            )
        if kind == "not found":
            return S3Error(
                f"{where}: the bucket does not exist ({answer}); check the bucket of the "
                "Fivetran connector's S3 sync method"
            )
        if kind == "invalid bucket":
            return S3Error(
                f"{where}: S3 refused the bucket name ({answer}); expected {S3_BUCKET_EXPECTED}"
            )
        if kind == "upload gone":
            return S3Error(
                f"{where}: the multipart upload no longer exists ({answer}); it was aborted or "
                "expired (a lifecycle rule); the next invocation starts the object again"
            )
        if kind == "throttled":
            return S3Error(
                f"{where}: S3 throttled the request or was unavailable ({answer}), also after "
                f"{S3_API_ATTEMPTS} attempts; the next invocation tries again"
            )
        if kind == "caller":
            return S3Error(
                f"{where}: S3 did not accept the function's own AWS credentials ({code}); in "
                "Lambda they come from its execution role, locally from the AWS profile or "
                "AWS_ACCESS_KEY_ID"
            )
        return S3Error(f"{where} failed ({answer})")
    if isinstance(exc, errors.ConnectionError | errors.HTTPClientError):
        service = f"com.amazonaws.{region}.s3" if region else "com.amazonaws.<region>.s3"
        return S3Error(
            f"{where}: cannot reach S3 ({type(exc).__name__}), also after {S3_API_ATTEMPTS} "
            "attempts; a function in a VPC has no internet access: give its subnets a NAT "
            f"gateway or a gateway VPC endpoint for {service}"
        )
    no_credentials = (
        errors.NoCredentialsError,
        errors.PartialCredentialsError,
        errors.CredentialRetrievalError,
    )
    if isinstance(exc, no_credentials):
        return S3Error(
            f"{where}: no AWS credentials found ({type(exc).__name__}); in Lambda they come "
            "from the execution role, locally from the AWS profile or AWS_ACCESS_KEY_ID"
        )
    if isinstance(exc, errors.ParamValidationError):  # boto3 refused it before sending
        return S3Error(
            f"{where}: the AWS SDK refused the bucket or key before sending it "
            f"(ParamValidationError); expected {S3_BUCKET_EXPECTED}, and a key of 1 to "
            f"{MAX_S3_KEY_BYTES} bytes"
        )
    return S3Error(f"{where} failed in the AWS SDK ({type(exc).__name__})")


def s3_client(time_left_s: float) -> Any:
    """The boto3 S3 client, its timeouts and retries sized to the time left in the invocation.

    The region is the Lambda's own (AWS_REGION). REDSHIFT_LAMBDA_S3_ENDPOINT_URL, for tests
    only, points it at a local S3 server with path-style addressing.
    """
    try:  # the Lambda runtime provides boto3; it is not in the zip
        import boto3
        import botocore.config
    except ImportError:
        raise S3Error(
            "the S3 sync method needs boto3, which the AWS Lambda Python runtime provides; to "
            "run the function elsewhere, pip install boto3"
        ) from None
    per_attempt_s = max(1.0, time_left_s / (2 * S3_API_ATTEMPTS))
    endpoint_url = os.environ.get(S3_ENDPOINT_URL_ENV) or None
    config = botocore.config.Config(
        connect_timeout=min(S3_CONNECT_TIMEOUT_S, per_attempt_s),
        read_timeout=min(S3_READ_TIMEOUT_S, per_attempt_s),
        retries={"mode": "standard", "total_max_attempts": S3_API_ATTEMPTS},
        s3={"addressing_style": "path"} if endpoint_url else None,
        user_agent_extra="redshift-lambda",
    )
    session = boto3.session.Session()
    region = session.region_name or ("us-east-1" if endpoint_url else None)
    return session.client("s3", region_name=region, endpoint_url=endpoint_url, config=config)


class S3Upload:
    """One object at (bucket, key), written as a stream of bytes.

    ``write`` buffers and sends each full part (``part_bytes``) as soon as it is there, from a
    worker thread, so reading goes on while a part travels (at most one part in flight, so
    memory stays at about two parts whatever the object's size); ``complete`` sends the rest and
    finishes the object (one PutObject when it never reached a part), returning its size.
    Until ``complete`` returns, nothing is visible at the key. ``abort`` (and leaving the
    ``with`` block by an exception) aborts the multipart upload. Every S3 failure raises
    S3Error; after one the upload is aborted.
    """

    def __init__(self, client: Any, bucket: str, key: str, *, part_bytes: int = PART_BYTES) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES} (S3's minimum)")
        self.client = client
        self.bucket = bucket
        self.key = key
        self.part_bytes = part_bytes
        self.upload_id: str | None = None  # set once the multipart upload exists
        self.parts: list[dict[str, Any]] = []  # PartNumber and ETag of each part sent
        self.bytes_written = 0  # given to write() so far
        # A buffer of one part, filled in place: never resized, and sent as it is (no copy of
        # a part is ever made). While it travels, a new one fills.
        self._buffer = bytearray()
        self._used = 0  # bytes of the buffer holding data
        self._pool: Any = None  # the worker thread's executor, made at the first part
        self._pending: tuple[Any, int] | None = None  # (future, part number) in flight
        self._done = False  # completed or aborted: no more writes
        self._started = time.monotonic()

    def __enter__(self) -> S3Upload:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None or not self._done:
            self.abort()  # an exception, or a block left without complete(): nothing appears

    def _region(self) -> str | None:
        meta = getattr(self.client, "meta", None)
        region = getattr(meta, "region_name", None)
        return region if isinstance(region, str) else None

    def _call(self, action: str, method: str, **params: Any) -> Any:
        """One S3 call; on failure the upload is aborted and S3Error raised."""
        import botocore.exceptions

        try:
            return getattr(self.client, method)(Bucket=self.bucket, Key=self.key, **params)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            error = s3_error(e, action, self.bucket, self.key, self._region())
        self.abort()
        raise error from None

    def write(self, data: bytes) -> None:
        """Append ``data`` to the object; sends every part that is full."""
        if self._done:
            raise RuntimeError("S3Upload.write after complete() or abort()")
        if not self._buffer:
            self._buffer = bytearray(self.part_bytes)
        view = memoryview(data).cast("B")
        while view:
            n = min(len(view), self.part_bytes - self._used)
            self._buffer[self._used : self._used + n] = view[:n]
            self._used += n
            self.bytes_written += n
            view = view[n:]
            if self._used == self.part_bytes:
                self._send_part(self._buffer)  # the whole buffer, not a copy
                self._buffer = bytearray(self.part_bytes)
                self._used = 0

    @property
    def parts_sent(self) -> int:
        """Parts handed to S3: those it confirmed and the one in flight."""
        return len(self.parts) + (self._pending is not None)

    def _wait(self) -> None:
        """Wait for the part in flight; on failure abort and raise S3Error."""
        if self._pending is None:
            return
        import botocore.exceptions

        (future, number), self._pending = self._pending, None
        try:
            answer = future.result()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            error = s3_error(e, "UploadPart", self.bucket, self.key, self._region())
            self.abort()
            raise error from None
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def _send_part(self, part: bytearray, *, wait: bool = False) -> None:
        if self.parts_sent >= MAX_PARTS:
            self.abort()
            raise S3Error(
                f"the object for bucket {shown(self.bucket)} (key {shown(self.key)}) would need "
                f"more than {MAX_PARTS} parts of {self.part_bytes} bytes (S3's limit); lower "
                "s3_max_bytes"
            )
        if self.upload_id is None:
            answer = self._call(
                "CreateMultipartUpload", "create_multipart_upload", ContentType=S3_CONTENT_TYPE
            )
            self.upload_id = str(answer["UploadId"])
            import concurrent.futures

            self._pool = concurrent.futures.ThreadPoolExecutor(1, "s3-part")
        self._wait()  # one part in flight at most: its buffer is then free again
        number = len(self.parts) + 1
        future = self._pool.submit(
            self.client.upload_part,
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=part,
        )
        self._pending = (future, number)
        if wait:
            self._wait()

    def complete(self) -> int:
        """Finish the object; returns its size in bytes. Raises S3Error (upload aborted)."""
        if self._done:
            raise RuntimeError("S3Upload.complete after complete() or abort()")
        self._wait()
        body, self._buffer = self._buffer, bytearray()
        del body[self._used :]  # the last part's data, truncated in place
        if self.upload_id is None:  # it never reached a part: one PutObject
            self._call("PutObject", "put_object", Body=body, ContentType=S3_CONTENT_TYPE)
        else:
            if body or not self.parts:
                self._send_part(body, wait=True)
            self._stop_pool()
            self._call(
                "CompleteMultipartUpload",
                "complete_multipart_upload",
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
        self._done = True
        log(
            logging.DEBUG,
            "s3 object written",
            bucket=self.bucket,
            bytes=self.bytes_written,
            parts=max(1, len(self.parts)),
            ms=round((time.monotonic() - self._started) * 1000, 1),
        )
        return self.bytes_written

    def abort(self) -> None:
        """Give the object up: abort the multipart upload, if any. Never raises; a failed abort
        is logged (a later call tries again, and a lifecycle rule with
        AbortIncompleteMultipartUpload removes what remains)."""
        self._done = True
        self._buffer, self._used = bytearray(), 0
        if self._pending is not None:  # let the part in flight end, whatever its outcome
            (future, _), self._pending = self._pending, None
            with contextlib.suppress(Exception):
                future.result()
        self._stop_pool()
        if self.upload_id is None:
            return
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
            )
        except Exception as e:
            code = getattr(e, "response", {}).get("Error", {}).get("Code")
            log(
                logging.WARNING,
                "s3 abort failed",
                bucket=self.bucket,
                parts=len(self.parts),
                error=type(e).__name__ if code is None else str(code),
            )
            return
        self.upload_id = None

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class ByteSink(Protocol):
    def write(self, data: bytes, /) -> None: ...


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")


class JsonObjectStream:
    """Fivetran's S3 payload, written piece by piece into ``out`` (an S3Upload):
    ``{"insert":{"t":[row,...],...},"delete":{"t":[keys,...],...}}``.

    Call ``begin_table``, ``rows`` any number of times, ``end_table``, for each table; then
    ``deletes`` for each table that has some; then ``finish``. Rows come as JSON texts (as the
    row transcoders write them); deletes as key dicts of JSON values (NaN raises ValueError).
    """

    def __init__(self, out: ByteSink) -> None:
        self.out = out
        self.bytes_written = 0
        self.rows_written = 0
        self.table_rows: dict[str, int] = {}  # rows written per table, for the log line
        self._phase = "start"  # start, insert, table, delete, finished
        self._first_in_table = True
        self._tables: set[str] = set()
        self._deleted: set[str] = set()
        self._current = ""

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.bytes_written += len(data)

    def _key(self, name: str, first: bool) -> bytes:
        return (b"" if first else b",") + _utf8(_s3_encode(name)) + b":"

    def begin_table(self, name: str) -> None:
        if self._phase not in ("start", "insert") or name in self._tables:
            raise RuntimeError(f"begin_table({name!r}) out of order or twice")
        first = self._phase == "start"
        if first:
            self._write(b'{"insert":{')
        self._write(self._key(name, first=first or not self._tables) + b"[")
        self._tables.add(name)
        self.table_rows[name] = 0
        self._current = name
        self._phase, self._first_in_table = "table", True

    def rows(self, texts: Sequence[str]) -> None:
        """Append rows to the open table, each already a JSON object's text (strict JSON, as
        the row transcoders write it in the S3 style)."""
        if self._phase != "table":
            raise RuntimeError("rows() outside begin_table() ... end_table()")
        if not texts:
            return
        self._write((b"" if self._first_in_table else b",") + _utf8(",".join(texts)))
        self._first_in_table = False
        self.rows_written += len(texts)
        self.table_rows[self._current] += len(texts)

    def end_table(self) -> None:
        if self._phase != "table":
            raise RuntimeError("end_table() without begin_table()")
        self._write(b"]")
        self._phase = "insert"

    def deletes(self, table: str, keys: Sequence[Mapping[str, Any]]) -> None:
        """The primary keys of ``table``'s deleted rows, e.g. [{"id": 3}]."""
        if self._phase == "table" or self._phase == "finished" or table in self._deleted:
            raise RuntimeError(f"deletes({table!r}) out of order or twice")
        first = self._phase != "delete"
        if self._phase == "start":
            self._write(b'{"insert":{')
        if first:
            self._write(b'},"delete":{')
        self._write(self._key(table, first=first) + _utf8(_s3_encode(list(keys))))
        self._deleted.add(table)
        self._phase = "delete"

    def finish(self) -> int:
        """Close the JSON object; returns the bytes written."""
        if self._phase == "table" or self._phase == "finished":
            raise RuntimeError("finish() with a table open, or twice")
        if self._phase == "start":
            self._write(b'{"insert":{')
        self._write(b'},"delete":{}}' if self._phase != "delete" else b"}}")
        self._phase = "finished"
        return self.bytes_written


# ---------------------------------------------------------------------------------------------
# Key store: full-refresh key sets too large for the state, in S3 (the key_store setting)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyStoreConfig:
    """``s3://bucket/prefix``: where full-refresh key sets go once they outgrow the state."""

    bucket: str
    prefix: str


_KEY_PREFIX = re.compile(r"[A-Za-z0-9!_.*'()/-]{0,512}")


def parse_key_store(text: str | None) -> KeyStoreConfig | None:
    """The key_store setting: None (keys in the state only) or s3://bucket/prefix."""
    if text is None:
        return None
    expected = "expected s3://bucket/prefix, e.g. s3://my-bucket/redshift-lambda/keys"
    if not text.startswith("s3://"):
        raise ConfigurationError(f"setting 'key_store' must start with s3://; {expected}")
    bucket, _, prefix = text[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    problem = s3_bucket_problem(bucket)
    if problem is not None:
        raise ConfigurationError(
            f"setting 'key_store': the bucket {shown(bucket)} {problem}; {expected}"
        )
    if prefix and (
        not _KEY_PREFIX.fullmatch(prefix) or any(p in ("", ".", "..") for p in prefix.split("/"))
    ):
        raise ConfigurationError(
            f"setting 'key_store': the prefix {shown(prefix)} may hold only letters, digits "
            f"and !_.*'()- between single slashes; {expected}"
        )
    return KeyStoreConfig(bucket, prefix)


class KeyStore:
    """One table's key sets in S3: immutable objects named by table, generation, part index and
    content digest. The state names a generation and its manifest's SHA-256; the manifest
    lists each part's key count and SHA-256, and every object is checked against its digest
    before it is used (a tampered, stale or damaged object is an error, never a wrong delete)."""

    def __init__(self, config: KeyStoreConfig, client: Any, destination: str) -> None:
        self.config = config
        self.client = client
        slug = re.sub(r"[^a-z0-9_]+", "_", destination.lower())[:48].strip("_") or "t"
        digest = hashlib.sha256(destination.encode()).hexdigest()[:12]
        self.table_prefix = "/".join(p for p in (config.prefix, f"{slug}-{digest}") if p) + "/"
        self._manifests: dict[str, list[tuple[int, str]]] = {}
        self._previous: dict[str, str | None] = {}  # manifest digest -> the manifest before it

    def _key(self, gen: str, name: str) -> str:
        return f"{self.table_prefix}{gen}/{name}"

    def _manifest_key(self, gen: str, parts: int, digest: str) -> str:
        return self._key(gen, f"manifest-{parts:06d}-{digest[:16]}.json")

    def _part_key(self, gen: str, index: int, digest: str) -> str:
        return self._key(gen, f"part-{index:06d}-{digest[:16]}.keys")

    def _call(self, action: str, key: str, **kwargs: Any) -> Any:
        method = {
            "GetObject": self.client.get_object,
            "PutObject": self.client.put_object,
            "ListObjectsV2": self.client.list_objects_v2,
            "DeleteObjects": self.client.delete_objects,
        }[action]
        try:
            return method(Bucket=self.config.bucket, **kwargs)
        except Exception as e:  # botocore's; its message may quote the request: not chained
            raise s3_error(
                e, action, self.config.bucket, key, grant=key_store_grant(self.config)
            ) from None

    def _get(self, key: str, digest: str) -> bytes:
        body = self._call("GetObject", key, Key=key)["Body"].read()
        if hashlib.sha256(body).hexdigest() != digest:
            raise StateError(
                f"the key store object {shown(key)} does not match the digest the state names "
                "(changed or damaged); re-sync the table in Fivetran to rebuild its key set"
            )
        return bytes(body)

    def manifest(self, stored: StoredSet) -> list[tuple[int, str]]:
        """(key count, SHA-256) of each part of ``stored``, checked against the state's digest."""
        assert stored.gen is not None and stored.manifest is not None
        cached = self._manifests.get(stored.manifest)
        if cached is not None:
            return cached
        if not stored.parts:
            return []
        key = self._manifest_key(stored.gen, stored.parts, stored.manifest)
        try:
            data = json.loads(self._get(key, stored.manifest))
            parts = [(int(n), str(d)) for n, d in data["parts"]]
            before = data.get("previous")
        except (ValueError, KeyError, TypeError):
            raise StateError(f"the key store manifest {shown(key)} is not readable") from None
        if len(parts) != stored.parts or sum(n for n, _ in parts) != stored.count:
            raise StateError(f"the key store manifest {shown(key)} disagrees with the state")
        self._manifests[stored.manifest] = parts
        self._previous[stored.manifest] = before if isinstance(before, str) else None
        return parts

    def part(self, stored: StoredSet, index: int) -> list[Key]:
        assert stored.gen is not None
        count, digest = self.manifest(stored)[index]
        key = self._part_key(stored.gen, index, digest)
        try:
            keys = decode_keys(self._get(key, digest))
        except ValueError:
            keys = []
        if len(keys) != count:
            raise StateError(f"the key store object {shown(key)} is not a key part")
        return keys

    def append(self, stored: StoredSet | None, keys: Sequence[Key]) -> StoredSet:
        """``stored`` (None: a new generation) with ``keys`` added as new parts: the parts, then
        a new manifest, each a new object. The manifest the request's state names stays (a
        retry starts from it); the one before it, which no state can name any more, is
        removed, so a generation holds its parts and at most two manifests."""
        previous: str | None = None
        if stored is None or stored.gen is None:
            gen = secrets.token_hex(8)
            parts: list[tuple[int, str]] = []
            count = 0
        else:
            gen, parts, count = stored.gen, list(self.manifest(stored)), stored.count
            if stored.parts:
                assert stored.manifest is not None
                previous = self._manifest_key(gen, stored.parts, stored.manifest)
        for i in range(0, len(keys), STORE_PART_KEYS):
            chunk = keys[i : i + STORE_PART_KEYS]
            body = encode_keys(chunk)
            digest = hashlib.sha256(body).hexdigest()
            key = self._part_key(gen, len(parts), digest)
            self._call("PutObject", key, Key=key, Body=body)
            parts.append((len(chunk), digest))
            count += len(chunk)
        body = json.dumps({"gen": gen, "parts": parts, "previous": previous}).encode()
        digest = hashlib.sha256(body).hexdigest()
        key = self._manifest_key(gen, len(parts), digest)
        self._call("PutObject", key, Key=key, Body=body)
        older = self._previous.get(stored.manifest) if stored and stored.manifest else None
        if older:
            self._delete([older])
        self._manifests[digest] = parts
        self._previous[digest] = previous
        return StoredSet(count, sizes=tuple(n for n, _ in parts), gen=gen, manifest=digest)

    def remove_generations(self, keep: Iterable[str]) -> int:
        """Delete this table's objects of every generation but ``keep`` (finished syncs no
        longer need them; failed invocations left them), up to REMOVE_OBJECTS a call (the rest
        at the next sync's start); the objects removed."""
        kept = {f"{self.table_prefix}{g}/" for g in keep}
        listed = self._call(
            "ListObjectsV2", self.table_prefix, Prefix=self.table_prefix, Delimiter="/"
        )
        removed = 0
        for folder in listed.get("CommonPrefixes", ()):
            prefix = folder.get("Prefix", "")
            while prefix not in kept and removed < REMOVE_OBJECTS:
                page = self._call("ListObjectsV2", prefix, Prefix=prefix)
                names = [o["Key"] for o in page.get("Contents", ())]
                if not names:
                    break
                self._delete(names)
                removed += len(names)
        return removed

    def _delete(self, names: Sequence[str]) -> None:
        for i in range(0, len(names), 1000):  # S3 takes 1,000 keys a call
            batch = [{"Key": n} for n in names[i : i + 1000]]
            self._call("DeleteObjects", batch[0]["Key"], Delete={"Objects": batch, "Quiet": True})


def key_store_grant(config: KeyStoreConfig) -> str:
    """The least-privilege grant the key store needs."""
    arn = f"arn:{_partition(None)}:s3:::{config.bucket}"
    objects = f"{arn}/{config.prefix + '/' if config.prefix else ''}*"
    return (
        f"s3:GetObject, s3:PutObject and s3:DeleteObject on {objects}, and s3:ListBucket on "
        f"{arn} (for the key_store setting)"
    )


# ---------------------------------------------------------------------------------------------
# Batch assembly across tables, and the Lambda output
# ---------------------------------------------------------------------------------------------


class Response:
    """Fivetran's response, assembled table by table, its size tracked as it grows.

    Each state entry's serialised size is kept when the entry is set, rows and deletes are
    counted by the bytes measured when they were added, and the rest (the per-table sections)
    is re-measured only when a table joins: no estimate re-serialises the state.
    """

    def __init__(
        self,
        config: Config,
        sync: SyncState,
        specs: Sequence[TableSpec],
        stream: JsonObjectStream | None = None,
    ) -> None:
        self.config = config
        # Sync through S3: rows and deletes go to the object as they are read; the state,
        # schema and hasMore are returned. The byte budget is then the object's.
        self.stream = stream
        self.table_start = 0  # object bytes written before the batch being read
        destinations = [s.destination for s in specs]
        self.entries: dict[str, TableState] = {}
        self._entry_bytes: dict[str, int] = {}
        for destination, entry in sync.tables.items():
            if destination in destinations or _still_configured(config, entry):
                self.set_entry(destination, entry)  # a table no longer configured is dropped
        # A seed-style state (Fivetran's sample function) belongs to the first incremental
        # table; a full table re-reads from its first key anyway.
        first = next((s.destination for s in specs if s.mode == "incremental"), None)
        if sync.seed is not None and first is not None and first not in self.entries:
            self.set_entry(first, sync.seed)
        self.done = [d for d in sync.done if d in destinations]
        self.started = sync.started
        if set(destinations) <= set(self.done):
            self.done = []  # every table was finished: this invocation starts a new sync
            self.started = None
        if self.started is None:
            self.started = int(time.time())
        self.inserts: dict[str, list[str]] = {}  # rows as JSON object texts, per table
        self.row_bytes: dict[str, int] = {}  # serialised rows with separators, per table
        self.deletes: dict[str, list[Row]] = {}
        self.delete_bytes: dict[str, int] = {}
        self.keys: dict[str, list[str]] = {}  # primary keys, for the schema section
        self.pages = 0
        self.rows = 0  # rows in the response (limit counts them), all tables together
        self._skeleton: int | None = None  # size of the sections but state, rows, deletes
        self._open: str | None = None  # the table whose rows the S3 object is taking
        # Full tables share the state's room for key sets; beyond it they go to the key store.
        full = sum(1 for s in specs if s.mode == "full")
        self.inline_max = min(INLINE_SET_MAX_BYTES, INLINE_SETS_MAX_BYTES // max(1, full))
        self._s3: Any = None

    def key_store(self, destination: str, time_left_s: float) -> KeyStore | None:
        """The key store of ``destination``'s key sets, or None when none is set (its client's
        timeouts and retries sized to the time left in the invocation)."""
        config = self.config.key_store
        if config is None:
            return None
        if self._s3 is None:
            self._s3 = s3_client(time_left_s)
        return KeyStore(config, self._s3, destination)

    def open_table(self, destination: str) -> None:
        """Syncing through S3: start ``destination``'s rows in the object (once)."""
        if self.stream is not None and self._open != destination:
            self.close_table()
            self.table_start = self.stream.bytes_written
            self.stream.begin_table(destination)
            self._open = destination

    def close_table(self) -> None:
        if self.stream is not None and self._open is not None:
            self.stream.end_table()
            self._open = None

    def stream_rows(self, rows: list[str]) -> None:
        """The rows a batch hands on as it reads (syncing through S3)."""
        assert self.stream is not None
        self.stream.rows(rows)
        self.rows += len(rows)

    # -- the state --------------------------------------------------------------------------
    def _entry_size(self, destination: str, entry: TableState) -> int:
        return len(_escape(destination)) + 2 + json_size(_entry_json(entry))

    def set_entry(self, destination: str, entry: TableState) -> None:
        self.entries[destination] = entry
        self._entry_bytes[destination] = self._entry_size(destination, entry)

    def state(self, has_more: bool = True) -> dict[str, Any]:
        # A response that ends the sync lists no table as done: the next one starts anew.
        entries = {d: e for d, e in self.entries.items() if e.source is not None}  # (an unused
        # seed-style position is dropped: the table then starts from its first row)
        if not has_more:
            return write_state(SyncState(entries))
        return write_state(SyncState(entries, tuple(self.done), started=self.started))

    def state_size(self, replaced: tuple[str, TableState] | None = None) -> int:
        """Serialised bytes of ``state()`` (with ``replaced``'s entry in place, if given, and
        its table counted in ``done``, which it joins when it finishes: an upper bound)."""
        sizes = dict(self._entry_bytes)
        done = self.done
        if replaced is not None:
            sizes[replaced[0]] = self._entry_size(*replaced)
            if replaced[0] not in done:
                done = [*done, replaced[0]]
        tables = 2 + sum(sizes.values()) + 2 * max(0, len(sizes) - 1)
        started = len(', "started": ') + len(str(self.started))
        return len('{"version": 0, "tables": , "done": }') + tables + json_size(done) + started

    # -- rows and deletes -------------------------------------------------------------------
    def begin(self, destination: str, primary_key: Sequence[str]) -> None:
        """Make room for a table's sections (its insert list, schema, deletes)."""
        if destination not in self.keys:
            self.keys[destination] = list(primary_key)
            self.inserts.setdefault(destination, [])
            self._skeleton = None

    def add_rows(self, destination: str, rows: list[str], row_bytes: int) -> None:
        """Rows of ``destination`` (``row_bytes``: their serialised bytes with separators)."""
        if not rows:
            return
        if self.stream is not None:
            self.stream.rows(rows)
        else:
            had = self.row_bytes.get(destination, 0)
            self.inserts[destination].extend(rows)
            self.row_bytes[destination] = had + row_bytes + (2 if had else 0)
        self.rows += len(rows)

    def add_deletes(self, destination: str, keys: list[Row], key_bytes: int) -> None:
        if not keys:
            return
        if destination not in self.deletes:
            self.deletes[destination] = []
            self._skeleton = None
        had = self.delete_bytes.get(destination, 0)
        self.deletes[destination].extend(keys)
        self.delete_bytes[destination] = had + key_bytes + (2 if had else 0)

    def body(self, has_more: bool) -> dict[str, Any]:
        response: dict[str, Any] = {"state": self.state(has_more), "insert": self.inserts}
        if self.deletes:
            response["delete"] = self.deletes
            if self.config.deletes == "soft":
                response["softDelete"] = list(self.deletes)
        response["schema"] = {d: {"primary_key": k} for d, k in self.keys.items()}
        response["hasMore"] = has_more
        return response

    def has_content(self) -> bool:
        """Whether the response carries any row or delete yet."""
        return bool(self.rows) or bool(self.deletes)

    def returned(self, has_more: bool) -> dict[str, Any]:
        """What the function returns: everything (the rows as JSON object texts), or, syncing
        through S3, all but the rows and deletes (which are in the object)."""
        body = self.body(has_more)
        if self.stream is not None:
            del body["insert"]
            body.pop("delete", None)
        return body

    def _skeleton_size(self) -> int:
        """Bytes of the response's sections but the state's content, rows and deletes: summed
        per table as tables join (json_size of the same shape, without serialising it)."""
        if self._skeleton is None:
            empty = {"state": 0, "insert": {}, "schema": {}, "hasMore": False}  # "false": longer
            size = json_size(empty) - 1
            names = [len(_escape(d)) for d in self.keys]
            if names:
                size += sum(n + 4 for n in names) + 2 * (len(names) - 1)  # "d": []
                size += sum(
                    len(_escape(d)) + 2 + json_size({"primary_key": k})
                    for d, k in self.keys.items()
                ) + 2 * (len(names) - 1)
            deleted = [len(_escape(d)) for d in self.deletes]
            if deleted:
                size += len(', "delete": {}') + sum(n + 4 for n in deleted) + 2 * (len(deleted) - 1)
                if self.config.deletes == "soft":
                    size += len(', "softDelete": []') + sum(deleted) + 2 * (len(deleted) - 1)
            self._skeleton = size
        return self._skeleton

    def _deletes_size(self) -> int:
        return sum(self.delete_bytes.values())

    def document(self, has_more: bool) -> bytes:
        """The returned response as the JSON document the Lambda runtime sends, as
        ``json.dumps`` writes it: the rows' texts spliced in as they were read, so its size is
        exactly ``size()`` (syncing through S3, of the small returned response)."""
        parts = []
        for name, value in self.returned(has_more).items():
            if name == "insert":
                text = ", ".join(
                    f"{_encode(table)}: [{', '.join(rows)}]" for table, rows in value.items()
                )
                parts.append(f'"insert": {{{text}}}')
            else:
                parts.append(f"{_encode(name)}: {_encode(value)}")
        return ("{" + ", ".join(parts) + "}").encode("utf-8")

    def size(self) -> int:
        """Serialised bytes of the response as it stands (an upper bound whatever hasMore);
        syncing through S3, of the object (the deletes still to be written included)."""
        if self.stream is not None:
            return self.stream.bytes_written + self._stream_deletes_size() + 64
        return (
            self._skeleton_size()
            + self.state_size()
            + sum(self.row_bytes.values())
            + self._deletes_size()
        )

    def _stream_deletes_size(self) -> int:
        return sum(len(_escape(d)) + 4 + b for d, b in self.delete_bytes.items())

    def size_with(self, destination: str, entry: TableState) -> int:
        """The size with ``destination``'s entry replaced, before more of its rows are added
        (a separator counted for them if it has rows already)."""
        if self.stream is not None:  # the state is in the returned response, not the object
            return self.table_start + self._stream_deletes_size() + 64
        separator = 2 if self.row_bytes.get(destination) else 0
        return (
            self._skeleton_size()
            + self.state_size((destination, entry))
            + sum(self.row_bytes.values())
            + separator
            + self._deletes_size()
        )

    def room(self) -> int:
        """Bytes left in the budget."""
        return self.config.max_response_bytes - self.size()

    def delete_room(self, destination: str, entry: TableState) -> int:
        """Bytes left for ``destination``'s deletes with its entry replaced by ``entry`` (its
        delete list's own brackets and name counted, and a separator if it has deletes)."""
        had = 2 if self.delete_bytes.get(destination) else 0
        if self.stream is not None:
            opening = 0 if destination in self.deletes else len(_escape(destination)) + 4
            held = self._stream_deletes_size()
            used = self.stream.bytes_written + held + 64 + opening
            # Deletes wait in memory until the rows are written: at most S3_DELETE_BYTES.
            return min(self.config.max_response_bytes - used, S3_DELETE_BYTES - held) - had
        opening = 0
        if destination not in self.deletes:
            before = self._skeleton_size()
            self.deletes[destination] = []
            self._skeleton = None
            opening = self._skeleton_size() - before
            del self.deletes[destination]
            self._skeleton = None
        return self.config.max_response_bytes - self.size_with(destination, entry) - opening - had


def _still_configured(config: Config, entry: TableState) -> bool:
    """Whether the configuration still names or matches the table an entry was written for,
    though this invocation did not list it (renamed for a moment, or not visible): its entry
    and key set stay, so that its deletes are found when it is back."""
    if entry.source is None:
        return False
    selection = config.selection
    if selection is None:
        return False  # a table of the 'tables' list is listed in every invocation
    try:
        parts = parse_identifiers(entry.source, ".", "the state's 'source'")
    except ConfigurationError:
        return False
    return len(parts) == 2 and parts[0] == selection.schema and selection.selects(parts[1])


def _read_into(
    source: Source,
    config: Config,
    plan: TablePlan,
    previous: TableState | None,
    response: Response,
    destination: str,
    annotate: Callable[[TableState, list[Key]], TableState] | None = None,
    until: tuple[str | None, ...] | None = None,
    widest: Callable[[TableState], TableState] = lambda state: state,
) -> Batch:
    """Read one batch of ``plan``'s rows after ``previous`` into the response. ``widest``
    gives the largest form the batch's state may still take before the response is sent (a
    full table's entry moves on to its next phase and range): that is what is measured."""
    base = previous if previous is not None and previous.source is not None else None
    empty = replace(base, after=None) if base is not None else TableState(plan.source, (), ())
    stream = response.stream
    if response.size_with(destination, empty) > config.max_response_bytes - MIN_ROOM_BYTES:
        if response.has_content():
            return Batch(rows=[], state=None, has_more=True, row_bytes=0, pages=0)
        raise _state_error(
            f"it takes {response.size_with(destination, empty)} of max_response_bytes="
            f"{config.max_response_bytes}, too little room for rows; raise max_response_bytes"
        )
    response.open_table(destination)
    if stream is not None:  # what this batch adds is counted by read_batch itself
        response.table_start = stream.bytes_written
    batch = read_batch(
        source.fetch,
        plan,
        previous,
        config,
        lambda state: response.size_with(destination, widest(state)),
        source.time_left_ms if stream is None else lambda: source.time_left_ms() - S3_FINISH_MS,
        base=base,
        annotate=annotate,
        sink=None if stream is None else response.stream_rows,
        max_read_bytes=None if stream is None else S3_READ_BYTES,
        shared=response.has_content(),
        until=until,
        style=LAMBDA_JSON if stream is None else S3_JSON,
    )
    response.pages += batch.pages
    response.add_rows(destination, batch.rows, batch.row_bytes)
    return batch


def serve_table(
    source: Source, config: Config, spec: TableSpec, response: Response, plan: TablePlan
) -> bool:
    """Add the next batch of one table to ``response``; True when the table's sync is done."""
    destination = spec.destination
    previous = response.entries.get(destination)
    check_state(previous, plan, spec.mode)
    response.begin(destination, plan.primary_key)
    if spec.mode == "full":
        store = response.key_store(destination, source.time_left_ms() / 1000)
        done = FullRefresh(source, spec, plan, response, store, response.inline_max).run(previous)
        response.close_table()
        return done
    left = config.limit - response.rows
    if left <= 0:
        return False
    batch = _read_into(source, replace(config, limit=left), plan, previous, response, destination)
    response.close_table()
    if batch.state is not None:
        response.set_entry(destination, batch.state)
    if batch.has_more:
        return False
    entry = response.entries.get(destination)
    if entry is not None and entry.source is not None and not entry.loaded:
        response.set_entry(destination, replace(entry, loaded=True))
    response.done.append(destination)
    return True


class KeySetTooLarge(ConfigurationError):
    """A full table's key set outgrows the state, and no key store is set."""


def _too_large(plan: TablePlan, count: int, inline_max: int) -> KeySetTooLarge:
    return KeySetTooLarge(
        f"full-refresh table {plan.source} has about {count:,} keys, too many for the state "
        f"(its key set may take {inline_max:,} bytes there); set 'key_store' to "
        "s3://bucket/prefix so its keys live in S3, or copy it incrementally (give it a "
        "'cursor')"
    )


def _key_condition(plan: TablePlan, keys: Sequence[Key]) -> tuple[str, dict[str, str | None]]:
    """Rows whose key equals one of ``keys`` as the database compares (bound parameters): an
    IN list for a one-column key (NULL keys apart), else an OR of ANDs."""
    by_name = {c.name: c for c in plan.columns}
    ordered = [by_name[k] for k in plan.primary_key]
    params: dict[str, str | None] = {}
    terms = []
    if len(ordered) == 1:
        column = ordered[0]
        bound = []
        for i, (value,) in enumerate(keys):
            if value is None:
                terms.append(f"{quote_identifier(column.name)} IS NULL")
                continue
            params[f"k{i}"] = position_text(column.type_oid, value)
            bound.append(_bound(column, f"k{i}"))
        if bound:
            terms.append(f"{quote_identifier(column.name)} IN ({', '.join(bound)})")
        return " OR ".join(terms) or "FALSE", params
    for i, key in enumerate(keys):
        parts = []
        for j, (column, value) in enumerate(zip(ordered, key, strict=True)):
            text = position_text(column.type_oid, value)
            if text is not None:
                params[f"k{i}_{j}"] = text
            parts.append(_compare(column, text, f"k{i}_{j}")[1])
        terms.append("(" + " AND ".join(parts) + ")")
    return " OR ".join(terms), params


def build_keys_sql(plan: TablePlan, keys: Sequence[Key]) -> tuple[str, dict[str, str | None]]:
    """The key columns of the rows whose key is one of ``keys`` (which still exist)."""
    condition, params = _key_condition(plan, keys)
    names = ", ".join(quote_identifier(k) for k in plan.primary_key)
    source = f"{quote_identifier(plan.schema)}.{quote_identifier(plan.name)}"
    return f"SELECT {names} FROM {source} WHERE {condition}", params


class FullRefresh:
    """One full-refresh table in one invocation. Its sync re-reads the table in key order, one
    range per part of the key set the last finished sync stored (a range ends at the part's
    last key; the tail after the last part is the last range). Each range has two phases:

    - reading: rows of the range go out; their keys are added to the new key set, and the
      stored keys they match are marked settled;
    - deleting: the stored keys of the range not settled are checked against the table (by
      equality, so no ordering is trusted) and those absent go out as deletes;

    then the next range; after the tail the new key set replaces the stored one (done).
    Memory and work per invocation are bounded by one part and the response's budget."""

    def __init__(
        self,
        source: Source,
        spec: TableSpec,
        plan: TablePlan,
        response: Response,
        store: KeyStore | None,
        inline_max: int,
    ) -> None:
        self.source, self.spec, self.plan, self.response = source, spec, plan, response
        self.config = response.config
        self.store = store
        self.inline_max = inline_max
        self.destination = spec.destination
        self._parts: dict[int, list[Key]] = {}
        # A new sync without a key store checks that the key set will fit, unless the table is
        # read whole in this invocation (its keys then tell exactly).
        self.check_pending = False

    # -- the stored key set -----------------------------------------------------------------
    def stored_part(self, entry: TableState, index: int) -> list[Key]:
        if index not in self._parts:
            stored = entry.keys
            assert stored is not None
            if stored.gen is None:
                keys = inline_part(stored, index)
            else:
                keys = self._store().part(stored, index)
            self._parts = {index: keys}  # one part in memory
        return self._parts[index]

    def _store(self) -> KeyStore:
        if self.store is None:
            raise ConfigurationError(
                f"table {self.plan.source}: the state keeps its key set in a key store, but "
                "setting 'key_store' is not set; set it back to the s3:// location it had"
            )
        return self.store

    def stored_parts(self, entry: TableState) -> int:
        if entry.keys is None:
            return 0
        if entry.keys.gen is not None:
            return len(self._store().manifest(entry.keys))
        return entry.keys.parts

    # -- lifecycle --------------------------------------------------------------------------
    def run(self, previous: TableState | None) -> bool:
        """Serve the table into the response; True when its sync is done."""
        entry = self.start(previous)
        while True:
            if entry.phase == "reading":
                entry, more = self.read_range(entry)
                if more:
                    if self.check_pending:  # the table goes on past this invocation
                        _check_key_set_fits(self.source, self.plan, self.inline_max)
                    return self.save(entry, done=False)
                if entry.next is None or entry.next.gen is None:  # (sized by encoding: an
                    entry = self.flush(entry)  # inline set takes each range's keys at once)
                entry = replace(entry, phase="deleting")
            entry, more = self.delete_range(entry)
            if more:
                return self.save(entry, done=False)
            if entry.part >= self.stored_parts(entry):
                return self.save(self.finish(entry), done=True)
            entry = replace(entry, phase="reading", part=entry.part + 1, settled=None)

    def start(self, previous: TableState | None) -> TableState:
        """The entry to go on from; a new sync when the last one finished (or none ran)."""
        if previous is not None and not previous.complete:
            return previous
        keys = previous.keys if previous is not None else None
        if self.store is not None:
            live = [s.gen for s in (keys,) if s is not None and s.gen is not None]
            removed = self.store.remove_generations(live)
            if removed:
                log(logging.INFO, "key store cleaned", table=self.plan.source, objects=removed)
        else:
            self.check_pending = True
        return TableState(
            self.plan.source,
            (),
            self.plan.primary_key,
            mode="full",
            keys=keys,
            bytes_per_row=previous.bytes_per_row if previous is not None else None,
        )

    def read_range(self, entry: TableState) -> tuple[TableState, bool]:
        """Rows of the current range; (entry, True when the response is full first)."""
        response, config = self.response, self.config
        left = config.limit - response.rows
        if left <= 0 or response.room() < MIN_ROOM_BYTES:
            return entry, True
        parts = self.stored_parts(entry)
        until = None
        index: dict[Key, int] = {}
        if entry.part < parts:
            keys = self.stored_part(entry, entry.part)
            until = tuple(
                position_text(c.type_oid, v) for c, v in zip(self.plan.order, keys[-1], strict=True)
            )
            index = {k: i for i, k in enumerate(keys)}
        bits = _part_bits(entry, len(index))

        def annotate(state: TableState, keys: list[Key]) -> TableState:
            for key in keys:
                i = index.get(key)
                if i is not None:
                    bits[i] = True
            settled = encode_bits(bits) if index else None
            return replace(state, pending=state.pending + tuple(keys), settled=settled)

        bound = _bits_text_bound(len(index))

        def widest(state: TableState) -> TableState:  # (its next phase, part and bitmap)
            settled = "A" * bound if index else None
            return replace(
                state, complete=False, phase="deleting", part=state.part + 1, settled=settled
            )

        batch = _read_into(
            self.source,
            replace(config, limit=left),
            self.plan,
            entry,
            response,
            self.destination,
            annotate,
            until,
            widest,
        )
        if batch.state is not None:  # (the table's sync is over only once finish() says so)
            entry = replace(batch.state, complete=False)
        return entry, batch.has_more

    def delete_range(self, entry: TableState) -> tuple[TableState, bool]:
        """Deletes of the current range, as many as fit; (entry, True when some are left)."""
        if entry.part >= self.stored_parts(entry):
            return entry, False  # the tail: no stored keys
        keys = self.stored_part(entry, entry.part)
        bits = _part_bits(entry, len(keys))
        todo = [i for i, bit in enumerate(bits) if not bit]
        if not todo:
            return replace(entry, settled=None), False
        names = list(self.plan.primary_key)
        # The bitmap is sized at its largest, so that no delete is measured twice.
        widest = replace(entry, settled="A" * _bits_text_bound(len(keys)))
        room = self.response.delete_room(self.destination, widest)
        for at in range(0, len(todo), CONFIRM_KEYS):
            if self.source.time_left_ms() < MIN_TIME_LEFT_MS:
                return replace(entry, settled=encode_bits(bits)), True
            chunk = todo[at : at + CONFIRM_KEYS]
            present = self.present([keys[i] for i in chunk])
            gone: list[Row] = []
            used = 0
            for i in chunk:
                if keys[i] not in present:
                    row = dict(zip(names, keys[i], strict=True))
                    size = json_size(row) + (2 if gone else 0)
                    if used + size > room:
                        break
                    gone.append(row)
                    used += size
                bits[i] = True
            self.response.add_deletes(self.destination, gone, used)
            room -= used + (2 if gone else 0)
            if not all(bits[i] for i in chunk):
                if not self.response.has_content():
                    raise _state_error(
                        f"no room for a single delete of {self.plan.source} in "
                        f"max_response_bytes={self.config.max_response_bytes}"
                    )
                return replace(entry, settled=encode_bits(bits)), True
        return replace(entry, settled=None), False

    def present(self, keys: Sequence[Key]) -> set[Key]:
        """The keys of ``keys`` that rows of the table still have, exactly (same text)."""
        sql, params = build_keys_sql(self.plan, keys)
        rows = self.source.query("checking deleted keys", sql, params).rows
        return {tuple(r) for r in rows}

    def finish(self, entry: TableState) -> TableState:
        """The read is over and every delete sent: this sync's keys become the stored set."""
        entry = self.flush(entry)
        return replace(
            entry,
            after=None,
            complete=True,
            keys=entry.next or StoredSet(),
            next=None,
            phase="reading",
            part=0,
            settled=None,
        )

    def flush(self, entry: TableState) -> TableState:
        """Write the keys this invocation delivered into the new key set."""
        pending = entry.pending
        if not pending:
            return entry
        stored = entry.next
        if stored is None or stored.gen is None:
            inline, sizes = inline_parts(pending)
            base = stored or StoredSet()
            merged = StoredSet(base.count + len(pending), base.inline + inline, base.sizes + sizes)
            if sum(len(p) for p in merged.inline) <= self.inline_max:
                return replace(entry, next=merged, pending=())
            if self.store is None:
                raise _too_large(self.plan, merged.count, self.inline_max)
            keys = [k for i in range(base.parts) for k in inline_part(base, i)] + list(pending)
            return replace(entry, next=self.store.append(None, keys), pending=())
        return replace(entry, next=self._store().append(stored, pending), pending=())

    def save(self, entry: TableState, done: bool) -> bool:
        self.response.set_entry(self.destination, self.flush(entry))
        if done:
            self.response.done.append(self.destination)
        return done


def _check_key_set_fits(source: Source, plan: TablePlan, inline_max: int) -> None:
    """Refuse up front a full table whose key set cannot fit in the state (no key store): its
    row count times the bytes per key of its first keys, encoded as the state keeps them."""
    sql, params = _key_sample_sql(plan, KEY_SAMPLE_ROWS)
    rows = source.query("counting rows and sampling keys", sql, params).rows
    if not rows:
        return
    count = int(rows[0][0])
    sample = [tuple(r[1:]) for r in rows]
    # What each further key adds (compression makes the first keys dearer than the next):
    # the sample's second half against its first, base64 as the state keeps it.
    half = len(sample) // 2
    whole, first = len(encode_keys(sample)), len(encode_keys(sample[:half]))
    per_key = max(0, whole - first) / max(1, len(sample) - half)
    if (whole + (count - len(sample)) * per_key) * 4 / 3 > inline_max:
        raise _too_large(plan, count, inline_max)


def _bits_text_bound(count: int) -> int:
    """The longest ``encode_bits`` text of ``count`` bits (zlib's worst case, base64)."""
    raw = (count + 7) // 8
    return 4 * ((raw + raw // 1000 + 16 + 2) // 3 + 1)


def _part_bits(entry: TableState, count: int) -> list[bool]:
    if entry.settled is None or not count:
        return [False] * count
    try:
        return decode_bits(entry.settled, count)
    except ValueError:
        raise _state_error("'settled' is not a bitmap of the current key part") from None


def _key_sample_sql(plan: TablePlan, count: int) -> tuple[str, dict[str, str | None]]:
    names = ", ".join(quote_identifier(k) for k in plan.primary_key)
    order = ", ".join(
        quote_identifier(c.name) + (" NULLS FIRST" if c.nullable else "") for c in plan.order
    )
    source = f"{quote_identifier(plan.schema)}.{quote_identifier(plan.name)}"
    count_sql = f"SELECT COUNT(*) FROM {source}"
    return f"SELECT ({count_sql}), {names} FROM {source} ORDER BY {order} LIMIT {int(count)}", {}


def configured_tables(source: Source, config: Config) -> list[TableSpec]:
    """The configured tables, then those the schema selection finds, in a fixed order."""
    specs = list(config.tables)
    selection = config.selection
    if selection is not None:
        rows = source.query(
            "listing the tables of the schema", SCHEMA_TABLES_SQL, {"schema": selection.schema}
        ).rows
        if len(rows) > 1:
            source.prefetch_catalog(selection.schema)
        configured = {(s.table[0] if len(s.table) == 2 else None, s.table[-1]) for s in specs}
        chosen = [
            str(name)
            for (name,) in rows
            if selection.selects(str(name))
            and (selection.schema, name) not in configured
            and (None, name) not in configured
        ]
        if not chosen and not specs:
            raise ConfigurationError(
                f"setting 'schema': no table of schema {shown(selection.schema)} matches "
                f"include {shown(','.join(selection.include))} and exclude "
                f"{shown(','.join(selection.exclude))}, or user {shown(source.config.user)} "
                "cannot see them"
            )
        specs += [TableSpec((selection.schema, n), (), None, "full", n, True) for n in chosen]
        _check_destinations(specs)
    return specs


def _naming(error: ConnectorError, spec: TableSpec) -> ConnectorError:
    """The same error, its message prefixed with the table it happened in."""
    message = f"table {spec.name}: {error}"
    named = (
        type(error)(message, error.sqlstate)
        if isinstance(error, SourceError)
        else type(error)(message)
    )
    named.logged = error.logged
    return named


# ---------------------------------------------------------------------------------------------
# Lambda handler: Fivetran's request in, Fivetran's response out
# ---------------------------------------------------------------------------------------------


def _remaining_ms(context: Any) -> float:
    get = getattr(context, "get_remaining_time_in_millis", None)
    return float(get()) if callable(get) else float(LOCAL_RUN_TIME_MS)


RETURN_BYTES_ENV = "REDSHIFT_LAMBDA_RETURN_BYTES"
RUNTIME_API_ENV = "AWS_LAMBDA_RUNTIME_API"  # set by Lambda for its runtime client


def returns_bytes(environ: Mapping[str, str]) -> bool:
    """Whether the handler returns the finished JSON document as bytes, which the Lambda
    runtime client (awslambdaric) sends unchanged, instead of a dict it would serialise
    again: under a Lambda runtime (AWS_LAMBDA_RUNTIME_API set) unless
    REDSHIFT_LAMBDA_RETURN_BYTES=false; anywhere with REDSHIFT_LAMBDA_RETURN_BYTES=true."""
    setting = environ.get(RETURN_BYTES_ENV, "").strip().lower()
    if setting in ("true", "false"):
        return setting == "true"
    if setting:
        raise ConfigurationError(
            f"environment variable {RETURN_BYTES_ENV} must be true or false, not "
            f"{shown(environ[RETURN_BYTES_ENV])}"
        )
    return bool(environ.get(RUNTIME_API_ENV))


def lambda_handler(request: Any, context: Any) -> dict[str, Any] | bytes:
    """Return the next batch of the configured tables as Fivetran's response: the JSON
    document as bytes under the Lambda runtime, else (or with the bytes turned off) a dict."""
    as_bytes = returns_bytes(os.environ)  # a bad setting fails before any work
    document = invoke(request, time_left_ms=_remaining_ms(context))
    if as_bytes:
        return document
    result: dict[str, Any] = json.loads(document)
    return result


def run_invocation(
    request: Any, *, time_left_ms: float, max_response_bytes: int | None = None
) -> dict[str, Any]:
    """The handler's work for one request, given the time left, as a dict;
    ``max_response_bytes`` lifts the byte budget past the Lambda envelope's (for the
    Connector SDK, which has none). The values are those of the JSON document, parsed."""
    result: dict[str, Any] = json.loads(invoke(request, time_left_ms, max_response_bytes))
    return result


def invoke(request: Any, time_left_ms: float, max_response_bytes: int | None = None) -> bytes:
    """The handler's work for one request: Fivetran's response as a JSON document (UTF-8)."""
    # Rows are many small containers and none of them form cycles: the cyclic collector would
    # only walk them again and again (measured: up to a fifth of an invocation's time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _handle(request, time_left_ms, max_response_bytes)
    finally:
        if collecting:
            gc.enable()


def _handle(request: Any, remaining_ms: float, max_response_bytes: int | None) -> bytes:
    started = time.monotonic()
    margin_ms = min(TIME_MARGIN_MAX_MS, remaining_ms * 0.2)
    deadline = started + (remaining_ms - margin_ms) / 1000
    if not isinstance(request, Mapping):
        raise ConfigurationError("the request must be a JSON object with 'secrets' and 'state'")
    sync_id = request.get("sync_id")
    fields = {"sync_id": sync_id[:100]} if isinstance(sync_id, str) else {}
    token = _log_fields.set(fields)
    try:
        return _sync(request, deadline, started, max_response_bytes)
    except ConnectorError as e:
        log(logging.ERROR, "failed", error=type(e).__name__, message=str(e))
        e.logged = True
        raise
    except Exception as e:
        # A bug, not bad input. Its message may quote a value, so it is not passed on; where
        # it happened is.
        where = traceback.extract_tb(e.__traceback__)[-1]
        log(
            logging.ERROR,
            "failed",
            error=f"unexpected {type(e).__name__}",
            at=f"{os.path.basename(where.filename)}:{where.lineno} in {where.name}",
        )
        error = ConnectorError(
            f"unexpected internal error ({type(e).__name__} in {where.name}); please report it "
            "with the sync_id and the function's log line"
        )
        error.logged = True
        raise error from None
    finally:
        _log_fields.reset(token)


def _sync(
    request: Mapping[str, Any], deadline: float, started: float, max_response_bytes: int | None
) -> bytes:
    setup_test = request.get("setup_test", False)
    if not isinstance(setup_test, bool):
        raise ConfigurationError("the request's 'setup_test' must be true or false")
    config = parse_config(request.get("secrets"))
    if max_response_bytes is not None:
        config = replace(config, max_response_bytes=max_response_bytes)
    state_in = request.get("state")
    state_in = {} if state_in is None else state_in
    sync = read_state(state_in)
    target = s3_target(request)
    with Source(config, deadline, transaction=not setup_test) as source:
        specs = configured_tables(source, config)
        if setup_test:
            return _encode(_setup_test(source, config, specs, state_in)).encode("utf-8")
        _warn_missing(config, sync, specs)
        if sync.seed is not None:  # the sample function's position: its table goes first
            seeded = [s for s in specs if s.mode == "incremental"][:1]
            specs = seeded + [s for s in specs if s not in seeded]
        if target is None:
            response = Response(config, sync, specs)
            has_more = assemble(source, config, specs, response)
        else:
            bucket, key = target
            client = s3_client(source.time_left_ms() / 1000)
            with S3Upload(client, bucket, key) as upload:
                stream = JsonObjectStream(upload)
                budget = replace(
                    config,
                    max_response_bytes=config.s3_max_bytes,
                    limit=config.limit if config.limit_given else MAX_LIMIT,
                )
                response = Response(budget, sync, specs, stream)
                has_more = assemble(source, budget, specs, response)
                for table, keys in response.deletes.items():
                    stream.deletes(table, keys)
                stream.finish()
                upload.complete()  # the state below is returned only once the object exists
            returned = response.returned(has_more)
            if json_size(returned) > config.max_response_bytes:
                raise _state_error(
                    f"the response holding it takes {json_size(returned)} bytes, more than "
                    f"max_response_bytes={config.max_response_bytes}"
                )
    # Totals first (a Logs Insights parse reads "rows": N, "deletes": N, "bytes": N in that
    # order), then the same counts per destination table.
    table_rows = (
        dict(response.stream.table_rows)
        if response.stream is not None
        else {d: len(rows) for d, rows in response.inserts.items()}
    )
    log(
        logging.INFO,
        "batch",
        tables=len(table_rows),
        rows=sum(table_rows.values()),
        deletes=sum(map(len, response.deletes.values())),
        bytes=sum(response.row_bytes.values()),
        pages=response.pages,
        has_more=has_more,
        elapsed_ms=int((time.monotonic() - started) * 1000),
        **({} if target is None else {"object_bytes": response.size()}),
        table_rows=table_rows,
        table_deletes={d: len(keys) for d, keys in response.deletes.items()},
    )
    return response.document(has_more)


def _warn_missing(config: Config, sync: SyncState, specs: Sequence[TableSpec]) -> None:
    """Log the tables whose entry the state keeps though this invocation did not find them."""
    listed = {s.destination for s in specs}
    missing = [
        d for d, e in sync.tables.items() if d not in listed and _still_configured(config, e)
    ]
    if missing:
        log(logging.WARNING, "selected tables not found; their state is kept", tables=missing)


def assemble(
    source: Source, config: Config, specs: Sequence[TableSpec], response: Response
) -> bool:
    """Serve the tables into ``response`` until its budget or the time is used up; True when
    more is to come (hasMore).

    Fair order: the caught-up incremental tables (their initial load is over: their increment
    is small) go first, then the backfills (initial loads and full re-reads), each group in the
    configured order. Once caught-up tables exist and the sync has spent ``max_backfill_s`` on
    backfills, it ends when their increments are in; the next sync serves those first again and
    goes on with the backfills where they stood. So a days-long load never starves them."""
    increments = [s for s in specs if _caught_up(response, s)]
    backfills = [s for s in specs if s not in increments]
    has_more = _serve(source, config, increments + backfills, response, len(specs))
    if (
        has_more
        and increments
        and all(s.destination in response.done for s in increments)
        and time.time() - (response.started or 0) >= config.max_backfill_s
    ):
        log(logging.INFO, "sync ends: backfills go on in the next sync", tables=len(backfills))
        return False
    return has_more


def _caught_up(response: Response, spec: TableSpec) -> bool:
    entry = response.entries.get(spec.destination)
    return spec.mode == "incremental" and entry is not None and entry.loaded


def _serve(
    source: Source, config: Config, specs: Sequence[TableSpec], response: Response, count: int
) -> bool:
    for spec in specs:
        if spec.destination in response.done:
            continue
        if response.has_content() and (
            source.time_left_ms() < MIN_TIME_LEFT_MS
            or response.size() > config.max_response_bytes - MIN_ROOM_BYTES
            or response.rows >= config.limit
        ):
            return True  # the next invocation goes on with this table
        try:
            try:
                plan = load_plan(source, spec, config)
            except NoPrimaryKeyError:
                if not spec.selected:
                    raise
                # A view or key-less table the schema selection found (perhaps after the setup
                # test): it cannot be copied exactly, and it must not hold the others back.
                log(logging.WARNING, "table skipped: no primary key", table=spec.name)
                response.done.append(spec.destination)
                continue
            finished = serve_table(source, config, spec, response, plan)
        except ConnectorError as e:
            raise _naming(e, spec) if count > 1 else e from None
        if not finished:
            return True
    return False


def s3_target(request: Mapping[str, Any]) -> tuple[str, str] | None:
    """(bucket, key) when Fivetran syncs through S3 (the request carries both), else None.
    Both are checked here, before connecting, as S3 (and boto3) would check them."""
    bucket, key = request.get("bucket"), request.get("file")
    if bucket is None and key is None:
        return None
    if not (isinstance(bucket, str) and bucket and isinstance(key, str) and key):
        raise ConfigurationError(
            "the request's 'bucket' and 'file' must both be non-empty strings (the S3 bucket "
            "and object key Fivetran's sync through S3 names), or both absent"
        )
    problem = s3_bucket_problem(bucket)
    if problem is not None:
        raise ConfigurationError(
            f"the request's 'bucket' {shown(bucket, MAX_NAME_SHOWN)} {problem}; expected "
            f"{S3_BUCKET_EXPECTED}"
        )
    try:
        key_bytes = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConfigurationError(
            "the request's 'file' is not valid Unicode text (a lone surrogate); expected an S3 "
            "object key"
        ) from None
    if key_bytes > MAX_S3_KEY_BYTES:
        raise ConfigurationError(
            f"the request's 'file' is {key_bytes} bytes long; an S3 object key holds at most "
            f"{MAX_S3_KEY_BYTES} bytes (UTF-8)"
        )
    return bucket, key


def _setup_test(
    source: Source, config: Config, specs: Sequence[TableSpec], state_in: Any
) -> dict[str, Any]:
    """Check every table and column (SELECT works, reads nothing); report all problems."""
    problems: list[ConnectorError] = []
    keys: dict[str, list[str]] = {}
    keyless: list[str] = []
    full = sum(1 for s in specs if s.mode == "full")
    inline_max = min(INLINE_SET_MAX_BYTES, INLINE_SETS_MAX_BYTES // max(1, full))
    for spec in specs:
        try:
            plan = load_plan(source, spec, config)
            source.fetch(*build_page_sql(plan, 0), 0, row_decoder)
            keys[spec.destination] = list(plan.primary_key)
            if spec.mode == "full" and config.key_store is None:
                _check_key_set_fits(source, plan, inline_max)
        except NoPrimaryKeyError as e:
            if spec.selected:
                keyless.append(spec.name)
            else:
                problems.append(_naming(e, spec) if len(specs) > 1 else e)
        except ConnectorError as e:
            problems.append(_naming(e, spec) if len(specs) > 1 else e)
    if keyless:
        problems.append(
            ConfigurationError(
                f"schema selection: {len(keyless)} table(s) or view(s) declare no primary key: "
                f"{', '.join(keyless[:50])}{' ...' if len(keyless) > 50 else ''}; list each in "
                "'tables' with a 'primary_key' to copy it, or leave it out with 'exclude' "
                "(a sync skips them, with a warning in the log)"
            )
        )
    if len(problems) == 1:
        raise problems[0]
    if problems:
        kinds = {type(p) for p in problems}
        kind = kinds.pop() if len(kinds) == 1 else ConfigurationError
        raise kind(
            f"the setup test found {len(problems)} problems: "
            + "; ".join(f"{i}) {p}" for i, p in enumerate(problems, 1))
        )
    log(logging.INFO, "setup test passed", tables=len(specs))
    # The setup-test channel caps an answer at 64 KiB: no table list, and the state echoed
    # only while small (a setup test never moves a sync; a large state is not sent back).
    echoed = state_in if json_size(state_in) <= SETUP_STATE_MAX_BYTES else {}
    return {"state": echoed, "insert": {}, "hasMore": False}


def describe_tables(secrets: Any, *, time_left_ms: float) -> list[tuple[str, TablePlan]]:
    """(destination, plan) of every configured table: its columns with their base types and
    its primary key (for the Connector SDK's schema)."""
    config = parse_config(secrets)
    deadline = time.monotonic() + time_left_ms / 1000
    with Source(config, deadline, transaction=False) as source:
        return [
            (spec.destination, load_plan(source, spec, config))
            for spec in configured_tables(source, config)
        ]


# ---------------------------------------------------------------------------------------------
# Command line: invoke the handler locally with a request file
# ---------------------------------------------------------------------------------------------

ENV_PREFIX = "REDSHIFT_LAMBDA_"
# REDSHIFT_LAMBDA_* variables that are not settings (tests only), so no "unknown" warning.
ENV_NOT_SETTINGS = (
    "REDSHIFT_LAMBDA_AWS_ENDPOINT_URL",
    "REDSHIFT_LAMBDA_S3_ENDPOINT_URL",
    "REDSHIFT_LAMBDA_TESTS_WITHOUT_TLS",
    RETURN_BYTES_ENV,
)


def close_setting(name: str) -> str | None:
    """The setting a misspelt name most likely meant (``primay_key`` -> ``primary_key``)."""
    import difflib  # only needed when a name is wrong

    match = difflib.get_close_matches(name.lower(), list(SETTINGS), n=1, cutoff=0.7)
    return match[0] if match else None


def _read_json_file(path: str, what: str) -> Any:
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        return json.loads(text)
    except (OSError, ValueError) as e:
        raise ConfigurationError(f"cannot read the {what} file {path}: {e}") from e


def load_request(
    path: str, environ: Mapping[str, str], origins: dict[str, str] | None = None
) -> dict[str, Any]:
    """A request from a JSON file ('-': standard input); REDSHIFT_LAMBDA_<SETTING> overrides.

    ``origins``, when given, is filled with where each setting came from (the file, or the
    environment variable), for messages about settings that conflict."""
    request = _read_json_file(path, "request")
    if not isinstance(request, dict):
        raise ConfigurationError(f"the request file {path} must hold a JSON object")
    secrets = request.setdefault("secrets", {})
    if not isinstance(secrets, dict):
        raise ConfigurationError("the request's 'secrets' must be an object")
    where = origins if origins is not None else {}
    where.update({str(k): path for k in secrets})
    for key in SETTINGS:
        if ENV_PREFIX + key.upper() in environ:
            secrets[key] = environ[ENV_PREFIX + key.upper()]
            where[key] = ENV_PREFIX + key.upper()
    unknown = sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
        and name not in ENV_NOT_SETTINGS
        and name[len(ENV_PREFIX) :].lower() not in SETTINGS
    )
    for name in unknown[:20]:
        guess = close_setting(name[len(ENV_PREFIX) :])
        log(
            logging.WARNING,
            "unknown environment variable ignored",
            name=shown(name),
            expected=f"{ENV_PREFIX}<SETTING>, one of the settings in upper case",
            **({"did_you_mean": ENV_PREFIX + guess.upper()} if guess else {}),
        )
    request.setdefault("state", {})
    return request


def origins_note(error: ConnectorError, origins: Mapping[str, str]) -> str | None:
    """Where the settings an error names came from, when they came from different places
    (a file and the environment): a ``table`` in the file and ``REDSHIFT_LAMBDA_TABLES``."""
    if not isinstance(error, ConfigurationError):
        return None
    named = [n for n in dict.fromkeys(re.findall(r"'([a-z0-9_]+)'", str(error))) if n in origins]
    if len({origins[n].startswith(ENV_PREFIX) for n in named}) < 2:
        return None
    parts = [
        f"'{n}' from {origins[n]}" + ("" if origins[n].startswith(ENV_PREFIX) else " (the file)")
        for n in named
    ]
    file_only = [n for n in named if not origins[n].startswith(ENV_PREFIX)]
    hint = ", ".join(f"{ENV_PREFIX}{n.upper()}=" for n in file_only)
    return (
        f"note: {'; '.join(parts)}; an empty variable ({hint}) drops the file's setting, or "
        "use a request file without it"
    )


def _write_state(path: str, state: Any) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(state, f, ensure_ascii=False)
            f.write("\n")
    except OSError as e:
        raise ConfigurationError(f"cannot write the state file {path}: {e}") from e


def main(argv: Sequence[str] | None = None) -> int:
    import argparse  # only the command line needs it: keep the Lambda's cold start lighter

    parser = argparse.ArgumentParser(
        prog="python lambda_function.py",
        description="Invoke lambda_handler locally with a Fivetran request file and print the "
        "response JSON on stdout (logs go to stderr). Any setting may come from an environment "
        f"variable {ENV_PREFIX}<SETTING>, e.g. {ENV_PREFIX}PASSWORD; an empty one drops the "
        "file's setting.",
    )
    parser.add_argument("event", help="request JSON file, e.g. events/first_sync.json ('-': stdin)")
    parser.add_argument(
        "--all",
        action="store_true",
        help="keep invoking while hasMore, feeding the state back as Fivetran "
        "does; prints one response per line and a summary per batch on stderr",
    )
    parser.add_argument(
        "--no-rows",
        action="store_true",
        help="print row and delete counts instead of the rows and deleted keys",
    )
    parser.add_argument(
        "--state",
        metavar="FILE",
        help="start from the state in FILE (e.g. one --save-state wrote) instead of the "
        "request's own",
    )
    parser.add_argument(
        "--save-state",
        metavar="FILE",
        help="write the state of the last response to FILE (the next sync starts from it "
        "with --state FILE); FILE may be the same as --state's",
    )
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="debug logging: the plan, each query's rows and time (never values); "
        "LOG_LEVEL=DEBUG does the same",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    logger.setLevel(logging.DEBUG if args.verbose else log_level_from_env(os.environ))
    origins: dict[str, str] = {}
    try:
        request = load_request(args.event, os.environ, origins)
        if args.state is not None:
            state = _read_json_file(args.state, "state")
            if not isinstance(state, dict):
                raise ConfigurationError(
                    f"the state file {args.state} must hold a JSON object (a response's "
                    "'state', as --save-state writes it)"
                )
            request = {**request, "state": state}
        calls = rows = 0
        started = time.monotonic()
        while True:
            t0 = time.monotonic()
            response = run_invocation(request, time_left_ms=LOCAL_RUN_TIME_MS)
            calls += 1
            count = sum(len(v) for v in response.get("insert", {}).values())
            deletes = sum(len(v) for v in response.get("delete", {}).values())
            rows += count
            if args.save_state is not None:
                _write_state(args.save_state, response["state"])
            if args.no_rows:
                response = dict(response)
                if "insert" in response:
                    response["insert"] = {k: len(v) for k, v in response["insert"].items()}
                if "delete" in response:
                    response["delete"] = {k: len(v) for k, v in response["delete"].items()}
            print(json.dumps(response, ensure_ascii=False), flush=True)
            if args.all:
                print(
                    f"batch {calls}: {count} rows, {deletes} deletes in "
                    f"{time.monotonic() - t0:.2f} s, "
                    + ("hasMore" if response["hasMore"] else "sync complete"),
                    file=sys.stderr,
                )
            if not args.all or not response["hasMore"]:
                break
            request = {**request, "state": response["state"]}
        if args.all:
            print(
                f"done: {calls} invocation(s), {rows} rows in {time.monotonic() - started:.2f} s",
                file=sys.stderr,
            )
    except ConnectorError as e:
        if not e.logged:  # the handler's own failures are already on stderr, as its log line
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        note = origins_note(e, origins)
        if note:
            print(note, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
