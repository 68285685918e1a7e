"""auth=iam: temporary database credentials from AWS, with real boto3 against loopback stand-ins.

boto3 signs and parses for real; AWS itself is not reachable. GetClusterCredentials (and its
AccessDenied, from moto's IAM policy enforcement) comes from moto in server mode; moto lacks
GetClusterCredentialsWithIAM and Redshift Serverless, so tests/motoserver.py's stub answers those
in AWS's wire formats and checks the SigV4 signatures. For what a credentials call returned,
the test provisions a PostgreSQL role with that name and password on the TLS-only server, and
the sync logs in with it over verify-full TLS.

The last test runs against real AWS when REDSHIFT_IAM_* variables are set (see its docstring).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pg8000.native
import pytest
from helpers import PASSWORDS, ROOT, FakeContext, record_connects, secrets_for, sync
from motoserver import MotoServer, StubRedshiftApi, free_port

import lambda_function as lf

ENDPOINT = lf.AWS_ENDPOINT_URL_ENV
REGION = "us-east-1"
CLUSTER = "iam-test"
WORKGROUP = "fivetran-wg"
ROLE = "redshift-lambda-role"
KEY_ID = "AKIDTESTFUNCTIONROLE"
SECRET_KEY = secrets.token_urlsafe(30)  # the function's fake AWS secret: never in a log line
ROWS = 30
PASSWORDS.add(SECRET_KEY)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="module")
def stub(moto: MotoServer) -> Iterator[StubRedshiftApi]:
    with StubRedshiftApi({KEY_ID: SECRET_KEY}, moto.url, ROLE) as server:
        yield server


def admin_client(service: str, url: str) -> Any:
    """The test's own client for setting up the stand-ins (not the function's)."""
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="admin",
        aws_secret_access_key="admin",
    )


@pytest.fixture(scope="module")
def cluster(moto: MotoServer) -> str:
    admin_client("redshift", moto.url).create_cluster(
        ClusterIdentifier=CLUSTER,
        NodeType="ra3.xlplus",
        MasterUsername="awsuser",
        MasterUserPassword="Master-Passw0rd",
        DBName="test",
    )
    return CLUSTER


@pytest.fixture(scope="module")
def workgroup(stub: StubRedshiftApi) -> str:
    client = boto3.client(
        "redshift-serverless",
        endpoint_url=stub.url,
        region_name=REGION,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET_KEY,
    )
    client.create_workgroup(workgroupName=WORKGROUP, namespaceName="fivetran-ns")
    return WORKGROUP


@pytest.fixture(scope="module")
def iam_table(pg_tls: Any) -> str:
    table = f"iam_rows_{secrets.token_hex(3)}"
    pg_tls.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, updated_at int NOT NULL)")
    pg_tls.execute(f"INSERT INTO {table} SELECT g, g / 3 FROM generate_series(1, {ROWS}) g")
    return table


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, stub: StubRedshiftApi) -> None:
    """Fake credentials for the function, and nothing else AWS-related from this machine."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name == ENDPOINT:
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    stub.reset()


@pytest.fixture
def provision(
    pg_tls: Any, iam_table: str, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, str]]:
    """Give PostgreSQL a role for whatever each credentials call returns, before the login."""
    issued: list[tuple[str, str]] = []
    real = lf.fetch_iam_credentials

    def fetch_and_provision(auth: Any, database: str, time_left_s: float) -> tuple[str, str]:
        user, password = real(auth, database, time_left_s)
        PASSWORDS.add(password)
        role, literal = pg8000.native.identifier(user), pg8000.native.literal(password)
        exists = pg_tls.execute("SELECT 1 FROM pg_roles WHERE rolname = :n", n=user)
        pg_tls.execute(f"{'ALTER' if exists else 'CREATE'} ROLE {role} LOGIN PASSWORD {literal}")
        pg_tls.execute(f"GRANT SELECT ON {iam_table} TO {role}")
        issued.append((user, password))
        return user, password

    monkeypatch.setattr(lf, "fetch_iam_credentials", fetch_and_provision)
    return issued


def iam_secrets(pg_tls: Any, table: str, **overrides: Any) -> dict[str, Any]:
    """auth=iam settings for the TLS-only test server (host 127.0.0.1: name cluster and region)."""
    settings = {
        "user": None,
        "password": None,
        "sslmode": None,  # the default, verify-full
        "sslrootcert": pg_tls.ca_pem,
        "auth": "iam",
        "cluster_identifier": CLUSTER,
        "region": REGION,
        "limit": "7",
        **overrides,
    }
    return secrets_for(pg_tls, table, **settings)


def assert_full_sync(result: Any) -> None:
    assert sorted(row["id"] for row in result.rows) == list(range(1, ROWS + 1))


def assert_no_secret(message: str, *extra: str) -> None:
    for secret in (SECRET_KEY, *extra):
        assert secret not in message


# -- the three calls, end to end --------------------------------------------------------------


def test_get_cluster_credentials_with_db_user_syncs_over_tls(
    moto, cluster, pg_tls, iam_table, provision, monkeypatch
):
    monkeypatch.setenv(ENDPOINT, moto.url)
    result = sync(iam_secrets(pg_tls, iam_table, db_user="alice"), context=FakeContext())
    assert_full_sync(result)
    # One credentials call for the 5 invocations (kept in the process), as moto returned
    # them: "IAM:" + db_user.
    assert result.responses == 5 and len(provision) == 1
    assert {user for user, _ in provision} == {"IAM:alice"}


def test_auto_create_with_db_groups(moto, cluster, pg_tls, iam_table, provision, monkeypatch):
    monkeypatch.setenv(ENDPOINT, moto.url)
    settings = iam_secrets(
        pg_tls, iam_table, db_user="bob", auto_create="true", db_groups="readers, analysts"
    )
    assert_full_sync(sync(settings))
    assert {user for user, _ in provision} == {"IAMA:bob"}  # moto's prefix for AutoCreate


def test_get_cluster_credentials_with_iam_maps_the_role(
    stub, cluster, pg_tls, iam_table, provision, monkeypatch
):
    monkeypatch.setenv(ENDPOINT, stub.url)
    result = sync(iam_secrets(pg_tls, iam_table), context=FakeContext(600_000))
    assert_full_sync(result)
    assert {user for user, _ in provision} == {f"IAMR:{ROLE}"}
    calls = [c for c in stub.calls if c.action == "GetClusterCredentialsWithIAM"]
    assert result.responses > 1 and len(calls) == 1  # kept for the next invocations
    for call in calls:
        assert call.access_key_id == KEY_ID
        assert call.params["ClusterIdentifier"] == CLUSTER and call.params["DbName"] == "test"
        # As long as the API allows, so that they serve many invocations.
        assert call.params["DurationSeconds"] == "3600"


def test_serverless_get_credentials_syncs_and_passes_the_setup_test(
    stub, workgroup, pg_tls, iam_table, provision, monkeypatch
):
    monkeypatch.setenv(ENDPOINT, stub.url)
    settings = iam_secrets(pg_tls, iam_table, cluster_identifier=None, workgroup=workgroup)
    response = lf.lambda_handler(
        {"state": {}, "secrets": settings, "setup_test": True}, FakeContext()
    )
    assert response["insert"] == {} and response["hasMore"] is False
    assert_full_sync(sync(settings, context=FakeContext()))
    assert {user for user, _ in provision} == {f"IAMR:{ROLE}"}
    call = next(c for c in stub.calls if c.action == "GetCredentials")
    assert call.service == "redshift-serverless"
    assert call.params == {"workgroupName": WORKGROUP, "dbName": "test", "durationSeconds": 3600}


def test_credentials_are_kept_per_settings_until_shortly_before_they_expire(
    stub, cluster, workgroup, pg_tls, iam_table, provision, monkeypatch, caplog
):
    """Issue 17 item 7: GetClusterCredentials was called on every invocation (183 calls for a
    1 GB table). Credentials are kept in the warm process, keyed by every setting that shapes
    them, while they outlive the invocation by CREDENTIALS_MARGIN_S; never across settings."""
    monkeypatch.setenv(ENDPOINT, stub.url)
    settings = iam_secrets(pg_tls, iam_table, limit="3")

    def calls() -> list[str]:
        return [c.action for c in stub.calls]

    first = sync(settings, context=FakeContext())
    assert_full_sync(first)
    assert first.responses == 10 and calls() == ["GetClusterCredentialsWithIAM"]
    # Every log line is structured (issue 17 item 11: the credentials line bypassed log()).
    records = [r for r in caplog.records if r.name == "redshift_lambda"]
    events = [json.loads(r.getMessage())["event"] for r in records]
    assert events.count("iam credentials") == 1 and events.count("iam credentials reused") == 9
    given = next(json.loads(r.getMessage()) for r in records if "iam credentials" in r.getMessage())
    assert given["api"] == "redshift:GetClusterCredentialsWithIAM"
    assert given["db_user"] == f"IAMR:{ROLE}" and given["valid_s"] == 3600
    # A new sync of the same settings: the same credentials, no call.
    assert_full_sync(sync(settings, context=FakeContext()))
    assert len(calls()) == 1 and len(provision) == 1
    # Other settings that shape the credentials each get their own, never the kept ones.
    serverless = iam_secrets(pg_tls, iam_table, cluster_identifier=None, workgroup=workgroup)
    for other in (
        serverless,
        iam_secrets(pg_tls, iam_table, cluster_identifier="other-cluster"),
        iam_secrets(pg_tls, iam_table, region="eu-west-1"),
        settings,  # only one is kept: back to the first settings, a new call
    ):
        with contextlib.suppress(lf.ConnectorError):  # other-cluster is not in the stub
            lf.lambda_handler({"state": {}, "secrets": other}, FakeContext())
    assert calls()[1:] == [
        "GetCredentials",
        "GetClusterCredentialsWithIAM",
        "GetClusterCredentialsWithIAM",
        "GetClusterCredentialsWithIAM",
    ]
    assert [c.params.get("ClusterIdentifier") for c in stub.calls[2:4]] == [
        "other-cluster",
        CLUSTER,
    ]
    # Another AWS identity of the function asks AWS itself (the stub does not know its key).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID + "X")
    with pytest.raises(lf.CredentialsError, match=r"\(InvalidClientTokenId\)"):
        lf.lambda_handler({"state": {}, "secrets": settings}, FakeContext())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    lf.lambda_handler({"state": {}, "secrets": settings}, FakeContext())
    assert len(calls()) == 6  # nothing was kept through the failed call
    # Close to expiring: kept while they outlive the invocation by the margin, then renewed.
    # 600 s of Lambda time leave 585 s to the deadline; 900 s leave 885 s.
    left_s = 585 + lf.CREDENTIALS_MARGIN_S + 20
    lf._iam_login[0] = dataclasses.replace(lf._iam_login[0], valid_until=time.monotonic() + left_s)
    lf.lambda_handler({"state": {}, "secrets": settings}, FakeContext(600_000))
    assert len(calls()) == 6
    lf.lambda_handler({"state": {}, "secrets": settings}, FakeContext(900_000))
    assert len(calls()) == 7
    assert lf._iam_login[0].valid_until > time.monotonic() + 3000


def test_a_failed_login_drops_the_kept_credentials(
    stub, cluster, pg_tls, iam_table, provision, monkeypatch
):
    """Issue 17 item 7: credentials the database refuses are not used again: the next
    invocation asks AWS for new ones."""
    monkeypatch.setenv(ENDPOINT, stub.url)
    settings = iam_secrets(pg_tls, iam_table)
    lf.lambda_handler({"state": {}, "secrets": settings}, FakeContext())
    user = provision[0][0]
    pg_tls.execute(f"ALTER ROLE {pg8000.native.identifier(user)} PASSWORD 'changed-elsewhere'")
    with pytest.raises(lf.SourceError, match="authentication failed"):
        lf.lambda_handler({"state": {}, "secrets": settings}, FakeContext())
    assert not lf._iam_login and len(stub.calls) == 1
    lf.lambda_handler({"state": {}, "secrets": settings}, FakeContext())  # new ones: it works
    assert len(stub.calls) == 2 and len(provision) == 2


# -- errors: denied, missing, throttled, unreachable, refused ---------------------------------


def test_access_denied_by_iam_policy_names_the_action_and_arns(
    moto, cluster, pg_tls, iam_table, provision, monkeypatch
):
    """moto's IAM enforcement: the caller may describe clusters, not get credentials."""
    iam = admin_client("iam", moto.url)
    keys = {}
    for name, action in (("denied", "redshift:DescribeClusters"), ("allowed", "redshift:*")):
        user = f"{name}-{secrets.token_hex(3)}"
        iam.create_user(UserName=user)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}],
        }
        iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
        keys[name] = (key["AccessKeyId"], key["SecretAccessKey"])
        PASSWORDS.add(key["SecretAccessKey"])
    monkeypatch.setenv(ENDPOINT, moto.url)
    settings = iam_secrets(pg_tls, iam_table, db_user="alice")
    moto.enforce_iam(True)
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["denied"][0])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["denied"][1])
        with pytest.raises(lf.CredentialsError) as err:
            lf.lambda_handler({"state": {}, "secrets": settings}, FakeContext())
        message = str(err.value)
        assert re.match(
            r"redshift:GetClusterCredentials was denied \(AccessDenied: User: arn:aws:iam::"
            r"\d{12}:user/denied-\w+ is not authorized to perform: "
            r"redshift:GetClusterCredentials.*\); grant the function's execution role "
            r"redshift:GetClusterCredentials on arn:aws:redshift:us-east-1:<account>:"
            r"dbuser:iam-test/alice and arn:aws:redshift:us-east-1:<account>:dbname:"
            r"iam-test/test$",
            message,
        ), message
        assert_no_secret(message, keys["denied"][1])
        assert isinstance(err.value, lf.SourceError)
        # The same request with the permission goes through (the policy made the difference).
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["allowed"][0])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["allowed"][1])
        assert_full_sync(sync(settings))
    finally:
        moto.enforce_iam(False)
    assert provision  # the allowed caller got credentials and logged in


@pytest.mark.parametrize(
    ("overrides", "action", "pattern"),
    [
        pytest.param(
            {},
            "GetClusterCredentialsWithIAM",
            r"^redshift:GetClusterCredentialsWithIAM was denied \(AccessDenied: User: "
            r"arn:aws:sts::\d+:assumed-role/redshift-lambda-role/redshift-lambda is not "
            r"authorized.*\); grant the function's execution role "
            r"redshift:GetClusterCredentialsWithIAM on "
            r"arn:aws:redshift:us-east-1:<account>:dbname:iam-test/test$",
            id="with-iam",
        ),
        pytest.param(
            {"cluster_identifier": None, "workgroup": WORKGROUP},
            "GetCredentials",
            r"^redshift-serverless:GetCredentials was denied \(AccessDeniedException: .*\); "
            r"grant the function's execution role redshift-serverless:GetCredentials on the "
            r"workgroup's ARN, arn:aws:redshift-serverless:us-east-1:<account>:workgroup/"
            r"<workgroup id> \(aws redshift-serverless get-workgroup --workgroup-name "
            r"fivetran-wg shows it\)$",
            id="serverless",
        ),
    ],
)
def test_access_denied_answers_of_aws(
    stub, cluster, workgroup, pg_tls, iam_table, monkeypatch, overrides, action, pattern
):
    monkeypatch.setenv(ENDPOINT, stub.url)
    stub.state.deny.add(action)
    with pytest.raises(lf.CredentialsError) as err:
        lf.lambda_handler(
            {"state": {}, "secrets": iam_secrets(pg_tls, iam_table, **overrides)}, FakeContext()
        )
    assert re.search(pattern, str(err.value)), str(err.value)
    assert_no_secret(str(err.value))


@pytest.mark.parametrize(
    ("server", "overrides", "pattern"),
    [
        pytest.param(
            "moto",
            {"db_user": "alice", "cluster_identifier": "no-such-cluster"},
            r"^redshift:GetClusterCredentials: cluster 'no-such-cluster' was not found in "
            r"region us-east-1 \(ClusterNotFound\); check the settings 'cluster_identifier' "
            r"and 'region'$",
            id="moto-cluster",
        ),
        pytest.param(
            "stub",
            {"cluster_identifier": "no-such-cluster"},
            r"^redshift:GetClusterCredentialsWithIAM: cluster 'no-such-cluster' was not found",
            id="stub-cluster",
        ),
        pytest.param(
            "stub",
            {"cluster_identifier": None, "workgroup": "no-such-wg"},
            r"^redshift-serverless:GetCredentials: workgroup 'no-such-wg' was not found in "
            r"region us-east-1 \(ResourceNotFoundException\); check the settings 'workgroup'",
            id="stub-workgroup",
        ),
    ],
)
def test_not_found(
    moto, stub, cluster, workgroup, pg_tls, iam_table, monkeypatch, server, overrides, pattern
):
    monkeypatch.setenv(ENDPOINT, moto.url if server == "moto" else stub.url)
    with pytest.raises(lf.CredentialsError, match=pattern):
        lf.lambda_handler(
            {"state": {}, "secrets": iam_secrets(pg_tls, iam_table, **overrides)}, FakeContext()
        )


def test_throttling_is_retried_then_reported(stub, workgroup, pg_tls, iam_table, monkeypatch):
    monkeypatch.setenv(ENDPOINT, stub.url)
    stub.state.throttle.add("GetCredentials")
    settings = iam_secrets(pg_tls, iam_table, cluster_identifier=None, workgroup=workgroup)
    with pytest.raises(
        lf.CredentialsError,
        match=r"^redshift-serverless:GetCredentials for workgroup 'fivetran-wg' in region "
        r"us-east-1: AWS throttled the request or was unavailable \(ThrottlingException\), "
        r"also after 3 attempts; the next invocation tries again$",
    ):
        lf.lambda_handler({"state": {}, "secrets": settings}, FakeContext())
    assert [c.action for c in stub.calls] == ["GetCredentials"] * lf.AWS_API_ATTEMPTS


def test_unreachable_api_points_at_nat_or_vpc_endpoint(pg_tls, iam_table, monkeypatch):
    monkeypatch.setenv(ENDPOINT, f"http://127.0.0.1:{free_port()}")  # nothing listens
    with pytest.raises(
        lf.CredentialsError,
        match=r"^redshift:GetClusterCredentials: cannot reach the redshift API in us-east-1 "
        r"\(EndpointConnectionError\); a function in a VPC has no internet access: give its "
        r"subnets a NAT gateway or an interface VPC endpoint for "
        r"com\.amazonaws\.us-east-1\.redshift$",
    ):
        lf.lambda_handler(
            {"state": {}, "secrets": iam_secrets(pg_tls, iam_table, db_user="alice")},
            FakeContext(),
        )


def test_an_api_that_drops_connections_is_tried_a_bounded_number_of_times(
    pg_tls, iam_table, monkeypatch
):
    """Issue 17 item 12: the test above bounded the wall clock (< 15 s); what it means is that
    the call is tried AWS_API_ATTEMPTS times and then given up, with no connection to the
    database."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[int] = []

    def drop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()  # a connection closed before any answer

    thread = threading.Thread(target=drop, daemon=True)
    thread.start()
    monkeypatch.setenv(ENDPOINT, f"http://127.0.0.1:{listener.getsockname()[1]}")
    opened = record_connects(monkeypatch)
    try:
        with pytest.raises(
            lf.CredentialsError,
            match=r"^redshift:GetClusterCredentials: cannot "
            r"reach the redshift API in us-east-1 \(",
        ):
            lf.lambda_handler(
                {"state": {}, "secrets": iam_secrets(pg_tls, iam_table, db_user="alice")},
                FakeContext(),
            )
    finally:
        listener.close()
        thread.join(5)
    assert len(accepted) == lf.AWS_API_ATTEMPTS
    assert opened == []  # the database was never contacted


def test_a_wrong_secret_key_fails_the_signature(stub, cluster, pg_tls, iam_table, monkeypatch):
    monkeypatch.setenv(ENDPOINT, stub.url)
    wrong = secrets.token_urlsafe(30)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with pytest.raises(lf.CredentialsError) as err:
        lf.lambda_handler({"state": {}, "secrets": iam_secrets(pg_tls, iam_table)}, FakeContext())
    assert re.match(
        r"redshift:GetClusterCredentialsWithIAM: AWS did not accept the function's own AWS "
        r"credentials \(SignatureDoesNotMatch\)",
        str(err.value),
    )
    assert_no_secret(str(err.value), wrong)
    assert not stub.calls  # refused before it was answered


def test_no_aws_credentials_at_all(pg_tls, iam_table, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv(ENDPOINT, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(
        lf.CredentialsError,
        match=r"^redshift:GetClusterCredentialsWithIAM: no AWS credentials found "
        r"\(NoCredentialsError\); in Lambda they come from the execution role",
    ):
        lf.lambda_handler({"state": {}, "secrets": iam_secrets(pg_tls, iam_table)}, FakeContext())


def test_a_refused_login_says_so_without_the_password(
    stub, cluster, pg_tls, iam_table, monkeypatch
):
    """No role provisioned: PostgreSQL refuses the temporary credentials."""
    monkeypatch.setenv(ENDPOINT, stub.url)
    with pytest.raises(lf.SourceError) as err:
        lf.lambda_handler({"state": {}, "secrets": iam_secrets(pg_tls, iam_table)}, FakeContext())
    PASSWORDS.update(stub.state.passwords)
    message = str(err.value)
    assert re.match(
        rf"connecting: authentication failed for user 'IAMR:{ROLE}' at 127\.0\.0\.1:\d+; the "
        r"database refused the temporary IAM credentials: does the user exist \(or set "
        r"auto_create=true\)\? \(SQLSTATE 28P01\)$",
        message,
    ), message
    assert type(err.value) is lf.SourceError
    assert_no_secret(message, *stub.state.passwords)


def test_without_boto3_auth_iam_says_what_to_install_and_password_needs_none():
    script = (
        "import sys; sys.modules['boto3'] = None\n"
        "import lambda_function as lf\n"
        "config = lf.parse_config({'host': 'h', 'dbname': 'd', 'user': 'u', 'password': 'p',"
        " 'table': 't', 'cursor': 'c'})\n"
        "assert lf.login_credentials(config, 0) == ('u', 'p')\n"
        "auth = lf.AuthConfig(region='us-east-1', cluster_identifier='c')\n"
        "try:\n"
        "    lf.fetch_iam_credentials(auth, 'd', 60)\n"
        "except lf.CredentialsError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.startswith(
        "auth=iam needs boto3, which the AWS Lambda Python runtime provides"
    ), result.stdout + result.stderr


# -- settings ----------------------------------------------------------------------------------

PROVISIONED = "examplecluster.abc123xyz789.us-east-1.redshift.amazonaws.com"
SERVERLESS = "default-wg.123456789012.eu-west-2.redshift-serverless.amazonaws.com"


def settings(**overrides: Any) -> dict[str, Any]:
    base = {
        "host": PROVISIONED,
        "dbname": "dev",
        "table": "orders",
        "cursor": "updated_at",
        "auth": "iam",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"db_user": "alice"}, lf.AuthConfig("us-east-1", "examplecluster", db_user="alice")),
        ({}, lf.AuthConfig("us-east-1", "examplecluster")),
        (
            {"host": PROVISIONED.upper(), "auth": " IAM "},
            lf.AuthConfig("us-east-1", "examplecluster"),
        ),
        ({"host": SERVERLESS}, lf.AuthConfig("eu-west-2", workgroup="default-wg")),
        (
            {"host": "c1.abc.cn-north-1.redshift.amazonaws.com.cn"},
            lf.AuthConfig("cn-north-1", "c1"),
        ),
        (
            {"host": "10.0.0.5", "cluster_identifier": "Prod-1", "region": "eu-central-1"},
            lf.AuthConfig("eu-central-1", "prod-1"),
        ),
        (
            {"host": "vpce.example.internal", "workgroup": "wg-one", "region": "us-west-2"},
            lf.AuthConfig("us-west-2", workgroup="wg-one"),
        ),
        (
            {"cluster_identifier": "other", "region": "ap-south-1"},
            lf.AuthConfig("ap-south-1", "other"),
        ),
        (
            {"db_user": "bob", "db_groups": " readers , analysts", "auto_create": "TRUE"},
            lf.AuthConfig(
                "us-east-1", "examplecluster", None, "bob", ("readers", "analysts"), True
            ),
        ),
        (
            {"db_user": "bob", "auto_create": False},
            lf.AuthConfig("us-east-1", "examplecluster", db_user="bob"),
        ),
        (
            {"db_user": "bob", "sslmode": "require"},
            lf.AuthConfig("us-east-1", "examplecluster", db_user="bob"),
        ),
    ],
)
def test_iam_settings_parse(overrides, expected, monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    config = lf.parse_config(settings(**overrides))
    assert config.auth == expected
    assert config.user == "" and config.password == ""


def test_region_from_the_lambda_environment():
    secrets_ = settings(host="10.0.0.5", cluster_identifier="c1")
    assert lf.parse_auth(secrets_, "10.0.0.5", {"AWS_REGION": "eu-north-1"}) == lf.AuthConfig(
        "eu-north-1", "c1"
    )
    assert lf.parse_auth(secrets_, "10.0.0.5", {"AWS_DEFAULT_REGION": "sa-east-1"}) == (
        lf.AuthConfig("sa-east-1", "c1")
    )


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (
            {"auth": "kerberos"},
            r"^setting 'auth' must be password \(user and password in the "
            r"settings\) or iam",
        ),
        (
            {"auth": None, "user": "u", "password": "p", "db_user": "alice", "region": "x"},
            r"^setting\(s\) db_user, region apply only with auth=iam; set auth=iam or remove them$",
        ),
        (
            {"password": "s3cret-pw"},
            r"^setting 'password' is not used with auth=iam \(each "
            r"invocation gets a temporary password from AWS\); remove it$",
        ),
        ({"user": "alice"}, r"^setting 'user' is not used with auth=iam; set db_user"),
        (
            {"sslmode": "disable"},
            r"^setting 'sslmode' cannot be disable with auth=iam: Redshift "
            r"accepts IAM credentials only over TLS",
        ),
        (
            {"cluster_identifier": "a", "workgroup": "wg1"},
            r"^settings 'cluster_identifier' and "
            r"'workgroup' exclude each other",
        ),
        (
            {"host": "127.0.0.1"},
            r"^setting 'cluster_identifier' is missing and cannot be read "
            r"from 'host' \(not an endpoint name like <cluster>\.<id>\.<region>\.redshift\."
            r"amazonaws\.com\); set cluster_identifier",
        ),
        (
            {"cluster_identifier": "bad--id"},
            r"^setting 'cluster_identifier' must be a cluster "
            r"identifier: 1 to 63 letters",
        ),
        ({"cluster_identifier": "1abc"}, r"^setting 'cluster_identifier' must be a cluster"),
        ({"cluster_identifier": "a" * 64}, r"^setting 'cluster_identifier' must be a cluster"),
        ({"cluster_identifier": "ends-"}, r"^setting 'cluster_identifier' must be a cluster"),
        (
            {"cluster_identifier": None, "workgroup": "wg"},
            r"^setting 'workgroup' must be a "
            r"workgroup name: 3 to 64",
        ),
        (
            {"host": "10.0.0.5", "cluster_identifier": "c1"},
            r"^setting 'region' is missing: "
            r"'host' does not name the region and neither AWS_REGION nor AWS_DEFAULT_REGION is set",
        ),
        (
            {"region": "useast1"},
            r"^setting 'region' is not an AWS region; expected a region "
            r"like us-east-1$",
        ),
        (
            {"host": SERVERLESS, "db_user": "alice"},
            r"^setting\(s\) db_user cannot be used here: "
            r"Redshift Serverless maps the function's IAM role to the database user IAMR:<role "
            r"name>.*; remove them$",
        ),
        (
            {"db_groups": "readers"},
            r"^setting\(s\) db_groups cannot be used here: without "
            r"db_user the function logs in as its IAM role \(GetClusterCredentialsWithIAM\).*"
            r"remove them, or set db_user$",
        ),
        ({"auto_create": "true"}, r"^setting\(s\) auto_create cannot be used here"),
        ({"db_user": "1alice"}, r"^setting 'db_user' must be a database user name"),
        ({"db_user": "IAM:alice"}, r"^setting 'db_user' must be a database user name"),
        ({"db_user": "public"}, r"^setting 'db_user' must be a database user name.*not PUBLIC"),
        ({"db_user": 5}, r"^setting 'db_user' must be a string, not int"),
        (
            {"db_user": "a", "db_groups": "x,,y"},
            r"^setting 'db_groups' must be a comma-"
            r"separated list of database group names",
        ),
        ({"db_user": "a", "db_groups": "x, X"}, r"^setting 'db_groups' names a group twice$"),
        ({"db_user": "a", "auto_create": "yes"}, r"^setting 'auto_create' must be true or false$"),
        ({"db_user": "a", "auto_create": 1}, r"^setting 'auto_create' must be true or false$"),
    ],
)
def test_bad_iam_settings(overrides, pattern, monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(lf.ConfigurationError, match=pattern) as err:
        lf.parse_config(settings(**overrides))
    assert "s3cret-pw" not in str(err.value)


def test_grant_hints_name_every_action_and_arn():
    auth = lf.AuthConfig("us-gov-west-1", "c1", None, "bob", ("readers",), True)
    assert lf.iam_grant_hint(auth, "dev") == (
        "redshift:GetClusterCredentials on arn:aws-us-gov:redshift:us-gov-west-1:<account>:"
        "dbuser:c1/bob and arn:aws-us-gov:redshift:us-gov-west-1:<account>:dbname:c1/dev, "
        "redshift:CreateClusterUser on arn:aws-us-gov:redshift:us-gov-west-1:<account>:"
        "dbuser:c1/bob, redshift:JoinGroup on arn:aws-us-gov:redshift:us-gov-west-1:"
        "<account>:dbgroup:c1/readers"
    )


def test_aws_messages_lose_anything_like_a_key():
    error = lf.aws_error(
        "AccessDenied",
        "key AKIAABCDEFGHIJKLMNOP token " + "x" * 50,
        lf.AuthConfig("us-east-1", "c1"),
        "dev",
    )
    assert "AKIAABCDEFGHIJKLMNOP" not in str(error) and "x" * 50 not in str(error)
    assert "<access key id>" in str(error)


# -- opt-in: real AWS ---------------------------------------------------------------------------

REAL = ("REDSHIFT_IAM_HOST", "REDSHIFT_IAM_DBNAME", "REDSHIFT_IAM_TABLE", "REDSHIFT_IAM_CURSOR")
REAL_MISSING = [name for name in REAL if not os.environ.get(name)]


@pytest.mark.redshift
@pytest.mark.skipif(
    bool(REAL_MISSING),
    reason="opt-in test against real AWS and Redshift: set " + ", ".join(REAL_MISSING),
)
def test_real_aws_iam_sync(monkeypatch):
    """A setup test and a full sync with auth=iam against a real cluster or workgroup.

    Set REDSHIFT_IAM_HOST, REDSHIFT_IAM_DBNAME, REDSHIFT_IAM_TABLE (schema.table of an existing
    table the IAM identity may read) and REDSHIFT_IAM_CURSOR; optionally REDSHIFT_IAM_PORT,
    REDSHIFT_IAM_PRIMARY_KEY, REDSHIFT_IAM_CLUSTER, REDSHIFT_IAM_WORKGROUP, REDSHIFT_IAM_DB_USER,
    REDSHIFT_IAM_DB_GROUPS, REDSHIFT_IAM_AUTO_CREATE, REDSHIFT_IAM_REGION. AWS credentials come
    from this environment (AWS_PROFILE, AWS_ACCESS_KEY_ID, ...), as the execution role's would.
    """
    monkeypatch.undo()  # this test only: the real AWS environment, not the fakes
    os.environ.pop(ENDPOINT, None)
    optional = {
        "port": "PORT",
        "primary_key": "PRIMARY_KEY",
        "cluster_identifier": "CLUSTER",
        "workgroup": "WORKGROUP",
        "db_user": "DB_USER",
        "db_groups": "DB_GROUPS",
        "auto_create": "AUTO_CREATE",
        "region": "REGION",
    }
    settings_ = {
        "auth": "iam",
        "host": os.environ["REDSHIFT_IAM_HOST"],
        "dbname": os.environ["REDSHIFT_IAM_DBNAME"],
        "table": os.environ["REDSHIFT_IAM_TABLE"],
        "cursor": os.environ["REDSHIFT_IAM_CURSOR"],
        "connect_timeout_s": "30",
        **{
            k: os.environ[f"REDSHIFT_IAM_{v}"]
            for k, v in optional.items()
            if os.environ.get(f"REDSHIFT_IAM_{v}")
        },
    }
    response = lf.lambda_handler(
        {"state": {}, "secrets": settings_, "setup_test": True}, FakeContext()
    )
    assert response["hasMore"] is False
    result = sync(settings_, context=FakeContext())
    keys = [json.dumps(row, sort_keys=True) for row in result.rows]
    assert len(keys) == len(set(keys))
