"""The S3 output parts (lambda_function.py, issue 10) with real boto3 against SeaweedFS on
loopback: single PUT and multipart objects, bounded memory, failures mid-upload, denied
permissions, and the JSON payload Fivetran reads."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from s3server import SeaweedS3

import lambda_function as s3o

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


@pytest.fixture
def bucket(s3: SeaweedS3) -> str:
    return s3.new_bucket()


@pytest.fixture
def s3_env(s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """The function's own s3_client() pointed at the test server, with the admin identity."""
    for name, value in s3.aws_env().items():
        monkeypatch.setenv(name, value)
    return s3


def _object(s3: SeaweedS3, bucket: str, key: str) -> bytes:
    body: bytes = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def _sha256_of_object(s3: SeaweedS3, bucket: str, key: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in s3.client().get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(MiB):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _exists(s3: SeaweedS3, bucket: str, key: str) -> bool:
    try:
        s3.client().head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] in ("404", "NoSuchKey"), e.response
        return False
    return True


def _open_uploads(s3: SeaweedS3, bucket: str, key: str) -> list[str]:
    answer = s3.client().list_multipart_uploads(Bucket=bucket, Prefix=key)
    return [u["UploadId"] for u in answer.get("Uploads", []) if u["Key"] == key]


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """Deterministic, incompressible-looking bytes."""
    block = hashlib.sha256(b"seed").digest() * (size // 32)
    for i in range(0, total, size):
        yield (i.to_bytes(8, "big") + block)[: min(size, total - i)]


# -- S3Upload -------------------------------------------------------------------------------------


def test_small_object_is_one_put(s3_env: SeaweedS3, bucket: str) -> None:
    with s3o.S3Upload(s3o.s3_client(600), bucket, "sync/small.json") as upload:
        upload.write(b'{"insert":')
        upload.write(b"{}}")
        assert upload.complete() == 13
        assert upload.upload_id is None and upload.parts == []  # never a multipart upload
    assert _object(s3_env, bucket, "sync/small.json") == b'{"insert":{}}'
    head = s3_env.client().head_object(Bucket=bucket, Key="sync/small.json")
    assert head["ContentType"] == "application/json"


def test_empty_object(s3_env: SeaweedS3, bucket: str) -> None:
    with s3o.S3Upload(s3o.s3_client(600), bucket, "empty") as upload:
        assert upload.complete() == 0
    assert _object(s3_env, bucket, "empty") == b""


def test_100_mb_object_in_parts_is_byte_exact(s3_env: SeaweedS3, bucket: str) -> None:
    total = 100 * MiB + 12_345  # a last part shorter than the others
    digest = hashlib.sha256()
    with s3o.S3Upload(s3o.s3_client(600), bucket, "big.json") as upload:
        for chunk in _chunks(total, 1_000_003):  # chunks that straddle part boundaries
            digest.update(chunk)
            upload.write(chunk)
        assert upload.complete() == total
        assert len(upload.parts) == -(-total // s3o.PART_BYTES)
    assert _sha256_of_object(s3_env, bucket, "big.json") == (digest.hexdigest(), total)
    assert _open_uploads(s3_env, bucket, "big.json") == []


def test_exact_multiple_of_the_part_size(s3_env: SeaweedS3, bucket: str) -> None:
    part = s3o.MIN_PART_BYTES
    data = b"".join(_chunks(2 * part))
    with s3o.S3Upload(s3o.s3_client(600), bucket, "two", part_bytes=part) as upload:
        upload.write(data)
        assert upload.parts_sent == 2
        assert upload.complete() == len(data)
    assert _object(s3_env, bucket, "two") == data


MEMORY_SCRIPT = r"""
import hashlib, json, sys, tracemalloc
sys.path.insert(0, sys.argv[1])
import lambda_function as s3o
bucket, key, part, total = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
client = s3o.s3_client(600)
client.head_bucket(Bucket=bucket)  # warm up: connection, credentials, endpoint rules
chunk = hashlib.sha256(b"x").digest() * 2048  # 64 KiB
def status_bytes(field):
    # VmHWM, not ru_maxrss: after fork and exec, ru_maxrss keeps the parent's (pytest's) size.
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024
rss0 = status_bytes("VmRSS")
tracemalloc.start()
digest = hashlib.sha256()
with s3o.S3Upload(client, bucket, key, part_bytes=part) as upload:
    for i in range(0, total, len(chunk)):
        data = i.to_bytes(8, "big") + chunk[8:]
        digest.update(data)
        upload.write(data)
    size = upload.complete()
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
rss1 = status_bytes("VmHWM")  # the process's peak
print(json.dumps({"size": size, "sha256": digest.hexdigest(), "peak": peak, "rss_before": rss0,
                  "rss_peak": rss1, "rss_growth": rss1 - rss0, "parts": len(upload.parts)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("part_mib", [5, 8, 16])
def test_memory_stays_about_two_parts_while_writing_100_mb(
    s3_env: SeaweedS3, bucket: str, part_mib: int
) -> None:
    """Peak memory of a child process writing 100 MB is about two parts (one filling, one in
    flight), not the object's size."""
    part, total = part_mib * MiB, 100 * MiB
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(ROOT), bucket, "m.json", str(part), str(total)],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"part {part_mib} MiB: {figures}")  # shown with -s; the README quotes these
    assert figures["size"] == total
    assert figures["parts"] == -(-total // part)
    assert _sha256_of_object(s3_env, bucket, "m.json") == (figures["sha256"], total)
    assert figures["peak"] < 2 * part + 2 * MiB, figures  # Python allocations
    # The whole process: the parts' pages plus what the SDK loads lazily at the first upload.
    assert figures["rss_growth"] < 2 * part + 16 * MiB, figures


def test_an_exception_inside_the_block_aborts(s3_env: SeaweedS3, bucket: str) -> None:
    with pytest.raises(ZeroDivisionError), s3o.S3Upload(s3o.s3_client(600), bucket, "x") as up:
        up.write(b"".join(_chunks(2 * s3o.PART_BYTES + 10)))
        assert up.parts_sent == 2 and up.upload_id is not None
        _ = 1 / 0  # e.g. the database failing mid-batch
    assert not _exists(s3_env, bucket, "x")
    assert _open_uploads(s3_env, bucket, "x") == []
    up.abort()  # idempotent
    with pytest.raises(RuntimeError):
        up.write(b"more")


def test_leaving_the_block_without_complete_aborts(s3_env: SeaweedS3, bucket: str) -> None:
    with s3o.S3Upload(s3o.s3_client(600), bucket, "left") as upload:
        upload.write(b"".join(_chunks(s3o.PART_BYTES + 1)))
    assert not _exists(s3_env, bucket, "left")
    assert _open_uploads(s3_env, bucket, "left") == []


def test_server_killed_mid_upload(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash of S3 after some parts: a clear S3Error naming the bucket; after the restart
    no object at the key; the abort that failed while S3 was down succeeds when retried."""
    import helpers

    with SeaweedS3() as server:
        helpers.PASSWORDS.update(server.secret_keys)
        for name, value in server.aws_env().items():
            monkeypatch.setenv(name, value)
        bucket = server.new_bucket()
        upload = s3o.S3Upload(s3o.s3_client(600), bucket, "crash.json", part_bytes=5 * MiB)
        with pytest.raises(s3o.S3Error) as info, upload:
            for i, chunk in enumerate(_chunks(60 * MiB, MiB)):
                upload.write(chunk)
                if i == 16:  # three parts sent
                    assert upload.parts_sent == 3
                    server.kill()
        message = str(info.value)
        assert bucket in message and "UploadPart" in message and "cannot reach S3" in message
        assert server.admin_keys[0] not in message and server.admin_keys[1] not in message
        assert any(r.getMessage().count("s3 abort failed") for r in caplog.records)
        assert upload.upload_id is not None  # the abort could not reach S3 either

        server.start()
        assert not _exists(server, bucket, "crash.json")
        assert _open_uploads(server, bucket, "crash.json") == [upload.upload_id]
        upload.abort()  # a later call tries again
        assert upload.upload_id is None
        assert _open_uploads(server, bucket, "crash.json") == []
        assert not _exists(server, bucket, "crash.json")


def test_unreachable_endpoint(monkeypatch: pytest.MonkeyPatch, s3: SeaweedS3) -> None:
    for name, value in s3.aws_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(s3o.S3_ENDPOINT_URL_ENV, "http://127.0.0.1:9")  # discard: closed
    upload = s3o.S3Upload(s3o.s3_client(30), "b-x", "k")
    with pytest.raises(s3o.S3Error, match=r"PutObject to bucket 'b-x'.*cannot reach S3"), upload:
        upload.write(b"{}")
        upload.complete()


@pytest.mark.parametrize("size", [10, s3o.MIN_PART_BYTES + 1])
def test_access_denied_names_the_grant(
    s3: SeaweedS3, bucket: str, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    for name, value in s3.aws_env(reader=True).items():  # may read, may not write
        monkeypatch.setenv(name, value)
    upload = s3o.S3Upload(s3o.s3_client(600), bucket, "denied", part_bytes=s3o.MIN_PART_BYTES)
    with pytest.raises(s3o.S3Error) as info, upload:
        upload.write(b"x" * size)
        upload.complete()
    message = str(info.value)
    action = "PutObject" if size == 10 else "CreateMultipartUpload"
    assert f"S3 {action} to bucket '{bucket}' (key 'denied') was denied (AccessDenied" in message
    assert f"s3:PutObject on arn:aws:s3:::{bucket}/*" in message
    assert "s3:AbortMultipartUpload" in message
    assert s3.reader_keys[0] not in message and s3.reader_keys[1] not in message
    assert not _exists(s3, bucket, "denied")


def test_missing_bucket(s3_env: SeaweedS3) -> None:
    upload = s3o.S3Upload(s3o.s3_client(600), "no-such-bucket-here", "k")
    with pytest.raises(s3o.S3Error, match=r"the bucket does not exist \(NoSuchBucket"), upload:
        upload.write(b"{}")
        upload.complete()


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "secret AKIAIOSFODNN7EXAMPLE in the message"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "UploadPart")


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("AccessDenied", 403, "was denied (AccessDenied, HTTP 403); grant the function's"),
        ("SlowDown", 503, "throttled the request or was unavailable (SlowDown, HTTP 503), also"),
        ("ServiceUnavailable", 503, "throttled the request or was unavailable"),
        ("NoSuchBucket", 404, "the bucket does not exist"),
        ("NoSuchUpload", 404, "the multipart upload no longer exists"),
        ("InvalidAccessKeyId", 403, "did not accept the function's own AWS credentials"),
        ("KMS.DisabledException", 400, "SSE-KMS key"),
        ("EntityTooSmall", 400, "failed (EntityTooSmall, HTTP 400)"),
    ],
)
def test_client_errors_become_clear_messages(code: str, status: int, expected: str) -> None:
    error = s3o.s3_error(_client_error(code, status), "UploadPart", "my-bucket", "f.json")
    assert isinstance(error, s3o.ConnectorError)
    assert str(error).startswith("S3 UploadPart to bucket 'my-bucket' (key 'f.json')")
    assert expected in str(error)
    assert "AKIA" not in str(error)  # S3's own message is never passed on


def test_a_parameter_boto3_refuses_is_named() -> None:
    """Issue 17 item 9: ParamValidationError was "failed in the AWS SDK"; it says what the
    bucket and key must be."""
    exc = botocore.exceptions.ParamValidationError(report='Invalid bucket name "a b"')
    error = s3o.s3_error(exc, "PutObject", "a b", "f.json")
    assert str(error).startswith(
        "S3 PutObject to bucket 'a b' (key 'f.json'): the AWS SDK refused the bucket or key "
        "before sending it (ParamValidationError); expected an S3 bucket name"
    ), str(error)


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("AccessDenied", 403, "denied"),
        ("AccessDeniedException", 400, "denied"),  # the credentials APIs' spelling
        ("unknown", 403, "denied"),
        ("ThrottlingException", 400, "throttled"),
        ("SlowDown", 503, "throttled"),
        ("unknown", 500, "throttled"),
        ("ClusterNotFound", 404, "not found"),
        ("NoSuchBucket", 404, "not found"),
        ("ExpiredToken", 400, "caller"),
        ("InvalidAccessKeyId", 403, "caller"),
        ("KMS.NotFoundException", 400, "kms"),
        ("EntityTooSmall", 400, None),
    ],
)
def test_one_table_of_aws_error_codes(code: str, status: int, kind: str | None) -> None:
    """Issue 17 item 11: aws_error and s3_error read one table of codes (they had two)."""
    assert s3o.aws_error_kind(code, status) == kind


def test_grant_hint_partitions() -> None:
    assert "arn:aws-cn:s3:::b/*" in s3o.s3_grant_hint("b", "cn-north-1")
    assert "arn:aws:s3:::b/*" in s3o.s3_grant_hint("b", "eu-west-1")


def test_s3_client_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(s3o.S3_ENDPOINT_URL_ENV, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    client = s3o.s3_client(40)
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"
    assert client.meta.config.read_timeout == 5.0  # 40 s / (2 * 4 attempts)
    assert client.meta.config.retries["total_max_attempts"] == s3o.S3_API_ATTEMPTS
    monkeypatch.setenv(s3o.S3_ENDPOINT_URL_ENV, "http://127.0.0.1:1234")
    client = s3o.s3_client(900)
    assert client.meta.endpoint_url == "http://127.0.0.1:1234"
    assert client.meta.config.s3["addressing_style"] == "path"
    assert client.meta.config.read_timeout == s3o.S3_READ_TIMEOUT_S


def test_part_size_below_the_s3_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        s3o.S3Upload(None, "b", "k", part_bytes=s3o.MIN_PART_BYTES - 1)


# -- JsonObjectStream -----------------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


TRICKY: list[dict[str, Any]] = [
    {"id": 1, "s": "héllo ✓ 😀 中文", "big": 2**200, "neg": -(2**70), "f": 0.1, "n": None},
    {"id": 2, "s": '\x00\x01\x1f\n\r\t"\\/\x7f', "sep": "\u2028\u2029", "b": True, "e": ""},
    {"id": 3, "surrogate": "\ud800 alone", "json": {"a": [1, "two", None, {"b": 1e308}]}},
    {"id": 4, "ключ": "значение", "emoji 🔑": "v", "f": -0.0, "tiny": 5e-324},
]


def s3_texts(rows: list[dict[str, Any]]) -> list[str]:
    """Rows as the S3 style's encoder writes them (the transcoders write the same)."""
    return [s3o._s3_encode(row) for row in rows]


def test_stream_round_trips_values_exactly() -> None:
    sink = Sink()
    stream = s3o.JsonObjectStream(sink)
    stream.begin_table("orders")
    stream.rows(s3_texts(TRICKY[:2]))
    stream.rows([])
    stream.rows(s3_texts(TRICKY[2:]))
    stream.end_table()
    stream.begin_table("empty")
    stream.end_table()
    stream.begin_table('täble "quoted"')
    stream.rows([json.dumps(r, ensure_ascii=False, allow_nan=False) for r in TRICKY[:1]])
    stream.rows([json.dumps(r) for r in TRICKY[1:]])
    stream.end_table()
    stream.deletes("orders", [{"id": 7}, {"id": 8}])
    stream.deletes("other", [])
    assert stream.finish() == len(sink.data)
    assert stream.rows_written == 8
    text = sink.data.decode("utf-8")  # strict UTF-8
    assert "\\u00e9" not in text and "é" in text  # raw UTF-8, not ASCII escapes
    payload = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
    assert payload == {
        "insert": {"orders": TRICKY, "empty": [], 'täble "quoted"': TRICKY},
        "delete": {"orders": [{"id": 7}, {"id": 8}], "other": []},
    }
    big = payload["insert"]["orders"][0]["big"]
    assert type(big) is int and big == 2**200
    assert payload["insert"]["orders"][2]["surrogate"] == "\ud800 alone"


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        ([], {"insert": {}, "delete": {}}),
        ([("deletes", "t", [{"k": "a"}])], {"insert": {}, "delete": {"t": [{"k": "a"}]}}),
        ([("begin_table", "t"), ("end_table",)], {"insert": {"t": []}, "delete": {}}),
    ],
)
def test_stream_shapes(calls: list[tuple[Any, ...]], expected: dict[str, Any]) -> None:
    sink = Sink()
    stream = s3o.JsonObjectStream(sink)
    for name, *args in calls:
        getattr(stream, name)(*args)
    stream.finish()
    assert json.loads(sink.data) == expected


def test_stream_refuses_nan_and_misuse() -> None:
    stream = s3o.JsonObjectStream(Sink())
    with pytest.raises(RuntimeError):
        stream.rows(['{"a":1}'])
    with pytest.raises(ValueError):
        s3o.JsonObjectStream(Sink()).deletes("t", [{"a": float("nan")}])
    stream.begin_table("t")
    with pytest.raises(RuntimeError):
        stream.begin_table("u")
    stream.end_table()
    with pytest.raises(RuntimeError):
        stream.begin_table("t")  # twice: a duplicate key
    stream.finish()
    with pytest.raises(RuntimeError):
        stream.finish()


def test_stream_into_a_multipart_object(
    s3_env: SeaweedS3, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 12 MB payload through S3Upload parses as the JSON Fivetran reads."""
    caplog.set_level(logging.DEBUG, logger="redshift_lambda")
    rows = [
        {"id": i, "note": f"row {i} ✓ " + "x" * 100, "amount": f"{i}.50"} for i in range(100_000)
    ]
    with s3o.S3Upload(s3o.s3_client(600), bucket, "payload.json") as upload:
        stream = s3o.JsonObjectStream(upload)
        stream.begin_table("orders")
        for start in range(0, len(rows), 7_000):
            stream.rows(s3_texts(rows[start : start + 7_000]))
        stream.end_table()
        stream.deletes("orders", [{"id": -1}])
        size = stream.finish()
        assert upload.complete() == size
        assert len(upload.parts) == -(-size // s3o.PART_BYTES) >= 2
    payload = json.loads(_object(s3_env, bucket, "payload.json"))
    assert payload == {"insert": {"orders": rows}, "delete": {"orders": [{"id": -1}]}}
    written = [r for r in caplog.records if "s3 object written" in r.getMessage()]
    assert len(written) == 1 and bucket in written[0].getMessage()


# -- template.yaml --------------------------------------------------------------------------------


def test_template_grants_exactly_the_s3_writes_when_a_bucket_is_given() -> None:
    from cfnlint.decode import cfn_yaml

    template = cfn_yaml.load(str(ROOT / "template.yaml"))
    parameter = template["Parameters"]["S3SyncBucket"]
    assert parameter["Default"] == ""
    assert template["Conditions"]["UseS3Sync"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "S3SyncBucket"}, ""]}]
    }
    policies = [
        (name, r)
        for name, r in template["Resources"].items()
        if r["Type"] == "AWS::IAM::RolePolicy" and "s3:" in json.dumps(r["Properties"])
    ]
    assert [name for name, _ in policies] == ["S3SyncWritePolicy", "KeyStorePolicy"]
    policy = policies[0][1]
    assert policy["Condition"] == "UseS3Sync"
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert sorted(statement["Action"]) == ["s3:AbortMultipartUpload", "s3:PutObject"]
    assert statement["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${S3SyncBucket}/*"}


def test_template_grants_the_key_store_only_its_prefix() -> None:
    """Issue 16: the key store's grants (read, write, delete under the prefix; list the bucket
    under it) exist only when KeyStoreBucket is given."""
    from cfnlint.decode import cfn_yaml

    template = cfn_yaml.load(str(ROOT / "template.yaml"))
    assert template["Parameters"]["KeyStoreBucket"]["Default"] == ""
    policy = template["Resources"]["KeyStorePolicy"]
    assert policy["Condition"] == "UseKeyStore"
    objects, listing = policy["Properties"]["PolicyDocument"]["Statement"]
    assert sorted(objects["Action"]) == ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
    assert objects["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:s3:::${KeyStoreBucket}/${KeyStorePrefix}/*"
    }
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": {"Fn::Sub": "${KeyStorePrefix}/*"}}}
