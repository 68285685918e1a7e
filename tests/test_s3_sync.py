"""Fivetran's sync through S3 (issue 10), end to end: the handler writes each batch to the
object the request names, on a real S3 server (SeaweedFS on loopback), and returns only the
state, schema and hasMore. Exact like the direct mode, far past 6 MB, with bounded memory, and
all or nothing: a failure leaves no object and no advanced state."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from typing import Any

import botocore.exceptions
import pytest
from helpers import ROOT, secrets_for
from s3server import SeaweedS3

import lambda_function as lf

sys.path.insert(0, str(ROOT / "scripts"))
from warehouse import Warehouse

MB = 1_000_000


@pytest.fixture
def s3_env(s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    for name, value in s3.aws_env().items():
        monkeypatch.setenv(name, value)
    return s3


def read_object(s3: SeaweedS3, bucket: str, key: str) -> dict[str, Any]:
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(body)  # strict JSON, as Fivetran reads it


def exists(s3: SeaweedS3, bucket: str, key: str) -> bool:
    try:
        s3.client().head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError:
        return False
    return True


def s3_sync(
    s3: SeaweedS3, secrets: dict[str, Any], state: dict[str, Any] | None = None, **kw: Any
) -> tuple[dict[str, Any], list[dict[str, Any]], list[int]]:
    """Invoke as Fivetran does in S3 mode until hasMore is false: (state, objects, sizes)."""
    bucket = kw.get("bucket") or s3.new_bucket()
    state = dict(state or {})
    objects, sizes = [], []
    for i in range(10_000):
        key = f"sync/{i:05d}.json"
        response = lf.lambda_handler(
            {"state": state, "secrets": secrets, "bucket": bucket, "file": key}, None
        )
        assert set(response) <= {"state", "schema", "hasMore", "softDelete"}, set(response)
        assert len(json.dumps(response)) <= lf.DEFAULT_MAX_RESPONSE_BYTES
        head = s3.client().head_object(Bucket=bucket, Key=key)
        sizes.append(head["ContentLength"])
        body = read_object(s3, bucket, key)
        assert set(body) == {"insert", "delete"}
        objects.append(
            {
                **body,
                "schema": response["schema"],
                **({"softDelete": response["softDelete"]} if "softDelete" in response else {}),
            }
        )
        state = response["state"]
        if not response["hasMore"]:
            return state, objects, sizes
    raise AssertionError("no end")


def test_a_table_far_past_6_mb_in_a_few_objects(pg, table_name, s3_env):
    """Issue 10: 200 MB through S3 in objects of at most s3_max_bytes, source = destination by
    checksum, ties in the cursor and all."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL, pad text)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, g / 1000, md5(g::text) || repeat('x', 950)"
        " FROM generate_series(1, 200000) g"
    )
    secrets = secrets_for(pg, table_name, s3_max_bytes=str(64 * 1024 * 1024))
    state, objects, sizes = s3_sync(s3_env, secrets)
    assert len(objects) in (4, 5) and sum(sizes) > 200 * MB  # ~20x fewer than direct mode
    assert max(sizes) <= 64 * 1024 * 1024 + 2 * MB
    digest, ids = hashlib.md5(usedforsecurity=False), []
    for body in objects:
        for row in body["insert"][table_name]:
            ids.append(row["id"])
    assert sorted(ids) == list(range(1, 200001)) and len(ids) == len(set(ids))
    rows = {r["id"]: r for body in objects for r in body["insert"][table_name]}
    for i in range(1, 200001):
        digest.update(f"{i}:{rows[i]['updated_at']}:{rows[i]['pad']};".encode())
    [[want]] = pg.execute(
        f"SELECT md5(string_agg(id || ':' || updated_at || ':' || pad, ';' ORDER BY id) || ';')"
        f" FROM {table_name}"
    )
    assert digest.hexdigest() == want
    assert state["tables"][table_name]["complete"] is True


def test_exact_like_direct_mode_with_several_tables_and_deletes(pg, table_name, s3_env):
    """Ties, composite keys, NULL cursors and a full-refresh table with deletes, through S3,
    applied to a destination that does what Fivetran does with the objects."""
    pg.execute(f"CREATE TABLE {table_name}_a (id int PRIMARY KEY, c int, v text)")
    pg.execute(
        f"INSERT INTO {table_name}_a SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE g % 3 END,"
        " repeat('v', g % 300) FROM generate_series(1, 3000) g"
    )
    pg.execute(f"CREATE TABLE {table_name}_b (k text, n int, PRIMARY KEY (k, n))")
    pg.execute(
        f"INSERT INTO {table_name}_b SELECT 'k' || (g % 5), g FROM generate_series(1, 500) g"
    )
    tables = [
        {"table": f"{table_name}_a", "cursor": "c", "destination": "a"},
        {"table": f"{table_name}_b", "destination": "b"},
    ]
    secrets = secrets_for(pg, "x", tables=json.dumps(tables), s3_max_bytes=str(1024 * 1024))
    for key in ("table", "cursor", "primary_key"):
        secrets.pop(key)
    with Warehouse() as wh:
        state, objects, _ = s3_sync(s3_env, secrets)
        for body in objects:
            wh.apply(body)
        assert wh.count("a") == 3000 and wh.count("b") == 500
        pg.execute(f"DELETE FROM {table_name}_b WHERE n % 10 = 0")
        pg.execute(f"UPDATE {table_name}_a SET c = 9, v = 'new' WHERE id = 5")
        state, objects, _ = s3_sync(s3_env, secrets, state)
        for body in objects:
            wh.apply(body)
        assert wh.count("b") == 450 and wh.count("b", deleted=True) == 500  # soft deletes
        assert any(body.get("softDelete") == ["b"] for body in objects)
        assert {r["id"]: r["v"] for r in wh.rows("a")}[5] == "new"


def test_a_failure_mid_upload_leaves_no_object_and_no_state(pg, table_name, s3_env, monkeypatch):
    """Permission denied, or S3 dying after some parts: a clear S3Error naming the bucket
    (never a credential), no object at the key, nothing returned (so Fivetran keeps the old
    state); the retry with the same request completes the sync."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL, p text)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, g, repeat('p', 1000) FROM generate_series(1, 40000) g"
    )
    secrets = secrets_for(pg, table_name)
    bucket = s3_env.new_bucket()
    request = {"state": {}, "secrets": secrets, "bucket": bucket, "file": "batch.json"}

    for name, value in s3_env.aws_env(reader=True).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(lf.S3Error) as err:
        lf.lambda_handler(request, None)
    assert bucket in str(err.value) and "s3:PutObject" in str(err.value)
    assert not any(k in str(err.value) for k in s3_env.secret_keys)
    assert not exists(s3_env, bucket, "batch.json")

    for name, value in s3_env.aws_env().items():
        monkeypatch.setenv(name, value)
    real_rows = lf.JsonObjectStream.rows

    def failing_rows(self: lf.JsonObjectStream, rows: Any) -> None:
        real_rows(self, rows)
        if self.bytes_written > 20 * MB:  # some parts are up: now the upload breaks
            raise lf.S3Error("injected: S3 went away")

    monkeypatch.setattr(lf.JsonObjectStream, "rows", failing_rows)
    with pytest.raises(lf.S3Error, match="injected"):
        lf.lambda_handler(request, None)
    assert not exists(s3_env, bucket, "batch.json")
    uploads = s3_env.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == []  # aborted, not left half-written

    monkeypatch.setattr(lf.JsonObjectStream, "rows", real_rows)
    response = lf.lambda_handler(request, None)  # Fivetran's retry: the same request
    body = read_object(s3_env, bucket, "batch.json")
    assert len(body["insert"][table_name]) == 40000 and response["hasMore"] is False


def test_memory_stays_bounded_while_a_100_mb_object_is_written(pg, table_name, s3_env):
    """Issue 10: rows go to S3 in parts as they are read; peak memory of the invocation stays
    far under 200 MB while it writes a 100 MB object (measured in a child process, by the
    kernel's peak resident size of that process, which starts afresh at exec)."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL, p text)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, g / 100, repeat(md5(g::text), 30)"
        " FROM generate_series(1, 110000) g"
    )
    bucket = s3_env.new_bucket()
    request = {
        "state": {},
        "secrets": secrets_for(pg, table_name),
        "bucket": bucket,
        "file": "big.json",
    }
    child = textwrap.dedent(
        """
        import json, sys
        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        sys.path.insert(0, sys.argv[1])
        import lambda_function as lf
        request = json.loads(sys.stdin.read())
        before = hwm()
        response = lf.lambda_handler(request, None)
        print(json.dumps({"before": before, "after": hwm(), "more": response["hasMore"]}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child, str(ROOT)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=300,
        check=True,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    size = s3_env.client().head_object(Bucket=bucket, Key="big.json")["ContentLength"]
    growth = figures["after"] - figures["before"]
    print(f"object {size / MB:.0f} MB, peak memory growth {growth / MB:.0f} MB")
    assert size > 100 * MB and figures["more"] is False
    assert growth < 200 * MB


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        ({"bucket": "b"}, r"'bucket' and 'file' must both be non-empty strings"),
        ({"bucket": "", "file": "k"}, r"'bucket' and 'file' must both be non-empty strings"),
        ({"bucket": 5, "file": "k"}, r"'bucket' and 'file' must both be non-empty strings"),
        (
            {"bucket": "my bucket", "file": "k"},
            r"^the request's 'bucket' 'my bucket' contains ' ', which a bucket name cannot "
            r"hold; expected an S3 bucket name as the Fivetran connector's S3 sync method "
            r"names it: 3 to 63 lower-case letters, digits, '\.' and '-'",
        ),
        (
            {"bucket": "s3://fivetran-sync/prefix", "file": "k"},
            r"^the request's 'bucket' 's3://fivetran-sync/prefix' looks like a URL",
        ),
        ({"bucket": "b/k", "file": "k"}, r"'bucket' 'b/k' contains '/' \(a bucket name has no"),
        ({"bucket": "ab", "file": "k"}, r"'bucket' 'ab' is 2 characters long; expected"),
        ({"bucket": "a\nb", "file": "k"}, r"'bucket' 'a\\nb' contains '\\n', which"),
        ({"bucket": "b" * 256, "file": "k"}, r"is 256 characters long; expected"),
        ({"bucket": "fivetran", "file": "k" * 1025}, r"'file' is 1025 bytes long; an S3 object"),
        ({"bucket": "fivetran", "file": "\ud800"}, r"'file' is not valid Unicode text"),
    ],
)
def test_a_malformed_s3_request_is_refused(pg, table_name, extra, pattern):
    """Issue 17 item 9: a malformed bucket name failed as "failed in the AWS SDK
    (ParamValidationError)", after connecting; now refused before, saying what is wrong."""
    request = {"state": {}, "secrets": secrets_for(pg, table_name), **extra}
    with pytest.raises(lf.ConfigurationError, match=pattern):
        lf.lambda_handler(request, None)


def test_a_bucket_s3_refuses_says_so_and_a_legacy_name_is_taken(pg, table_name, s3_env):
    """Issue 17 item 9: what passes the check and S3 still refuses is named, never "failed in
    the AWS SDK"; a name with capitals and '_' (us-east-1 buckets before 2018) is not refused
    before S3 answers."""
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int)")
    pg.execute(f"INSERT INTO {table_name} VALUES (1, 1)")
    request = {"state": {}, "secrets": secrets_for(pg, table_name), "file": "k.json"}
    with pytest.raises(lf.S3Error) as err:
        lf.lambda_handler({**request, "bucket": "Legacy_Bucket_" + table_name[-6:]}, None)
    assert "failed in the AWS SDK" not in str(err.value)
    assert re.match(
        r"S3 PutObject to bucket 'Legacy_Bucket_\w+' \(key 'k\.json'\): S3 refused the bucket "
        r"name \(InvalidBucketName, HTTP 400\); expected an S3 bucket name",
        str(err.value),
    ), str(err.value)


def test_s3_max_bytes_is_validated():
    base = {"host": "h", "dbname": "d", "user": "u", "password": "p", "table": "t", "cursor": "c"}
    assert lf.parse_config(base).s3_max_bytes == lf.DEFAULT_S3_MAX_BYTES
    with pytest.raises(lf.ConfigurationError, match=r"'s3_max_bytes' must be between"):
        lf.parse_config({**base, "s3_max_bytes": "1000"})


def test_the_batch_log_line_counts_rows_per_table_in_s3_mode(pg, table_name, s3_env, caplog):
    """Regression (issue 19, item 3): with several tables the batch line had no per-table
    counts; through S3 its row count comes from the object, so must the per-table ones."""
    other = f"{table_name}_b"
    pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, updated_at int NOT NULL)")
    pg.execute(f"INSERT INTO {table_name} SELECT g, g FROM generate_series(1, 30) g")
    pg.execute(f"CREATE TABLE {other} (code text PRIMARY KEY)")
    pg.execute(f"INSERT INTO {other} SELECT 'c' || g FROM generate_series(1, 7) g")
    tables = [{"table": table_name, "cursor": "updated_at", "primary_key": "id"}, other]
    secrets = secrets_for(pg, table_name)
    del secrets["table"], secrets["cursor"], secrets["primary_key"]
    secrets["tables"] = json.dumps(tables)
    caplog.set_level("INFO", logger=lf.logger.name)
    _, objects, _ = s3_sync(s3_env, secrets)
    lines = [json.loads(r.getMessage()) for r in caplog.records if '"batch"' in r.getMessage()]
    assert [line["table_rows"] for line in lines] == [
        {d: len(rows) for d, rows in o["insert"].items()} for o in objects
    ]
    assert sum(line["table_rows"].get(table_name, 0) for line in lines) == 30
    assert sum(line["table_rows"].get(other, 0) for line in lines) == 7
    assert all(line["rows"] == sum(line["table_rows"].values()) for line in lines)


def test_tie_groups_are_read_within_the_s3_read_bound(pg, table_name, s3_env, monkeypatch):
    """Regression (issue 17, item 4): syncing through S3, the rows that tie on (cursor, key)
    were read as one group capped at twice the object's budget (s3_max_bytes: hundreds of
    MB), so memory had no bound. A group read keeps at most what one page may
    (S3_READ_BYTES): a group within it is delivered whole, a larger one is refused, naming
    the bound."""
    monkeypatch.setattr(lf, "S3_READ_BYTES", 200_000)
    caps: list[int] = []
    fetch = lf.Source.fetch

    def recording(self: Any, sql: str, params: Any, max_bytes: int, reader: Any) -> Any:
        caps.append(max_bytes)
        return fetch(self, sql, params, max_bytes, reader)

    monkeypatch.setattr(lf.Source, "fetch", recording)
    pg.execute(f"CREATE TABLE {table_name} (id int, updated_at int NOT NULL, pad text)")
    pg.execute(
        f"INSERT INTO {table_name} SELECT g, g, repeat('x', 100) FROM generate_series(1, 3000) g"
    )
    # 300 rows with the same (updated_at, id): about 40 kB, within the bound.
    pg.execute(
        f"INSERT INTO {table_name} SELECT 5000, 5000, repeat('y', 100) || g"
        " FROM generate_series(1, 300) g"
    )
    secrets = secrets_for(pg, table_name)
    state, objects, _ = s3_sync(s3_env, secrets)
    rows = [r for body in objects for r in body["insert"][table_name]]
    assert len(rows) == 3300 and len({(r["id"], r["pad"]) for r in rows}) == 3300
    assert caps and max(caps) <= 200_000
    # 3,300 of them: about 400 kB, past the bound: refused, not read whole.
    pg.execute(
        f"INSERT INTO {table_name} SELECT 5000, 5000, repeat('z', 100) || g"
        " FROM generate_series(1, 3000) g"
    )
    pg.execute(f"UPDATE {table_name} SET updated_at = 6000 WHERE id = 5000")
    caps.clear()
    with pytest.raises(lf.SourceError, match="than fit in the 200000 bytes one read of the S3"):
        s3_sync(s3_env, secrets, state)
    assert max(caps) <= 200_000
