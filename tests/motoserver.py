"""Stand-ins for the AWS APIs that auth=iam calls, on loopback, for real boto3 to talk to.

``MotoServer`` runs ``moto`` in server mode (``python -m moto.server -H 127.0.0.1 -p <port>``)
as a subprocess: Redshift's CreateCluster, DescribeClusters and GetClusterCredentials, and
moto's IAM policy enforcement (``/moto-api/reset-auth``), which answers AccessDenied.

moto (5.2) implements neither GetClusterCredentialsWithIAM nor any of Redshift Serverless, so
``StubRedshiftApi`` answers those on another loopback port, in the wire formats AWS uses (the
Query protocol's XML for ``redshift``, JSON 1.1 for ``redshift-serverless``), including AWS's
error answers. It checks every request's Signature Version 4 signature itself (an independent
implementation, not botocore's), so boto3's real signing is exercised too. A cluster exists for
it when moto's DescribeClusters lists it; workgroups are created with CreateWorkgroup.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import hashlib
import hmac
import http.client
import json
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from xml.sax.saxutils import escape

__all__ = ["Call", "MotoServer", "StubRedshiftApi", "free_port"]

ACCOUNT_ID = "123456789012"
REDSHIFT_XMLNS = "http://redshift.amazonaws.com/doc/2012-12-01/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MotoServer:
    """``moto`` in server mode on a free loopback port, stopped (and its process gone) on exit."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for _attempt in range(3):
            self.port = free_port()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            atexit.register(self.stop)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.process.poll() is None:
                with contextlib.suppress(OSError):
                    if self._request("GET", "/moto-api/data.json", b"") == 200:
                        return
                time.sleep(0.1)
            self.stop()  # lost a race for the port, or did not start: try another port
        raise RuntimeError("moto server did not start (pip install 'moto[server]')")

    def stop(self) -> None:
        process, self.process = self.process, None
        atexit.unregister(self.stop)
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def enforce_iam(self, enabled: bool) -> None:
        """Turn moto's IAM policy checks on (every later request) or off (moto's default)."""
        status = self._request("POST", "/moto-api/reset-auth", b"0" if enabled else b"inf")
        if status != 200:
            raise RuntimeError(f"moto's reset-auth answered HTTP {status}")

    def _request(self, method: str, path: str, body: bytes) -> int:
        con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            con.request(method, path, body, {"Content-Type": "text/plain"})
            response = con.getresponse()
            response.read()
            return response.status
        finally:
            con.close()


@dataclass
class Call:
    """One request the stub answered."""

    service: str
    action: str
    params: dict[str, Any]
    access_key_id: str


@dataclass
class _State:
    keys: dict[str, str]  # access key id -> secret access key
    moto_url: str
    role_name: str
    workgroups: set[str] = field(default_factory=set)
    deny: set[str] = field(default_factory=set)  # actions answered with AccessDenied
    throttle: set[str] = field(default_factory=set)  # actions answered with throttling
    calls: list[Call] = field(default_factory=list)
    passwords: list[str] = field(default_factory=list)  # every password handed out


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def sigv4_problem(
    method: str, path: str, headers: dict[str, str], body: bytes, keys: dict[str, str]
) -> str | None:
    """Why a request's SigV4 signature is not valid (None when it is)."""
    auth = headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "MissingAuthenticationToken"
    fields = dict(part.strip().split("=", 1) for part in auth[17:].split(","))
    key_id, date, region, service, terminator = fields["Credential"].split("/")
    if key_id not in keys:
        return "InvalidClientTokenId"
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed or terminator != "aws4_request":
        return "IncompleteSignature"
    canonical_headers = "".join(f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed)
    parsed = urllib.parse.urlsplit(path)
    canonical = "\n".join(
        [
            method,
            urllib.parse.quote(parsed.path or "/", safe="/~"),
            "&".join(sorted(parsed.query.split("&"))) if parsed.query else "",
            canonical_headers,
            fields["SignedHeaders"],
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            headers.get("x-amz-date", ""),
            scope,
            hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        ]
    )
    key = _hmac(("AWS4" + keys[key_id]).encode("utf-8"), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    expected = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, fields["Signature"]):
        return "SignatureDoesNotMatch"
    return None


class _Handler(BaseHTTPRequestHandler):
    server_version = "stub-aws"
    state: _State  # set on the subclass made for each server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        target = headers.get("x-amz-target", "")
        json_api = target.startswith("RedshiftServerless.")
        problem = sigv4_problem(self.command, self.path, headers, body, self.state.keys)
        if json_api:
            action = target.split(".", 1)[1]
            params: dict[str, Any] = json.loads(body or b"{}")
        else:
            form = urllib.parse.parse_qs(body.decode("utf-8"))
            params = {k: v[0] for k, v in form.items()}
            action = params.pop("Action", "")
        if problem is not None:
            message = (
                "The request signature we calculated does not match the signature you provided."
            )
            return self._error(json_api, 403, problem, message)
        key_id = headers["authorization"].split("Credential=", 1)[1].split("/", 1)[0]
        service = "redshift-serverless" if json_api else "redshift"
        self.state.calls.append(Call(service, action, params, key_id))
        if action in self.state.throttle:
            code = "ThrottlingException" if json_api else "Throttling"
            return self._error(json_api, 400, code, "Rate exceeded")
        if action in self.state.deny:
            resource = (
                f"arn:aws:redshift-serverless:us-east-1:{ACCOUNT_ID}:workgroup/{uuid.uuid4()}"
                if json_api
                else f"arn:aws:redshift:us-east-1:{ACCOUNT_ID}:dbname:"
                f"{params.get('ClusterIdentifier')}/{params.get('DbName')}"
            )
            message = (
                f"User: arn:aws:sts::{ACCOUNT_ID}:assumed-role/{self.state.role_name}/"
                f"redshift-lambda is not authorized to perform: {service}:{action} on "
                f"resource: {resource} because no identity-based policy allows the "
                f"{service}:{action} action"
            )
            code = "AccessDeniedException" if json_api else "AccessDenied"
            return self._error(json_api, 400 if json_api else 403, code, message)
        if json_api:
            return self._serverless(action, params)
        return self._redshift(action, params)

    # -- the operations --------------------------------------------------------------------------

    def _issue(self, duration_s: int) -> tuple[str, str, datetime.datetime]:
        password = secrets.token_urlsafe(24)
        self.state.passwords.append(password)
        user = f"IAMR:{self.state.role_name}"
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=duration_s)
        return user, password, expires

    def _redshift(self, action: str, params: dict[str, Any]) -> None:
        if action != "GetClusterCredentialsWithIAM":
            return self._error(False, 400, "InvalidAction", f"{action} is not stubbed")
        duration_s = int(params.get("DurationSeconds", 900))
        if not 900 <= duration_s <= 3600:
            message = "Token duration must be between 900 and 3600 seconds"
            return self._error(False, 400, "InvalidParameterValue", message)
        cluster = params.get("ClusterIdentifier", "")
        if cluster not in self._moto_clusters():
            return self._error(False, 404, "ClusterNotFound", f"Cluster {cluster} not found.")
        user, password, expires = self._issue(duration_s)
        result = (
            f"<DbUser>{escape(user)}</DbUser><DbPassword>{escape(password)}</DbPassword>"
            f"<Expiration>{expires.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}</Expiration>"
        )
        xml = (
            f'<GetClusterCredentialsWithIAMResponse xmlns="{REDSHIFT_XMLNS}">'
            f"<GetClusterCredentialsWithIAMResult>{result}</GetClusterCredentialsWithIAMResult>"
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            "</GetClusterCredentialsWithIAMResponse>"
        )
        self._send(200, "text/xml", xml.encode("utf-8"))

    def _serverless(self, action: str, params: dict[str, Any]) -> None:
        name = params.get("workgroupName", "")
        if action == "CreateWorkgroup":
            self.state.workgroups.add(name)
            answer = {"workgroup": {"workgroupName": name, "workgroupId": str(uuid.uuid4())}}
            return self._send(200, "application/x-amz-json-1.1", json.dumps(answer).encode())
        if action != "GetCredentials":
            return self._error(True, 400, "UnknownOperationException", f"{action} is not stubbed")
        duration_s = int(params.get("durationSeconds", 900))
        if not 900 <= duration_s <= 3600:
            message = "durationSeconds must be between 900 and 3600"
            return self._error(True, 400, "ValidationException", message)
        if name not in self.state.workgroups:
            message = f"Workgroup {name} does not exist."
            return self._error(True, 400, "ResourceNotFoundException", message)
        user, password, expires = self._issue(duration_s)
        answer = {"dbUser": user, "dbPassword": password, "expiration": expires.timestamp()}
        self._send(200, "application/x-amz-json-1.1", json.dumps(answer).encode())

    def _moto_clusters(self) -> set[str]:
        import boto3  # the test's own client, with moto's default (unchecked) credentials

        client = boto3.client(
            "redshift",
            endpoint_url=self.state.moto_url,
            region_name="us-east-1",
            aws_access_key_id="stub",
            aws_secret_access_key="stub",
        )
        return {c["ClusterIdentifier"] for c in client.describe_clusters()["Clusters"]}

    # -- answers ---------------------------------------------------------------------------------

    def _error(self, json_api: bool, status: int, code: str, message: str) -> None:
        if json_api:
            body = json.dumps({"__type": code, "message": message}).encode("utf-8")
            return self._send(
                status, "application/x-amz-json-1.1", body, {"x-amzn-ErrorType": code}
            )
        xml = (
            f'<ErrorResponse xmlns="{REDSHIFT_XMLNS}"><Error><Type>Sender</Type>'
            f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
            f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
        )
        self._send(status, "text/xml", xml.encode("utf-8"))

    def _send(
        self, status: int, content_type: str, body: bytes, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class StubRedshiftApi:
    """GetClusterCredentialsWithIAM and Redshift Serverless on a free loopback port."""

    def __init__(self, keys: dict[str, str], moto_url: str, role_name: str) -> None:
        self.state = _State(dict(keys), moto_url, role_name)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def calls(self) -> list[Call]:
        return self.state.calls

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def reset(self) -> None:
        self.state.deny.clear()
        self.state.throttle.clear()
        self.state.calls.clear()
