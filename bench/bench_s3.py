"""Direct sync against sync through S3: the same table, both ways, in the same run.

Usage: python bench/bench_s3.py [--mb N] [--quick] [--write]

Builds bench/bench.py's table (about N MB of rows as JSON; default 1,000 MB) on a throwaway
PostgreSQL (tests/pgserver.py), starts a SeaweedFS S3 server on loopback (tests/s3server.py),
and copies the table twice through lambda_function.lambda_handler, invoked in-process as
Fivetran invokes it: in the direct way (5.5 MB responses) and through S3 (each request names
a bucket and an object key; default s3_max_bytes, 256 MiB). The two syncs run interleaved in
time, so a busy moment of a shared machine slows both alike. Every row of both is checked:
each id exactly once (the S3 objects read back and parsed as strict JSON). The largest S3
invocation is then run again in a fresh child process, whose peak resident memory (VmHWM in
/proc/self/status, which starts afresh at exec) is its memory figure. Prints the figures; with
--write also rewrites the S3 section of BENCHMARKS.md. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.dont_write_bytecode = True  # leave no __pycache__ in the checkout
for _path in (ROOT, ROOT / "tests", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from pgserver import PostgresServer  # noqa: E402
from s3server import SeaweedS3  # noqa: E402

import bench  # noqa: E402
import lambda_function as lf  # noqa: E402

MB = 1_000_000
DEFAULT_MB = 1_000
QUICK_MB = 30
TARGET_MB = 1_000  # the table: 1 GB
JSON_BYTES_PER_ROW = 173  # bench.py's table in a direct response (json.dumps), measured
TARGET_INVOCATION_RATIO = 20.0
TARGET_SPEED_RATIO = 1.0
MARK_START = "<!-- s3-figures:start -->"
MARK_END = "<!-- s3-figures:end -->"

INTRO = """## Direct sync against sync through S3

`bench/bench_s3.py` copies bench.py's table (about 1 GB of rows as JSON by default) twice in
one run, through `lambda_handler` invoked in-process as Fivetran invokes it: in the direct way
(responses of up to `max_response_bytes`, 5.5 MB) and through S3 (each request carries `bucket`
and `file`; default `s3_max_bytes`, 256 MiB), against a SeaweedFS S3 server on loopback that
the script starts (`tests/s3server.py`) and a throwaway PostgreSQL (`tests/pgserver.py`). Not
part of the test suite.

```
.venv/bin/python bench/bench_s3.py           # 1,000 MB of rows, about 3 minutes on 2 cores; prints
.venv/bin/python bench/bench_s3.py --quick   # 30 MB, a smoke run
.venv/bin/python bench/bench_s3.py --write   # also rewrites the section below
```

The two syncs run interleaved (one S3 invocation, then direct invocations until they have
delivered as many rows), so load from other processes falls on both. Direct mode's time is the
handler's, with the Lambda runtime's `json.dumps` of each response reported apart (in Lambda
that serialisation is part of every invocation; in S3 mode the function writes its own JSON and
the upload, both inside the handler's time). Every row of both syncs is checked: each id exactly
once, the S3 objects read back and parsed as strict JSON. The largest S3 invocation is then run
again from its state in a fresh child process; its memory figure is that process's `VmHWM`
(peak resident set, which restarts at exec; `ru_maxrss` would carry the parent's peak). The
S3 server runs on the same 2 CPUs as the database and the function, on loopback: a real S3 is
further away but does not take the function's CPU.
"""

CHILD = textwrap.dedent(
    r"""
    import json, sys, time
    sys.dont_write_bytecode = True
    def hwm_kb():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    start = hwm_kb()
    sys.path.insert(0, sys.argv[1])
    import lambda_function as lf
    import boto3  # imported by the handler in S3 mode: counted apart from the batch
    imported = hwm_kb()
    request = json.loads(sys.stdin.read())
    t0 = time.perf_counter()
    response = lf.run_invocation(request, time_left_ms=900000)
    seconds = time.perf_counter() - t0
    print(json.dumps({"start_kb": start, "import_kb": imported, "peak_kb": hwm_kb(),
                      "seconds": seconds, "has_more": response["hasMore"]}))
    """
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class S3Timer:
    """Time spent in the function's S3 API calls (S3Upload._call: parts, PutObject, complete)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._real = lf.S3Upload._call

    def __enter__(self) -> S3Timer:
        real, timer = self._real, self

        def timed(upload: Any, action: str, method: str, **params: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return real(upload, action, method, **params)
            finally:
                timer.seconds += time.perf_counter() - t0
                timer.calls += 1

        lf.S3Upload._call = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        lf.S3Upload._call = self._real  # type: ignore[method-assign]


@dataclass
class Call:
    rows: int
    bytes: int
    seconds: float
    serialise_s: float = 0.0
    state_in: dict[str, Any] = field(default_factory=dict)
    s3_api_s: float = 0.0  # of seconds: in the S3 API calls
    server_cpu_s: float = 0.0  # CPU the S3 server used meanwhile (same machine)


@dataclass
class Sync:
    name: str
    calls: list[Call] = field(default_factory=list)
    duplicates: int = 0
    unique: int = 0
    check_s: float = 0.0

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.calls)

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.calls)

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.calls)

    @property
    def serialise_s(self) -> float:
        return sum(c.serialise_s for c in self.calls)

    def rows_per_s(self, *, with_serialise: bool = False) -> float:
        s = self.seconds + (self.serialise_s if with_serialise else 0.0)
        return self.rows / s if s > 0 else math.nan


def direct_calls(server: PostgresServer, seen: bytearray, sync: Sync) -> Iterator[None]:
    """Fivetran's direct method: invoke, feed the state back while hasMore."""
    secrets = bench.secrets_for(server)
    state: dict[str, Any] = {}
    context = bench.FakeContext()
    while True:
        request = {"sync_id": "bench-direct", "state": state, "secrets": secrets}
        # As under the Lambda runtime: the handler returns the document as bytes, which the
        # runtime sends unchanged (nothing left to serialise).
        os.environ[lf.RETURN_BYTES_ENV] = "true"
        t0 = time.perf_counter()
        document = lf.lambda_handler(request, context)
        seconds = time.perf_counter() - t0
        del os.environ[lf.RETURN_BYTES_ENV]
        assert isinstance(document, bytes)
        size, serialise_s = len(document), 0.0
        response = json.loads(document)  # for the checks only, outside the timing
        del document
        batch = response["insert"].get(bench.TABLE, [])
        t0 = time.perf_counter()
        sync.duplicates += bench.mark_ids(seen, batch)
        sync.check_s += time.perf_counter() - t0
        sync.calls.append(Call(len(batch), size, seconds, serialise_s))
        state = response["state"]
        more = response["hasMore"]
        del response, batch
        yield
        if not more:
            return


def s3_calls(
    server: PostgresServer, s3: SeaweedS3, bucket: str, seen: bytearray, sync: Sync
) -> Iterator[None]:
    """Fivetran's S3 method: each request names an object; the rows are read back to check."""
    secrets = bench.secrets_for(server)
    client = s3.client()
    state: dict[str, Any] = {}
    context = bench.FakeContext()
    for i in range(100_000):
        key = f"sync/{i:05d}.json"
        request = {
            "sync_id": "bench-s3",
            "state": state,
            "secrets": secrets,
            "bucket": bucket,
            "file": key,
        }
        cpu0 = cpu_seconds(s3.process.pid) if s3.process else math.nan
        with S3Timer() as timer:
            t0 = time.perf_counter()
            response = lf.lambda_handler(request, context)
            seconds = time.perf_counter() - t0
        server_cpu = (cpu_seconds(s3.process.pid) if s3.process else math.nan) - cpu0
        t0 = time.perf_counter()
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        size = len(body)
        batch = json.loads(body)["insert"].get(bench.TABLE, [])
        del body
        sync.duplicates += bench.mark_ids(seen, batch)
        client.delete_object(Bucket=bucket, Key=key)  # keep the server's disk small
        sync.check_s += time.perf_counter() - t0
        sync.calls.append(
            Call(
                len(batch),
                size,
                seconds,
                state_in=state,
                s3_api_s=timer.seconds,
                server_cpu_s=server_cpu,
            )
        )
        print(
            f"  s3 call {i + 1}: {len(batch):,} rows, {size / MB:.1f} MB, {seconds:.2f} s",
            flush=True,
        )
        state = response["state"]
        more = response["hasMore"]
        del response, batch
        yield
        if not more:
            return


def measure_memory(request: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=900,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _result(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def build_report(
    *,
    target_mb: float,
    machine: list[str],
    direct: Sync,
    s3: Sync,
    table_rows: int,
    memory: dict[str, Any] | None,
    largest: Call,
    wall_s: float,
) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    d_rate = direct.rows_per_s()
    d_rate_ser = direct.rows_per_s(with_serialise=True)
    s_rate = s3.rows_per_s()
    inv_ratio = len(direct.calls) / len(s3.calls)
    exact = direct.unique == s3.unique == table_rows and direct.duplicates == s3.duplicates == 0
    # Scaled to 1 GB (the direct responses' JSON bytes): invocations grow linearly with size.
    scale = TARGET_MB * MB / direct.bytes
    full_direct = [c for c in direct.calls[:-1]] or direct.calls
    full_s3 = [c for c in s3.calls[:-1]] or s3.calls
    per_direct = sum(c.bytes for c in full_direct) / len(full_direct)
    s3_bytes_total = s3.bytes * scale
    per_s3 = max(c.bytes for c in full_s3) if len(s3.calls) > 1 else lf.DEFAULT_S3_MAX_BYTES
    gb_direct = math.ceil(TARGET_MB * MB / per_direct)
    gb_s3 = math.ceil(s3_bytes_total / per_s3)
    measured_gb = direct.bytes >= 0.95 * TARGET_MB * MB
    out = [
        f"### Figures ({table_rows:,} rows, {direct.bytes / MB:,.0f} MB as direct JSON, {stamp})",
        "",
        *[f"- {line}" for line in machine],
        f"- Benchmark wall time: {wall_s:.0f} s (table build, both syncs, the checks, the "
        "memory run)",
        "",
        "| Figure | Value | Target | Result |",
        "|---|---|---|---|",
        f"| Rows delivered exactly once | direct {direct.unique:,}, S3 {s3.unique:,} of "
        f"{table_rows:,} (duplicates: {direct.duplicates}, {s3.duplicates}) | all | "
        f"{_result(exact)} |",
    ]
    if measured_gb:
        out.append(
            f"| Invocations, direct / S3 | {len(direct.calls)} / {len(s3.calls)} = "
            f"{inv_ratio:.1f}x fewer (measured, {direct.bytes / MB:,.0f} MB) | >= 20x for 1 GB "
            f"| {_result(inv_ratio >= TARGET_INVOCATION_RATIO)} |"
        )
    else:
        out += [
            f"| Invocations, direct / S3 (measured) | {len(direct.calls)} / {len(s3.calls)} = "
            f"{inv_ratio:.1f}x fewer ({direct.bytes / MB:,.0f} MB) | — | — |",
            f"| Invocations for 1 GB (extrapolated, linear) | {gb_direct:,} / {gb_s3:,} = "
            f"{gb_direct / gb_s3:.1f}x fewer (direct {per_direct / MB:.2f} MB per call, S3 "
            f"{per_s3 / MB:.0f} MB per object) | >= 20x | "
            f"{_result(gb_direct / gb_s3 >= TARGET_INVOCATION_RATIO)} (extrapolated) |",
        ]
    out += [
        f"| Throughput, S3 / direct (handler time) | {s_rate / d_rate:.2f}x ({s_rate:,.0f} vs "
        f"{d_rate:,.0f} rows/s) | >= 1.0x | {_result(s_rate / d_rate >= TARGET_SPEED_RATIO)} |",
        f"| Throughput, S3 / direct with the runtime's json.dumps | {s_rate / d_rate_ser:.2f}x "
        f"({s_rate:,.0f} vs {d_rate_ser:,.0f} rows/s) | — | — |",
    ]
    if memory is not None:
        peak = memory["peak_kb"] / 1024
        out.append(
            f"| Peak RSS (VmHWM) of the largest S3 invocation, fresh process | {peak:.0f} MB "
            f"({largest.rows:,} rows, {largest.bytes / MB:.1f} MB object; "
            f"{memory['import_kb'] / 1024:.0f} MB after importing lambda_function and boto3; "
            f"{memory['seconds']:.1f} s) | — | — |"
        )
    out += [
        "",
        "| Sync | Invocations | Rows | JSON bytes | Largest response / object | Handler s | "
        "json.dumps s | Rows/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| direct | {len(direct.calls)} | {direct.rows:,} | {direct.bytes:,} | "
        f"{max(c.bytes for c in direct.calls):,} | {direct.seconds:.1f} | "
        f"{direct.serialise_s:.1f} | {d_rate:,.0f} ({d_rate_ser:,.0f} with json.dumps) |",
        f"| S3 | {len(s3.calls)} | {s3.rows:,} | {s3.bytes:,} | "
        f"{max(c.bytes for c in s3.calls):,} | {s3.seconds:.1f} | — | {s_rate:,.0f} |",
        "",
        f"Inside the S3 sync's {s3.seconds:.1f} s: {sum(c.s3_api_s for c in s3.calls):.1f} s in "
        "the S3 API calls (parts of 8 MiB, PutObject, CompleteMultipartUpload); meanwhile the "
        f"loopback S3 server (SeaweedFS) used {sum(c.server_cpu_s for c in s3.calls):.1f} s of "
        "CPU on the same 2 cores.",
        "",
        "S3 objects are compact JSON (no spaces), so they are smaller than the direct responses "
        "for the same rows. S3 invocations: "
        + ", ".join(
            f"{c.rows:,} rows / {c.bytes / MB:.1f} MB / {c.seconds:.1f} s" for c in s3.calls
        )
        + ".",
        "",
    ]
    return "\n".join(out)


def write_section(path: Path, figures: str) -> None:
    """Replace this script's section of BENCHMARKS.md (append it, with its intro, if missing)."""
    bench.write_section(
        path, figures, start=MARK_START, end=MARK_END, intro=INTRO, new_file="# Benchmarks\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/bench_s3.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--mb", type=float, default=DEFAULT_MB, help=f"MB of rows as JSON (default {DEFAULT_MB})"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MB} MB: a smoke run")
    parser.add_argument(
        "--output", type=Path, default=bench.BENCHMARKS_MD, help="file --write updates"
    )
    parser.add_argument("--write", action="store_true", help="also rewrite BENCHMARKS.md")
    args = parser.parse_args(argv)
    target_mb = QUICK_MB if args.quick else args.mb
    rows = max(1, int(target_mb * MB / JSON_BYTES_PER_ROW))

    started = time.perf_counter()
    with PostgresServer(name="bench-s3") as server, SeaweedS3() as s3:
        t0 = time.perf_counter()
        bench.build_table(server, rows)
        print(f"table {bench.TABLE}: {rows:,} rows in {time.perf_counter() - t0:.1f} s", flush=True)
        machine = bench.machine_description(server)
        load_start = os.getloadavg()[0]
        os.environ.update(s3.aws_env())
        bucket = s3.new_bucket()

        direct, via_s3 = Sync("direct"), Sync("s3")
        seen_direct, seen_s3 = bytearray(rows + 1), bytearray(rows + 1)
        d_steps = direct_calls(server, seen_direct, direct)
        d_done = False
        for _ in s3_calls(server, s3, bucket, seen_s3, via_s3):
            while not d_done and direct.rows <= via_s3.rows:
                d_done = next(d_steps, "end") == "end"
            print(f"  direct: {len(direct.calls)} calls, {direct.rows:,} rows", flush=True)
        for _ in d_steps:
            pass
        direct.unique, via_s3.unique = sum(seen_direct), sum(seen_s3)
        del seen_direct, seen_s3

        candidates = via_s3.calls[:-1] or via_s3.calls
        largest = max(candidates, key=lambda c: c.bytes)
        request = {
            "state": largest.state_in,
            "secrets": bench.secrets_for(server),
            "bucket": bucket,
            "file": "memory/probe.json",
        }
        memory = measure_memory(request, s3.aws_env())
        print(f"memory: {memory}", flush=True)
    machine.append(
        f"Load average (1 min): {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the "
        f"end, on {os.cpu_count()} CPUs (other processes add noise; both syncs ran interleaved)"
    )
    report = build_report(
        target_mb=target_mb,
        machine=machine,
        direct=direct,
        s3=via_s3,
        table_rows=rows,
        memory=memory,
        largest=largest,
        wall_s=time.perf_counter() - started,
    )
    bench.print_report(report, args.output, write=args.write, writer=write_section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
