"""A catalogue of malformed requests: each one is refused with the right error and a clear message.

Every row gives a request (built against a real table where the case needs the database), the
exact exception type, and a regex the message must match: it names the problem or the setting
and says what is expected. For every row: the handler raises (no response, so no state can be
saved), the request is left as it was, no password and no state value shows in the message, and
the source table is untouched.
"""

from __future__ import annotations

import copy
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from helpers import FakeContext, secrets_for, sync

import lambda_function as lf

Cfg, St, Src = lf.ConfigurationError, lf.StateError, lf.SourceError
DROP = object()  # marks a key to remove from a state entry


@dataclass
class Env:
    """The real tables the catalogue runs against, and a valid state for the main one."""

    pg: Any
    table: str  # (id int PRIMARY KEY, updated_at timestamp NOT NULL, amount float8, n int, v text)
    nokey: str  # the same columns, no declared key
    state: dict[str, Any]
    con: Any  # one admin connection, kept for the after-checks

    def rows_left(self) -> int:
        return int(self.con.run(f"SELECT count(*) FROM {self.table}")[0][0])

    def secrets(self, **overrides: Any) -> dict[str, Any]:
        """Valid settings for the main table, with overrides (None removes a setting)."""
        settings = secrets_for(self.pg, self.table)
        settings.update(overrides)
        return {k: v for k, v in settings.items() if v is not None}

    def request(self, state: Any = "valid", **overrides: Any) -> dict[str, Any]:
        return {
            "state": copy.deepcopy(self.state) if state == "valid" else state,
            "secrets": self.secrets(**overrides),
        }

    def with_entry(self, **changes: Any) -> dict[str, Any]:
        """The valid state with its table entry changed (DROP removes a key)."""
        state = copy.deepcopy(self.state)
        entry = state["tables"][self.table]
        for key, value in changes.items():
            if value is DROP:
                entry.pop(key, None)
            else:
                entry[key] = value
        return {"state": state, "secrets": self.secrets()}


@pytest.fixture(scope="module")
def env(pg: Any) -> Iterator[Env]:
    table = f"t_bad_input_{secrets.token_hex(3)}"
    columns = "id int, updated_at timestamp NOT NULL, amount float8, n int, v text"
    pg.execute(f"CREATE TABLE {table} ({columns}, PRIMARY KEY (id))")
    pg.execute(f"CREATE TABLE {table}_nokey ({columns})")
    pg.execute(
        f"INSERT INTO {table} SELECT g, timestamp '2024-01-01' + g * interval '1 h', g / 3.0, g,"
        " 'value ' || g FROM generate_series(1, 3) g"
    )
    secrets_ = secrets_for(pg, table, limit="2")
    response = lf.lambda_handler({"state": {}, "secrets": secrets_}, None)
    assert response["hasMore"] is True  # a mid-sync state: position after the second row
    con = pg.connect()
    yield Env(pg, table, f"{table}_nokey", response["state"], con)
    con.run(f"DROP TABLE IF EXISTS {table}, {table}_nokey")
    con.close()


Build = Callable[[Env], Any]
PEM_GARBAGE = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----"


def s(**overrides: Any) -> Build:
    """A request with the valid state and these settings changed (None removes one)."""
    return lambda e: e.request(**overrides)


def fresh(**overrides: Any) -> Build:
    """A first-sync request (empty state) with these settings changed."""
    return lambda e: e.request(state={}, **overrides)


def st(state: Any) -> Build:
    return lambda e: e.request(state=copy.deepcopy(state))


def entry(**changes: Any) -> Build:
    return lambda e: e.with_entry(**changes)


def p(build: Build, error: type[Exception], pattern: str, id: str) -> Any:
    return pytest.param(build, error, pattern, id=id)


# fmt: off
CASES = [
    # -- the request itself ---------------------------------------------------------------
    p(lambda e: [e.request()], Cfg, r"^the request must be a JSON object with 'secrets'", "list"),
    p(lambda e: "{}", Cfg, r"^the request must be a JSON object", "request-string"),
    p(lambda e: None, Cfg, r"^the request must be a JSON object", "request-none"),
    p(lambda e: {"state": {}, "secrets": [e.secrets()]}, Cfg, r"'secrets' must be an object of "
      r"settings \(host, dbname, user", "secrets-list"),
    p(lambda e: {"state": {}, "secrets": "host=x"}, Cfg, r"'secrets' must be an object",
      "secrets-string"),
    p(lambda e: {"state": {}}, Cfg, r"'secrets' must be an object", "secrets-missing"),
    p(st(["x"]), St, r"^the request's state is not usable: it is a list, not an object.*re-sync",
      "state-list"),
    p(st([]), St, r"state is not usable: it is a list, not an object", "state-empty-list"),
    p(st("abc"), St, r"state is not usable: it is a str, not an object", "state-string"),
    p(st(0), St, r"state is not usable: it is a int, not an object", "state-zero"),
    p(st(False), St, r"state is not usable: it is a bool, not an object", "state-false"),
    p(lambda e: {**e.request(), "setup_test": "true"}, Cfg,
      r"^the request's 'setup_test' must be true or false", "setup_test-string"),
    p(lambda e: {**e.request(), "setup_test": 1}, Cfg, r"'setup_test' must be true or false",
      "setup_test-number"),
    # -- settings: missing, empty, wrong type, out of range ------------------------------
    p(s(host=None), Cfg, r"^setting 'host' is missing; expected Redshift endpoint host name",
      "host-missing"),
    p(s(host="   "), Cfg, r"^setting 'host' is missing", "host-blank"),
    p(s(host=5439), Cfg, r"^setting 'host' must be a string, not int; expected", "host-int"),
    # Regression (issue 8, item 10): a host pasted as a URL was echoed, password included.
    p(s(host="redshift://alice:Pw-9f2c1e@example.com:5439/dev"), Cfg,
      r"^setting 'host' looks like a URL; expected a host name or IP address", "host-url"),
    p(s(host="alice:Pw-9f2c1e@example.com"), Cfg, r"^setting 'host' contains '@'", "host-at"),
    p(s(host="example.com:5439"), Cfg, r"^setting 'host' contains ':'", "host-port"),
    p(s(host="example.com/dev"), Cfg, r"^setting 'host' contains '/'", "host-slash"),
    p(s(host="my cluster.example.com"), Cfg, r"^setting 'host' contains a space", "host-space"),
    p(s(host="-bad-.example.com"), Cfg, r"^setting 'host' is not a valid host name",
      "host-bad-label"),
    p(s(host="a" * 64 + ".example.com"), Cfg, r"^setting 'host' is not a valid host name",
      "host-long-label"),
    p(s(port="0"), Cfg, r"^setting 'port' must be between 1 and 65535, got 0$", "port-0"),
    p(s(port="70000"), Cfg, r"^setting 'port' must be between 1 and 65535, got 70000$",
      "port-70000"),
    p(s(port="abc"), Cfg, r"^setting 'port' must be a whole number like \"5439\", got 'abc'$",
      "port-abc"),
    p(s(port="5.5"), Cfg, r"^setting 'port' must be a whole number", "port-5.5"),
    p(s(port="-1"), Cfg, r"^setting 'port' must be a whole number", "port-negative"),
    p(s(port=[5439]), Cfg, r"^setting 'port' must be a whole number", "port-list"),
    p(s(dbname=None), Cfg, r"^setting 'dbname' is missing; expected the database name",
      "dbname-missing"),
    p(s(database="other"), Cfg, r"^settings 'dbname' and 'database' disagree; set only one",
      "dbname-database-disagree"),
    p(s(user=None), Cfg, r"^setting 'user' is missing; expected database user", "user-missing"),
    p(s(user=["admin"]), Cfg, r"^setting 'user' must be a string, not list", "user-list"),
    p(s(password=None), Cfg, r"^setting 'password' is missing; expected password of that user",
      "password-missing"),
    p(s(password=""), Cfg, r"^setting 'password' is missing", "password-empty"),
    p(s(password=123456789), Cfg, r"^setting 'password' must be a string, not int",
      "password-int"),
    p(s(table=None), Cfg, r"^setting 'table' is missing; expected table or schema\.table",
      "table-missing"),
    p(s(cursor=None), Cfg, r"^setting 'cursor' is missing; expected column\(s\)",
      "cursor-missing"),
    p(s(cursor="updated_at,"), Cfg, r"^cursor: an empty name; expected a comma-separated list",
      "cursor-trailing-comma"),
    p(s(cursor="updated_at, UPDATED_AT"), Cfg, r"^setting 'cursor' names a column twice$",
      "cursor-twice"),
    p(s(limit="0"), Cfg, r"^setting 'limit' must be between 1 and 10000000, got 0$", "limit-0"),
    p(s(limit="-1"), Cfg, r"^setting 'limit' must be a whole number like \"100000\", got '-1'$",
      "limit-negative"),
    p(s(limit="ten"), Cfg, r"^setting 'limit' must be a whole number", "limit-ten"),
    p(s(limit=True), Cfg, r"^setting 'limit' must be a whole number", "limit-bool"),
    p(s(max_response_bytes="9999"), Cfg, r"^setting 'max_response_bytes' must be between 10000 "
      r"and 6000000, got 9999$", "max_response_bytes-too-small"),
    p(s(max_response_bytes="6000001"), Cfg, r"^setting 'max_response_bytes' must be between "
      r"10000 and 6000000, got 6000001$", "max_response_bytes-too-large"),
    p(s(max_response_bytes="5e6"), Cfg, r"^setting 'max_response_bytes' must be a whole number",
      "max_response_bytes-exponent"),
    p(s(connect_timeout_s="0"), Cfg, r"^setting 'connect_timeout_s' must be more than 0 and at "
      r"most 3600 seconds, got '0'$", "connect_timeout_s-0"),
    p(s(connect_timeout_s="abc"), Cfg, r"^setting 'connect_timeout_s' must be a number of "
      r"seconds like \"30\", got 'abc'$", "connect_timeout_s-abc"),
    p(s(connect_timeout_s="nan"), Cfg, r"^setting 'connect_timeout_s' must be more than 0",
      "connect_timeout_s-nan"),
    p(s(connect_timeout_s="inf"), Cfg, r"^setting 'connect_timeout_s' must be more than 0",
      "connect_timeout_s-inf"),
    p(s(statement_timeout_s="-5"), Cfg, r"^setting 'statement_timeout_s' must be more than 0",
      "statement_timeout_s-negative"),
    p(s(statement_timeout_s="3601"), Cfg, r"^setting 'statement_timeout_s' must be more than 0 "
      r"and at most 3600 seconds, got '3601'$", "statement_timeout_s-3601"),
    p(s(statement_timeout_s=[1]), Cfg, r"^setting 'statement_timeout_s' must be a number",
      "statement_timeout_s-list"),
    p(s(lookback="5 weeks"), Cfg, r"^setting 'lookback' must be a duration like \"3600\", "
      r"\"90s\", \"15m\", \"2h\" or \"1d\", got '5 weeks'$", "lookback-weeks"),
    p(s(lookback="-1h"), Cfg, r"^setting 'lookback' must be a duration", "lookback-negative"),
    p(s(lookback="1.5h"), Cfg, r"^setting 'lookback' must be a duration", "lookback-fraction"),
    p(s(lookback="400d"), Cfg, r"^setting 'lookback' must be at most 366 days, got '400d'$",
      "lookback-400d"),
    p(s(sslmode="prefer"), Cfg, r"^setting 'sslmode' must be one of disable, require, verify-ca,"
      r" verify-full, got 'prefer'; 'allow' and 'prefer' are not offered \(they fall back to an"
      r" unencrypted",
      "sslmode-prefer"),
    p(s(sslmode="allow"), Cfg, r"'allow' and 'prefer' are not offered \(they fall back",
      "sslmode-allow"),
    p(s(sslmode="verify_full"), Cfg, r"^setting 'sslmode' must be one of disable, require, "
      r"verify-ca, verify-full, got 'verify_full'; 'allow' and 'prefer' are not offered$",
      "sslmode-unknown"),
    p(s(sslrootcert="not a certificate"), Cfg, r"^setting 'sslrootcert' must hold PEM text "
      r"starting with -----BEGIN CERTIFICATE-----$", "sslrootcert-not-pem"),
    p(s(sslrootcert=PEM_GARBAGE, sslmode="verify-full"), Cfg,
      r"^setting 'sslrootcert' could not be loaded as PEM CA", "sslrootcert-garbage"),
    # -- auth=iam (validated before anything connects or calls AWS) -------------------------
    p(s(auth="token"), Cfg, r"^setting 'auth' must be password \(user and password in the "
      r"settings\) or iam", "auth-unknown"),
    p(s(db_user="alice"), Cfg, r"^setting\(s\) db_user apply only with auth=iam; set auth=iam "
      r"or remove them$", "iam-setting-with-password-auth"),
    p(s(auth="iam", user=None), Cfg, r"^setting 'password' is not used with auth=iam \(each "
      r"invocation gets a temporary password from AWS\); remove it$", "iam-with-password"),
    p(s(auth="iam", password=None), Cfg, r"^setting 'user' is not used with auth=iam; set "
      r"db_user", "iam-with-user"),
    p(s(auth="iam", user=None, password=None, cluster_identifier="c1", region="us-east-1"), Cfg,
      r"^setting 'sslmode' cannot be disable with auth=iam: Redshift accepts IAM credentials "
      r"only over TLS", "iam-sslmode-disable"),
    p(s(auth="iam", user=None, password=None, sslmode="require"), Cfg,
      r"^setting 'cluster_identifier' is missing and cannot be read from 'host'",
      "iam-no-cluster"),
    p(s(auth="iam", user=None, password=None, sslmode="require", cluster_identifier="c1",
        region="us-east-1", db_user="alice", auto_create="maybe"), Cfg,
      r"^setting 'auto_create' must be true or false$", "iam-auto_create-maybe"),
    p(s(auth="iam", user=None, password=None, sslmode="require", workgroup="wg-1",
        region="us-east-1", db_groups="readers"), Cfg, r"^setting\(s\) db_groups cannot be "
      r"used here: Redshift Serverless maps the function's IAM role", "iam-serverless-groups"),
    # -- names ---------------------------------------------------------------------------
    p(s(table="a" * 128), Cfg, r"^table: a name is 128 bytes long; Redshift allows at most 127",
      "table-128-bytes"),
    p(s(table='"' + "é" * 64 + '"'), Cfg, r"^table: a name is 128 bytes long", "table-multibyte"),
    p(s(table="é" * 10), Cfg, r"^table: a name with characters that need quoting; expected "
      r"names like orders, public\.orders", "table-unquoted-unicode"),
    p(s(cursor='"a\x00b"'), Cfg, r"^cursor: a name contains a NUL character, which is invalid$",
      "cursor-nul"),
    p(s(destination_table="d" * 128), Cfg, r"^destination_table: a name is 128 bytes long",
      "destination-128-bytes"),
    p(s(table='"orders'), Cfg, r"^table: unbalanced double quote; expected names like",
      "table-unbalanced-quote"),
    p(s(cursor='"updated_at'), Cfg, r"^cursor: unbalanced double quote; expected a comma-"
      r"separated list of column names", "cursor-unbalanced-quote"),
    p(s(table="test.public.orders"), Cfg, r"^setting 'table' has more than two parts; expected "
      r"table or schema\.table$", "table-three-parts"),
    p(s(table="orders; DROP TABLE x"), Cfg, r"^table: a name with characters that need quoting",
      "table-injection"),
    p(s(cursor="id) OR (1=1"), Cfg, r"^cursor: a name with characters that need quoting",
      "cursor-injection"),
    p(s(primary_key='"id" OR 1=1'), Cfg, r"^primary_key: unexpected character after a name",
      "primary_key-injection"),
    p(fresh(table='"a"" OR 1=1 --"'), Cfg, r"^setting 'table': \"a\"\" OR 1=1 --\" was not "
      r"found in database 'test' or user 'admin' cannot see it",
      "table-quoted-injection-is-a-name"),
    p(fresh(table="no_such_table"), Cfg, r"^setting 'table': no_such_table was not found in "
      r"database 'test'.*on the search_path \(or write schema\.table\)$", "table-not-found"),
    p(fresh(table="nope.orders"), Cfg, r"^setting 'table': nope\.orders was not found",
      "schema-not-found"),
    p(lambda e: e.request(cursor="changed_at"), Cfg, r"^setting 'cursor': column changed_at is "
      r"not in table public\.t_bad_input_\w+; expected one of: id, updated_at, amount, n, v$",
      "cursor-column-unknown"),
    p(s(primary_key="uid"), Cfg, r"^setting 'primary_key': column uid is not in table",
      "primary_key-column-unknown"),
    p(lambda e: {"state": {}, "secrets": secrets_for(e.pg, e.nokey, primary_key=None)},
      lf.NoPrimaryKeyError, r"^setting 'primary_key' is missing and table "
      r"public\.t_bad_input_\w+_nokey declares no primary key; expected the column\(s\) that "
      r"identify a row", "primary_key-undeclared"),
    p(lambda e: {"state": {}, "secrets": e.secrets(cursor="amount")}, Cfg, r"^setting 'cursor': "
      r"column amount has type double precision, which cannot page exactly; expected an integer",
      "cursor-float"),
    p(lambda e: {"state": {}, "secrets": e.secrets(cursor="n", lookback="1h")}, Cfg,
      r"^setting 'lookback' needs a date or timestamp as the first cursor column; n is integer$",
      "lookback-integer-cursor"),
    # -- the state -----------------------------------------------------------------------
    p(lambda e: {**e.request(), "state": {**e.state, "version": 4}}, St, r"state is not usable: "
      r"'version' must be 3 \(or 1 or 2, from older releases\)\. Expected the state this "
      r"function returned earlier", "version-4"),
    p(lambda e: {**e.request(), "state": {"tables": e.state["tables"]}}, St,
      r"'version' must be 3", "version-missing"),
    p(st({"version": 1, "tables": []}), St, r"'tables' must be an object keyed by destination "
      r"table", "tables-list"),
    p(entry(source="public.orders"), St, r"it was written for table 'public\.orders' but the "
      r"settings now give 'public\.t_bad_input_\w+'", "state-of-another-table"),
    p(entry(cursor=["n"]), St, r"it was written for cursor '\[\"n\"\]' but the settings now "
      r"give '\[\"updated_at\"\]'", "state-of-another-cursor"),
    p(entry(primary_key=["n"]), St, r"it was written for primary_key '\[\"n\"\]' but the "
      r"settings now give '\[\"id\"\]'", "state-of-another-key"),
    p(lambda e: {"state": e.state, "secrets": e.secrets(cursor="updated_at, n")}, St,
      r"written for cursor '\[\"updated_at\"\]' but the settings now give "
      r"'\[\"updated_at\", \"n\"\]'",
      "state-of-another-cursor-setting"),
    p(lambda e: e.request(state={"version": 1, "tables": {e.table: []}}), St,
      r"the entry for 't_bad_input_\w+' must be an object", "entry-list"),
    p(entry(source=DROP), St, r"'source' must be a string", "source-missing"),
    p(entry(cursor="updated_at"), St, r"'cursor' must be a list of strings", "cursor-not-list"),
    p(entry(after="2024-01-01 02:00:00"), St, r"'after' must be a list of strings or nulls",
      "after-not-a-list"),
    p(entry(after=[2, 2]), St, r"'after' must be a list of strings or nulls", "after-numbers"),
    p(entry(after=["2024-01-01 02:00:00"]), St, r"'after' must hold 2 values",
      "after-wrong-length"),
    p(entry(complete="true"), St, r"'complete' must be true or false", "complete-string"),
    p(entry(complete=DROP), St, r"'complete' must be true or false", "complete-missing"),
    p(entry(bytes_per_row=-5), St, r"'bytes_per_row' must be a positive whole number or null",
      "bytes_per_row-negative"),
    p(entry(bytes_per_row="100"), St, r"'bytes_per_row' must be a positive", "bytes_per_row-str"),
    p(entry(bytes_per_row=True), St, r"'bytes_per_row' must be a positive", "bytes_per_row-bool"),
    p(st({"cursor": True}), St, r"the seed-style 'cursor' value must be a string or a number",
      "seed-cursor-bool"),
    # Regression (issue 8, item 13): a position that does not cast was a SourceError.
    p(entry(after=["not-a-timestamp", "2"]), St, r"^the request's state is not usable: its "
      r"position values do not fit the types of column\(s\) updated_at, id \(SQLSTATE 22007\)",
      "after-does-not-cast"),
    p(entry(after=["2024-01-01 02:00:00", "2; DROP TABLE x"]), St, r"^the request's state is "
      r"not usable: its position values do not fit .*\(SQLSTATE 22P02\)",
      "after-key-does-not-cast"),
    p(st({"cursor": "not-a-timestamp"}), St, r"^the request's state is not usable: its position "
      r"values do not fit .*\(SQLSTATE 22007\)", "seed-cursor-does-not-cast"),
    # -- setup_test ----------------------------------------------------------------------
    p(lambda e: {**e.request(state={}, password="wrong-" + secrets.token_hex(6)),
                 "setup_test": True}, Src,
      r"^connecting: authentication failed for user 'admin' at 127\.0\.0\.1:\d+; check 'user' "
      r"and 'password'.*\(SQLSTATE 28P01\)$", "setup_test-wrong-password"),
    p(lambda e: {**e.request(state={}, user="nobody_here"), "setup_test": True}, Src,
      r"^connecting: authentication failed for user 'nobody_here'", "setup_test-unknown-user"),
    p(lambda e: {**e.request(state={}, dbname="no_such_db"), "setup_test": True}, Src,
      r"^connecting: the database said: database \"no_such_db\" does not exist \(SQLSTATE 3D000\)",
      "setup_test-unknown-database"),
    p(lambda e: {**e.request(state={}, table="no_such_table"), "setup_test": True}, Cfg,
      r"^setting 'table': no_such_table was not found", "setup_test-unknown-table"),
    p(lambda e: {**e.request(state={}), "setup_test": "yes"}, Cfg,
      r"'setup_test' must be true or false", "setup_test-yes"),
]
# fmt: on


def forbidden_texts(request: Any) -> list[str]:
    """Texts no message may hold: every password in the request, every state position value."""
    texts = []
    if isinstance(request, dict):
        settings = request.get("secrets")
        if isinstance(settings, dict) and isinstance(settings.get("password"), str):
            texts.append(settings["password"])
        state = request.get("state")
        tables = state.get("tables") if isinstance(state, dict) else None
        for value in tables.values() if isinstance(tables, dict) else ():
            after = value.get("after") if isinstance(value, dict) else None
            texts += (
                [a for a in after or () if isinstance(a, str)] if isinstance(after, list) else []
            )
        if isinstance(state, dict) and isinstance(state.get("cursor"), str):
            texts.append(state["cursor"])
    return [t for t in texts if len(t) >= 4]


def test_the_catalogue_is_big_enough():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("build", "error", "pattern"), CASES)
def test_bad_input_is_refused_clearly(env, build, error, pattern):
    request = build(env)
    before = copy.deepcopy(request)
    with pytest.raises(lf.ConnectorError) as err:
        lf.lambda_handler(request, FakeContext())
    # The handler raised: no response, so Fivetran has no advanced state to save.
    message = str(err.value)
    assert type(err.value) is error, f"{type(err.value).__name__}: {message}"
    assert re.search(pattern, message), message
    assert env.pg.password not in message and env.pg.password not in repr(err.value)
    leaked = [t for t in forbidden_texts(request) if t in message]
    assert not leaked, f"the message shows {leaked!r}"
    assert request == before, "the request (its state) was modified"
    assert env.rows_left() == 3  # nothing harmed


def test_a_state_for_the_column_a_comma_b_is_not_taken_for_columns_a_and_b(pg, table_name):
    """Issue 17 item 6 (asked in the first hardening round): check_state compared cursor and
    key lists as ", "-joined text, so a state written for the one column "a, b" was taken for
    the two columns a, b and resumed at a position of the wrong shape. Lists are compared."""
    pg.execute(f'CREATE TABLE {table_name} (id int PRIMARY KEY, "a, b" int, a int, b int)')
    pg.execute(f"INSERT INTO {table_name} SELECT g, g, g / 2, g % 2 FROM generate_series(1, 9) g")
    one = secrets_for(pg, table_name, cursor='"a, b"', limit="4")
    first = lf.lambda_handler({"state": {}, "secrets": one}, FakeContext())
    assert first["hasMore"] and first["state"]["tables"][table_name]["cursor"] == ["a, b"]
    two = secrets_for(pg, table_name, cursor="a, b", limit="4")
    request = {"state": first["state"], "secrets": two}
    before = copy.deepcopy(request)
    with pytest.raises(lf.StateError) as err:
        lf.lambda_handler(request, FakeContext())
    assert str(err.value).startswith(
        "the request's state is not usable: it was written for cursor '[\"a, b\"]' but the "
        'settings now give \'["a", "b"]\'. Expected the state this function returned earlier'
    ), str(err.value)
    assert request == before
    # The key list the same way. A finished full-refresh state has no position whose length
    # could give it away: its keys of the one column "a, b" read as keys (a, b) would have
    # made every row a delete.
    by_key = secrets_for(pg, table_name, cursor=None, mode="full", primary_key='"a, b"')
    state = sync(by_key).state
    assert state["tables"][table_name]["after"] is None
    with pytest.raises(
        lf.StateError,
        match=r"written for primary_key '\[\"a, b\"\]' but the "
        r"settings now give '\[\"a\", \"b\"\]'",
    ):
        lf.lambda_handler(
            {"state": state, "secrets": {**by_key, "primary_key": "a, b"}}, FakeContext()
        )
