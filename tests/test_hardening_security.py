"""Regression tests for issue 8, items 9 to 16: security and bad-input defects found by a review
and an adversarial run against real PostgreSQL.

Every test runs the function black-box (``lambda_handler``, ``helpers.sync`` or ``parse_config``)
against the suite's throwaway servers. No test connects anywhere but loopback: an autouse guard
records any attempt to resolve or connect to another host and fails it the way a resolver would
(``socket.gaierror``), without sending anything.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from helpers import PASSWORDS, SENSITIVE, check_response, secrets_for, sync
from pgserver import _ca_pem

import lambda_function as lf

# ---------------------------------------------------------------------------------------------
# Loopback only
# ---------------------------------------------------------------------------------------------

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse, as a resolver would) every name or address that is not loopback.

    A non-ASCII name is first encoded with the ``idna`` codec, as CPython's socket module does
    before it resolves one, so a name that cannot be encoded raises UnicodeError exactly where
    a real lookup would: nothing is ever sent to a resolver.
    """
    attempts: list[str] = []
    real_create_connection = socket.create_connection
    real_getaddrinfo = socket.getaddrinfo

    def check(host: Any) -> None:
        name = host.decode("ascii", "replace") if isinstance(host, bytes) else str(host)
        if name in LOOPBACK:
            return
        attempts.append(name)
        if not name.isascii():
            name.encode("idna")  # may raise UnicodeError, like socket.getaddrinfo
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (blocked by test)")

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        check(address[0])
        return real_create_connection(address, *args, **kwargs)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        check(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


@pytest.fixture(autouse=True)
def no_secret_in_any_log_record(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The suite's log check, over the records of the test itself.

    (In a fixture's teardown ``caplog.records`` holds only the teardown's records, so the
    check must read the setup and call phases explicitly.)
    """
    yield
    sensitive = SENSITIVE | PASSWORDS
    for when in ("setup", "call"):
        for record in caplog.get_records(when):
            text = record.getMessage()
            leaked = [s for s in sensitive if s in text]
            assert not leaked, f"log record leaks {len(leaked)} sensitive value(s): {text!r}"


def log_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "redshift_lambda"]


def assert_not_leaked(secret: str, error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    assert secret not in str(error), f"the error message shows the secret: {error}"
    assert secret not in repr(error)
    leaking = [m for m in log_messages(caplog) if secret in m]
    assert not leaking, f"log records show the secret: {leaking}"


# Settings that parse_config accepts; nothing here is ever connected to.
OFFLINE_PASSWORD = "Offline-Pw-7Hq2"
OFFLINE_SECRETS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": "5439",
    "dbname": "dev",
    "user": "fivetran_reader",
    "password": OFFLINE_PASSWORD,
    "table": "public.orders",
    "cursor": "updated_at",
    "primary_key": "id",
    "sslmode": "disable",
}
PASSWORDS.add(OFFLINE_PASSWORD)


# ---------------------------------------------------------------------------------------------
# Item 9: search-path hijack
# ---------------------------------------------------------------------------------------------


@dataclass
class HijackEnv:
    """A database of its own, a victim role (the connector's user) and an attacker role.

    The victim table ``public.orders`` (id int PRIMARY KEY, updated_at int, origin text) holds
    ids 1 to 12, origin 'from-victim-table'. The attacker may create objects in ``public``
    (CREATE on the schema), as many databases allow, and can read the victim table. Neither
    role is a superuser.
    """

    pg: Any
    database: str
    victim: str
    victim_password: str
    attacker: str
    attacker_password: str
    marker: str  # what the attacker's function writes to the server log when it is called

    def admin(self, sql: str) -> list[list[Any]]:
        return self._run(None, None, sql)

    def as_attacker(self, sql: str) -> list[list[Any]]:
        return self._run(self.attacker, self.attacker_password, sql)

    def as_victim(self, sql: str) -> list[list[Any]]:
        return self._run(self.victim, self.victim_password, sql)

    def _run(self, user: str | None, password: str | None, sql: str) -> list[list[Any]]:
        con = self.pg.connect(user=user, password=password, database=self.database)
        try:
            return con.run(sql) or []
        finally:
            con.close()

    def secrets(self, table: str, **overrides: Any) -> dict[str, Any]:
        return secrets_for(
            self.pg,
            table,
            dbname=self.database,
            user=self.victim,
            password=self.victim_password,
            **overrides,
        )

    def log_size(self) -> int:
        return self.pg.log_file.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.pg.log_file.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")


@pytest.fixture
def hijack(pg: Any) -> Iterator[HijackEnv]:
    suffix = secrets.token_hex(4)
    env = HijackEnv(
        pg=pg,
        database=f"hijack_{suffix}",
        victim=f"victim_{suffix}",
        victim_password="victim-" + secrets.token_urlsafe(16),
        attacker=f"attacker_{suffix}",
        attacker_password="attacker-" + secrets.token_urlsafe(16),
        marker=f"hijack-called-{suffix}",
    )
    PASSWORDS.update({env.victim_password, env.attacker_password})
    pg.execute(f"CREATE DATABASE {env.database}")
    try:
        pg.create_user(env.victim, env.victim_password)
        pg.create_user(env.attacker, env.attacker_password)
        env.admin(f"GRANT CREATE ON SCHEMA public TO {env.attacker}")
        env.admin(
            "CREATE TABLE public.orders (id int PRIMARY KEY, updated_at int NOT NULL, origin text)"
        )
        env.admin(
            "INSERT INTO public.orders SELECT g, g, 'from-victim-table'"
            " FROM generate_series(1, 12) g"
        )
        env.admin(f"GRANT SELECT ON public.orders TO {env.victim}, {env.attacker}")
        yield env
    finally:
        pg.execute(f"DROP DATABASE IF EXISTS {env.database} WITH (FORCE)")
        pg.execute(f"DROP ROLE IF EXISTS {env.victim}")
        pg.execute(f"DROP ROLE IF EXISTS {env.attacker}")


@pytest.mark.parametrize("table", ["orders", "public.orders"], ids=["unqualified", "qualified"])
def test_a_function_in_public_cannot_redirect_the_catalog_lookup(hijack, table):
    """Regression (issue 8, item 9): the catalog query called lower() unqualified, so a role
    with CREATE on public made the connector copy its own table.

    The attacker's public.lower(name) is a better match for lower(c.relname) than
    pg_catalog.lower(text); it maps the bait table's name to the configured one and hides the
    real table. The connector runs as the victim and must read public.orders, never calling it.
    """
    hijack.as_attacker(
        "CREATE TABLE public.bait (id int PRIMARY KEY, updated_at int NOT NULL, origin text)"
    )
    hijack.as_attacker(
        "INSERT INTO public.bait SELECT g, g, 'from-bait-table' FROM generate_series(101, 105) g"
    )
    hijack.as_attacker(f"GRANT SELECT ON public.bait TO {hijack.victim}")
    hijack.as_attacker(
        f"""CREATE FUNCTION public.lower(name) RETURNS text
        LANGUAGE plpgsql SET search_path = pg_catalog AS $f$
        BEGIN
          IF $1 OPERATOR(pg_catalog.=) 'bait'::name THEN
            RAISE LOG '{hijack.marker}';
            RETURN 'orders';
          END IF;
          IF $1 OPERATOR(pg_catalog.=) 'orders'::name THEN
            RAISE LOG '{hijack.marker}';
            RETURN 'hidden by the attacker';
          END IF;
          RETURN pg_catalog.lower($1::text);
        END $f$"""
    )
    # The exploit is real: any unqualified lower() on a name, in the victim's session, is the
    # attacker's function.
    assert hijack.as_victim("SELECT lower(CAST('bait' AS name))") == [["orders"]]

    offset = hijack.log_size()
    result = sync(hijack.secrets(table, limit="5"))
    origins = sorted({r["origin"] for r in result.rows})
    assert origins == ["from-victim-table"], (
        f"the connector copied the attacker's table: origins {origins}, "
        f"ids {sorted(r['id'] for r in result.rows)}"
    )
    assert sorted(r["id"] for r in result.rows) == list(range(1, 13))
    assert hijack.marker not in hijack.log_since(offset), "the attacker's lower() was called"


def test_an_operator_in_public_cannot_change_the_declared_key(hijack):
    """Regression (issue 8, item 9): the primary-key query compared name = varchar with an
    unqualified operator, so an attacker's public.= (name, varchar) chose the key the connector
    declares to Fivetran (which upserts by it: a wrong key merges distinct rows).
    """
    hijack.as_attacker("CREATE TABLE public.bait_key (a int, b int PRIMARY KEY)")  # conkey {2}
    hijack.as_attacker(
        f"""CREATE FUNCTION public.name_eq_varchar(name, varchar) RETURNS boolean
        LANGUAGE plpgsql SET search_path = pg_catalog AS $f$
        BEGIN
          IF $2::text OPERATOR(pg_catalog.=) 'orders'::text THEN
            RAISE LOG '{hijack.marker}';
            RETURN $1 OPERATOR(pg_catalog.=) 'bait_key'::name;
          END IF;
          RETURN $1::text OPERATOR(pg_catalog.=) $2::text;
        END $f$"""
    )
    hijack.as_attacker(
        "CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = varchar,"
        " FUNCTION = public.name_eq_varchar)"
    )
    assert hijack.as_victim("SELECT CAST('bait_key' AS name) = CAST('orders' AS varchar)") == [
        [True]
    ]

    offset = hijack.log_size()
    secrets_ = hijack.secrets("public.orders", primary_key=None)  # the declared key
    response = lf.lambda_handler({"state": {}, "secrets": secrets_}, None)
    check_response(response)
    declared = response["schema"]["orders"]["primary_key"]
    assert declared == ["id"], f"the attacker's operator chose the key: {declared}"
    assert sorted(r["id"] for r in response["insert"]["orders"]) == list(range(1, 13))
    assert hijack.marker not in hijack.log_since(offset), "the attacker's operator was called"


def test_an_unqualified_table_still_resolves_on_the_users_search_path(hijack):
    """Regression (issue 8, item 9): pinning search_path must not change where an unqualified
    'table' is found: the first schema of the user's own search_path that has it.
    """
    schema = f"mine_{secrets.token_hex(3)}"
    hijack.admin(f"CREATE SCHEMA {schema}")
    hijack.admin(f"GRANT USAGE ON SCHEMA {schema} TO {hijack.victim}")
    for where, origin, ids in (
        (schema, "from-own-schema", (1, 7)),
        ("public", "from-public", (1, 4)),
    ):
        hijack.admin(
            f"CREATE TABLE {where}.thing (id int PRIMARY KEY, updated_at int NOT NULL, origin text)"
        )
        hijack.admin(
            f"INSERT INTO {where}.thing SELECT g, g, '{origin}'"
            f" FROM generate_series({ids[0]}, {ids[1]}) g"
        )
        hijack.admin(f"GRANT SELECT ON {where}.thing TO {hijack.victim}")
    hijack.admin(f"ALTER ROLE {hijack.victim} SET search_path = {schema}, public")

    own = sync(hijack.secrets("thing", limit="3"))
    assert sorted((r["id"], r["origin"]) for r in own.rows) == [
        (i, "from-own-schema") for i in range(1, 8)
    ]
    public = sync(hijack.secrets("public.thing", limit="3"))
    assert sorted((r["id"], r["origin"]) for r in public.rows) == [
        (i, "from-public") for i in range(1, 5)
    ]


# ---------------------------------------------------------------------------------------------
# Item 10: no password in any message or log line
# ---------------------------------------------------------------------------------------------

URL_SECRET = "S3cretPw9x"
CLUSTER = "examplecluster.abc123xyz789.us-east-1.redshift.amazonaws.com"

BAD_HOSTS = [
    pytest.param(f"redshift://admin:{URL_SECRET}@{CLUSTER}:5439/dev", id="redshift-url"),
    pytest.param(f"postgres://admin:{URL_SECRET}@localhost:5432/test", id="postgres-url"),
    pytest.param(f"postgresql://admin:{URL_SECRET}@127.0.0.1/test", id="postgresql-url"),
    pytest.param(f"redshift://admin:{URL_SECRET}@{CLUSTER}:5439/dev\n", id="url-newline"),
    pytest.param(f"admin:{URL_SECRET}@{CLUSTER}", id="user-password-at-host"),
    pytest.param(f"admin:{URL_SECRET}@localhost\n", id="user-password-at-host-newline"),
    pytest.param(f"admin: {URL_SECRET} @ {CLUSTER}", id="user-password-with-spaces"),
    pytest.param(f"https://{CLUSTER}", id="scheme"),
    pytest.param(f"{CLUSTER}:5439", id="host-port"),
    pytest.param("localhost:5439", id="localhost-port"),
    pytest.param(f"{CLUSTER}/dev", id="host-db"),
    pytest.param("example cluster.redshift.amazonaws.com", id="space"),
    pytest.param("local\thost", id="tab"),
    pytest.param("localhost\x00", id="nul"),
    pytest.param("..example", id="empty-label"),
    pytest.param("a" * 64 + ".example", id="label-64"),
    pytest.param(("x" * 63 + ".") * 4 + "com", id="name-over-253"),
    # ("\u00e9\u0301" is accepted: IDNA encodes it, to xn--9ca68h; the rule is "a host name
    # IDNA accepts", not a judgement of which names look plausible.)
    pytest.param("\ufffd.example", id="replacement-char"),
    pytest.param("\u00fc" * 64 + ".example", id="non-ascii-label-too-long"),
    pytest.param("b\u00fc" + "a" * 70 + ".example", id="non-ascii-long-label"),
]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_a_host_that_is_not_a_host_name_is_refused_before_connecting(host, caplog, loopback_only):
    """Regression (issue 8, item 10): 'host' was not validated, so a URL pasted into it was
    echoed, password included, in the error and the log; non-ASCII names crashed later.
    """
    SENSITIVE.add(URL_SECRET)  # the autouse log check fails the test if a record shows it
    with pytest.raises(lf.ConfigurationError) as err:
        lf.parse_config({**OFFLINE_SECRETS, "host": host})
    message = str(err.value)
    assert "setting 'host'" in message, message
    assert re.search(r"(?i)host ?name|IP address", message), message
    assert_not_leaked(URL_SECRET, err.value, caplog)
    assert loopback_only == []


@pytest.mark.parametrize(
    "host",
    [
        "b\u00fccher.example",
        "127.0.0.1",
        "localhost",
        CLUSTER,
        "my-cluster.Example.COM",
        "a" * 63 + ".example",
    ],
)
def test_valid_host_names_are_accepted(host, loopback_only):
    """Regression (issue 8, item 10): validating 'host' must still accept host names, IPv4
    addresses and internationalised names (IDNA), without looking anything up.
    """
    config = lf.parse_config({**OFFLINE_SECRETS, "host": host})
    assert config.host.lower() in (host.lower(), host.encode("idna").decode("ascii").lower())
    assert loopback_only == []


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("redshift://admin:{password}@127.0.0.1:5439/test", id="url-with-password"),
        pytest.param("admin:{password}@127.0.0.1", id="user-password-at-host"),
        pytest.param("\u00fc" * 64 + ".example", id="non-ascii-unencodable"),
        pytest.param("\ufffd.example", id="non-ascii-invalid"),
    ],
)
def test_a_bad_host_through_the_handler_is_a_configuration_error(
    pg, table_name, host, caplog, loopback_only
):
    """Regression (issue 8, item 10): through the handler a URL host reached the resolver and
    came back in the error with the password; a non-ASCII one was an internal UnicodeError.
    """
    host = host.format(password=pg.password)
    secrets_ = secrets_for(pg, table_name, host=host)
    with pytest.raises(lf.ConnectorError) as err:
        lf.lambda_handler({"state": {}, "secrets": secrets_}, None)
    assert type(err.value) is lf.ConfigurationError, f"{type(err.value).__name__}: {err.value}"
    assert "setting 'host'" in str(err.value)
    assert "UnicodeError" not in str(err.value)
    assert_not_leaked(pg.password, err.value, caplog)
    assert loopback_only == [], f"the handler tried to resolve {loopback_only}"


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens once the socket is closed


WRONG_PASSWORD = "Wr0ng-S3cret-Pw-5k"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"dbname": "no_such_database"}, id="wrong-database"),
        pytest.param({"user": "no_such_user"}, id="wrong-user"),
        pytest.param({"password": WRONG_PASSWORD}, id="wrong-password"),
        pytest.param({"port": "free"}, id="refused-port"),
        pytest.param({"table": "no_such_table"}, id="missing-table"),
        pytest.param({"cursor": "no_such_column"}, id="missing-column"),
    ],
)
def test_failures_against_the_server_never_show_a_secret(pg, table_name, overrides, caplog):
    """Regression (issue 8, item 10): no path may put the password (right or wrong) into an
    error message or a log line.
    """
    SENSITIVE.add(WRONG_PASSWORD)
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int)")
    try:
        if overrides.get("port") == "free":
            overrides = {"port": str(_free_loopback_port())}
        secrets_ = {**secrets_for(pg, table_name), **overrides}
        with pytest.raises(lf.ConnectorError) as err:
            lf.lambda_handler({"state": {}, "secrets": secrets_}, None)
        for secret in (pg.password, WRONG_PASSWORD):
            assert_not_leaked(secret, err.value, caplog)
    finally:
        pg.execute(f"DROP TABLE {table_name}")


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"sslmode": "verify-full", "sslrootcert": None}, id="no-sslrootcert"),
        pytest.param({"sslmode": "verify-full", "sslrootcert": "other"}, id="wrong-ca"),
        pytest.param({"sslmode": "verify-ca", "sslrootcert": "other"}, id="verify-ca-wrong-ca"),
        pytest.param({"sslmode": "disable"}, id="plaintext-refused"),
    ],
)
def test_tls_failures_never_show_a_secret(pg_tls, overrides, caplog):
    """Regression (issue 8, item 10): TLS failures carry no password either."""
    if overrides.get("sslrootcert") == "other":
        overrides = {**overrides, "sslrootcert": pg_tls.other_ca_pem}
    secrets_ = secrets_for(pg_tls, "tls_rows", **overrides)
    with pytest.raises(lf.SourceError) as err:
        lf.lambda_handler({"state": {}, "secrets": secrets_}, None)
    assert_not_leaked(pg_tls.password, err.value, caplog)


# ---------------------------------------------------------------------------------------------
# Item 11: log forging
# ---------------------------------------------------------------------------------------------


def _is_one_clean_line(text: str) -> bool:
    return len(text.splitlines()) <= 1 and all(ch.isprintable() for ch in text)


@pytest.mark.parametrize(
    "name",
    [
        "x\nERROR forged line",
        "x\r\nERROR forged line",
        "x\rERROR forged line",
        "x\x1b[2K\rERROR forged line",
        "x\x85ERROR forged line",
        "x\u2028ERROR forged line",
    ],
    ids=["lf", "crlf", "cr", "ansi", "nel", "line-separator"],
)
def test_an_unknown_setting_name_cannot_forge_a_log_line(name, caplog):
    """Regression (issue 8, item 11): unknown setting names were logged raw, so a name with a
    newline wrote a line of its own into the function's log.
    """
    lf.parse_config({**OFFLINE_SECRETS, name: "1"})
    messages = log_messages(caplog)
    assert any("unknown setting" in m for m in messages), messages  # still warned about
    forged = [m for m in messages if not _is_one_clean_line(m)]
    assert not forged, f"log record(s) with a line break or control character: {forged!r}"


def test_a_forging_setting_name_in_a_failing_request_is_not_logged_raw(pg, table_name, caplog):
    """Regression (issue 8, item 11): the same through the handler, on a failing request."""
    secrets_ = {**secrets_for(pg, table_name), "x\nERROR forged line": "1"}
    with pytest.raises(lf.ConfigurationError):
        lf.lambda_handler({"state": {}, "secrets": secrets_}, None)
    forged = [m for m in log_messages(caplog) if not _is_one_clean_line(m)]
    assert not forged, f"log record(s) with a line break or control character: {forged!r}"


# ---------------------------------------------------------------------------------------------
# Item 12: sslmode=require with sslrootcert
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_rows(pg_tls: Any) -> str:
    pg_tls.execute("CREATE TABLE IF NOT EXISTS tls_rows (id int PRIMARY KEY, updated_at int)")
    pg_tls.execute(
        "INSERT INTO tls_rows SELECT g, g FROM generate_series(1, 20) g ON CONFLICT DO NOTHING"
    )
    return "tls_rows"


def test_require_with_an_unrelated_sslrootcert_verifies_the_ca(pg_tls, tls_rows):
    """Regression (issue 8, item 12): sslmode=require ignored sslrootcert; libpq verifies the
    CA (as verify-ca does) when a root certificate is given.
    """
    unrelated_ca = _ca_pem("redshift-lambda unrelated CA")[0]
    secrets_ = secrets_for(pg_tls, tls_rows, sslmode="require", sslrootcert=unrelated_ca)
    with pytest.raises(lf.SourceError) as err:
        lf.lambda_handler({"state": {}, "secrets": secrets_}, None)
    assert re.search(r"(?i)certificate", str(err.value)), str(err.value)
    assert re.search(r"(?i)verif", str(err.value)), str(err.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_require_with_the_right_sslrootcert_connects(pg_tls, tls_rows, host):
    """Regression (issue 8, item 12): with the server's own CA, require still works."""
    secrets_ = secrets_for(pg_tls, tls_rows, sslmode="require", sslrootcert=pg_tls.ca_pem)
    assert len(sync({**secrets_, "host": host}).rows) == 20


@pytest.mark.parametrize(
    ("overrides", "mentions_require"),
    [
        pytest.param({"sslmode": "verify-full", "sslrootcert": None}, True, id="no-sslrootcert"),
        pytest.param({"sslmode": "verify-full", "sslrootcert": "other"}, True, id="wrong-ca"),
        pytest.param(
            {"sslmode": "verify-ca", "sslrootcert": "other"}, True, id="verify-ca-wrong-ca"
        ),
        pytest.param({"sslmode": "disable"}, False, id="plaintext-refused"),
    ],
)
def test_tls_failure_messages_do_not_suggest_require_lightly(
    pg_tls, tls_rows, overrides, mentions_require
):
    """Regression (issue 8, item 12): the TLS failure message suggested sslmode=require
    without saying that it gives up authenticating the server. Issue 17 item 12: the
    plaintext case asserted nothing (its message never names require); each case now says
    what its message must hold.
    """
    if overrides.get("sslrootcert") == "other":
        overrides = {**overrides, "sslrootcert": pg_tls.other_ca_pem}
    with pytest.raises(lf.SourceError) as err:
        lf.lambda_handler(
            {"state": {}, "secrets": secrets_for(pg_tls, tls_rows, **overrides)}, None
        )
    message = str(err.value)
    if mentions_require:
        assert re.search(
            r"sslmode=require without sslrootcert would still encrypt, but it "
            r"gives up authenticating the server",
            message,
        ), message
    else:  # refused for plaintext: the way out is TLS, verified
        assert "use sslmode=verify-full (the default)" in message, message
        assert not re.search(r"\brequire\b", message), message


# ---------------------------------------------------------------------------------------------
# Item 13: seed-style float cursors; state values that do not cast
# ---------------------------------------------------------------------------------------------


def test_a_seed_state_with_a_float_cursor_resumes_without_losing_rows(pg, table_name):
    """Regression (issue 8, item 13): Fivetran's sample function writes decimals as JSON floats
    ({"cursor": 3.25}); such a state was refused. It must resume at that value, inclusively.
    """
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at numeric(8,2) NOT NULL)")
    pg.execute(f"INSERT INTO {table_name} SELECT g, g * 0.25 FROM generate_series(1, 40) g")
    pg.execute(
        f"INSERT INTO {table_name} VALUES (41, 3.25), (42, 3.25), (43, 3.25), (44, 3.24),"
        " (45, 3.26)"
    )
    try:
        result = sync(secrets_for(pg, table_name, limit="4"), {"cursor": 3.25})
        ids = [r["id"] for r in result.rows]
        assert len(ids) == len(set(ids)), "a row was delivered twice within one sync"
        values = {r["id"]: Decimal(r["updated_at"]) for r in result.rows}
        expected = {g for g in range(14, 41)} | {41, 42, 43, 45}  # 13 * 0.25 = 3.25
        assert expected <= set(values), f"rows at or above 3.25 lost: {expected - set(values)}"
        assert all(v >= Decimal("3") for v in values.values()), "resumed far below 3.25"
    finally:
        pg.execute(f"DROP TABLE {table_name}")


@pytest.fixture
def stamped(pg: Any, table_name: str) -> Iterator[str]:
    pg.execute(
        f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at timestamp NOT NULL,"
        " amount numeric(8,2) NOT NULL)"
    )
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, timestamp '2024-01-01' + g * interval '1 h',"
        " g * 1.5 FROM generate_series(1, 6) g"
    )
    yield table_name
    pg.execute(f"DROP TABLE {table_name}")


@pytest.mark.parametrize(
    ("cursor", "make_state"),
    [
        pytest.param("updated_at", lambda s, t: _with_after(s, t, 0, "not-a-time"), id="after-ts"),
        pytest.param("updated_at", lambda s, t: _with_after(s, t, 1, "not-an-int"), id="after-key"),
        pytest.param("updated_at", lambda s, t: {"cursor": "garbage"}, id="seed-timestamp"),
        pytest.param("amount", lambda s, t: {"cursor": "garbage"}, id="seed-numeric"),
        pytest.param("amount", lambda s, t: _with_after(s, t, 0, "garbage"), id="after-numeric"),
    ],
)
def test_a_state_value_that_does_not_cast_is_a_state_error(pg, stamped, cursor, make_state):
    """Regression (issue 8, item 13): a state value that cannot be cast to its column's type
    failed as a SourceError with SQLSTATE 22007 / 22P02 instead of naming the state.
    """
    secrets_ = secrets_for(pg, stamped, cursor=cursor, limit="2")
    first = lf.lambda_handler({"state": {}, "secrets": secrets_}, None)
    assert first["hasMore"] is True
    state = make_state(first["state"], stamped)
    with pytest.raises(lf.ConnectorError) as err:
        lf.lambda_handler({"state": state, "secrets": secrets_}, None)
    message = str(err.value)
    assert type(err.value) is lf.StateError, f"{type(err.value).__name__}: {message}"
    assert "state" in message, message
    for value in ("not-a-time", "not-an-int", "garbage"):
        assert value not in message, message  # a state value is a row value: not echoed


def _with_after(state: dict[str, Any], table: str, index: int, value: str) -> dict[str, Any]:
    state = copy.deepcopy(state)
    state["tables"][table]["after"][index] = value
    return state


# ---------------------------------------------------------------------------------------------
# Item 14: lookback as a JSON number
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lookback",
    [10**9, 400 * 86400, 366 * 86400 + 1, 10**30],
    ids=["1e9", "400d", "366d+1s", "1e30"],
)
def test_a_numeric_lookback_is_bounded_like_the_text_form(lookback):
    """Regression (issue 8, item 14): a lookback given as a JSON number skipped the 366-day
    bound that the text form has.
    """
    with pytest.raises(lf.ConfigurationError, match="'lookback'"):
        lf.parse_config({**OFFLINE_SECRETS, "lookback": lookback})
    with pytest.raises(lf.ConfigurationError, match="'lookback'"):
        lf.parse_config({**OFFLINE_SECRETS, "lookback": str(lookback)})


@pytest.mark.parametrize("lookback", [366 * 86400, "366d", 0, 3600])
def test_a_lookback_up_to_366_days_is_accepted(lookback):
    """Regression (issue 8, item 14): the bound is 366 days, included, in either form."""
    config = lf.parse_config({**OFFLINE_SECRETS, "lookback": lookback})
    assert config.lookback_s == (366 * 86400 if lookback == "366d" else lookback)


# ---------------------------------------------------------------------------------------------
# Item 15: other tables' entries in the state
# ---------------------------------------------------------------------------------------------


def _other_entry(source: str, after_key: str = "5") -> dict[str, Any]:
    return {
        "source": source,
        "cursor": ["updated_at"],
        "primary_key": ["id"],
        "after": ["2024-01-01 00:00:00", after_key],
        "complete": False,
        "bytes_per_row": 120,
    }


def test_the_state_carries_other_tables_through(pg, table_name):
    """Regression (issue 8, item 15): a state holding another destination table's entry was
    refused, though the state is meant to hold several tables. Since one connector copies
    several tables (issue 9), the entries of the other configured tables are carried through
    unchanged while one table pages, and the entry of a table no longer configured is dropped
    (the table was removed), never refused.
    """
    for suffix in ("a", "b"):
        pg.execute(f"CREATE TABLE {table_name}_{suffix} (id int PRIMARY KEY, updated_at int)")
        pg.execute(f"INSERT INTO {table_name}_{suffix} SELECT g, g FROM generate_series(1, 25) g")
    try:
        tables = [
            {"table": f"{table_name}_{x}", "cursor": "updated_at", "destination": x} for x in "ab"
        ]
        secrets_ = secrets_for(pg, "x", tables=json.dumps(tables), limit="7")
        for key in ("table", "cursor", "primary_key"):
            secrets_.pop(key)
        stale = {"version": 1, "tables": {"removed": _other_entry("public.other_source")}}
        first = sync(secrets_, stale)
        assert sorted(r["id"] for r in first.rows) == sorted([*range(1, 26)] * 2)
        assert set(first.state["tables"]) == {"a", "b"}  # the removed table's entry is gone
        pg.execute(f"UPDATE {table_name}_a SET updated_at = 100 + id WHERE id <= 20")
        state, b_entry = first.state, first.state["tables"]["b"]
        while True:  # table a pages first; b's entry rides along unchanged until its turn
            response = lf.lambda_handler({"state": state, "secrets": secrets_}, None)
            check_response(response)
            state = response["state"]
            if "b" in response["insert"] or not response["hasMore"]:
                break
            assert state["tables"]["b"] == b_entry
    finally:
        pg.execute(f"DROP TABLE {table_name}_a, {table_name}_b")


def test_large_other_entries_keep_every_response_under_the_budget(pg, table_name):
    """Regression (issue 8, item 15): with many or large entries of other tables in the state,
    every response must still fit max_response_bytes and the sync must stay exact.
    """
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL, v text)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, g / 3, repeat('v', 40) || g"
        " FROM generate_series(1, 3000) g"
    )
    try:
        others = {
            f"other_{i:03d}": _other_entry(f"public.other_{i:03d}", "k" * 2900) for i in range(300)
        }
        assert 850_000 < len(json.dumps(others)) < 950_000
        state: dict[str, Any] = {"version": 1, "tables": copy.deepcopy(others)}
        budget = 1_000_000
        secrets_ = secrets_for(pg, table_name, max_response_bytes=str(budget), limit="500")
        result = sync(secrets_, state)
        ids = [r["id"] for r in result.rows]
        assert sorted(ids) == list(range(1, 3001)), "rows lost or repeated"
        assert len(result.sizes) >= 2 and max(result.sizes) <= budget
    finally:
        pg.execute(f"DROP TABLE {table_name}")


# ---------------------------------------------------------------------------------------------
# Item 16: a row that fits with a little to spare
# ---------------------------------------------------------------------------------------------


def test_a_row_that_fits_with_a_little_to_spare_is_delivered(pg, table_name):
    """Regression (issue 8, item 16): a one-row response 200 bytes under max_response_bytes
    was refused as RowTooLargeError (a fixed 1 kB reserve was kept on top of the exact size).
    """
    budget = 20_000
    target = budget - 200
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int, payload text)")
    pg.execute(f"INSERT INTO {table_name} VALUES (1, 1, repeat('p', 19000))")
    try:
        # Size the payload so that the whole response, as serialised, is `target` bytes; measured
        # with the default budget, where the row is delivered whatever the reserve.
        length, size = 19_000, 0
        for _ in range(5):
            pg.execute(f"UPDATE {table_name} SET payload = repeat('p', {length})")
            response = lf.lambda_handler(
                {"state": {}, "secrets": secrets_for(pg, table_name)}, None
            )
            size = check_response(response)
            if size == target:
                break
            length += target - size
        assert size == target, f"could not size the row: {size} bytes for {target}"

        secrets_ = secrets_for(pg, table_name, max_response_bytes=str(budget))
        response = lf.lambda_handler({"state": {}, "secrets": secrets_}, None)
        assert check_response(response, budget) == target
        assert [r["id"] for r in response["insert"][table_name]] == [1]
        assert response["hasMore"] is False
    finally:
        pg.execute(f"DROP TABLE {table_name}")
