"""Full refresh at scale (issue 16), for bench/bench_full.py: what the state carries per key
type at 100,000 and 1,000,000 keys (with and without the S3 key store), the peak memory and the
invocations of a sync that finds millions of deletes, and the cost of hundreds of small tables
against one table of the same rows. Every figure comes from real invocations of
lambda_function.lambda_handler against a throwaway PostgreSQL and a loopback SeaweedFS."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from pgserver import PostgresServer
from s3server import SeaweedS3

import lambda_function as lf

KEY_KINDS = {
    "integer (dense)": "g",
    "integer (sparse)": "g * 7",
    "uuid": "md5(g::text)::uuid",
    "text ('SKU-0000001')": "'SKU-' || lpad(g::text, 7, '0')",
}
KEY_TYPES = {
    "integer (dense)": "bigint",
    "integer (sparse)": "bigint",
    "uuid": "uuid",
    "text ('SKU-0000001')": "text",
}


@dataclass
class SyncFigures:
    invocations: int = 0
    rows: int = 0
    deletes: int = 0
    max_state: int = 0
    last_state: int = 0
    max_entry: int = 0
    peak_rss_mb: float = 0.0
    seconds: float = 0.0
    refused: str = ""


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (Linux 4.0+)
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_sync(secrets: dict[str, Any], state: dict[str, Any]) -> tuple[SyncFigures, dict[str, Any]]:
    figures = SyncFigures()
    started = time.perf_counter()
    while True:
        _reset_peak()
        try:
            response = lf.lambda_handler({"state": state, "secrets": secrets}, None)
        except lf.ConnectorError as e:
            figures.refused = str(e)
            return figures, state
        figures.peak_rss_mb = max(figures.peak_rss_mb, _peak_rss_mb())
        figures.invocations += 1
        figures.rows += sum(map(len, response["insert"].values()))
        figures.deletes += sum(map(len, response.get("delete", {}).values()))
        state = response["state"]
        size = len(json.dumps(state))
        figures.max_state = max(figures.max_state, size)
        figures.max_entry = max(
            [figures.max_entry, *(len(json.dumps(e)) for e in state["tables"].values())]
        )
        figures.last_state = size
        if not response["hasMore"]:
            figures.seconds = time.perf_counter() - started
            return figures, state


def _secrets(server: PostgresServer, tables: list[dict[str, Any]], **extra: str) -> dict[str, Any]:
    from bench_full import secrets_for  # (this module is bench_full's)

    return secrets_for(server, {"tables": json.dumps(tables), **extra})


def state_figures(
    server: PostgresServer, bucket: str, sizes: list[int]
) -> list[tuple[str, int, SyncFigures, SyncFigures]]:
    """(kind, keys, with the key store, without) for every key kind and size."""
    out = []
    for n in sizes:
        for kind, expression in KEY_KINDS.items():
            table = f"scale_{abs(hash((kind, n))) % 10**8}"
            server.execute(f"DROP TABLE IF EXISTS {table}")
            server.execute(f"CREATE TABLE {table} (k {KEY_TYPES[kind]} PRIMARY KEY, v int)")
            server.execute(
                f"INSERT INTO {table} SELECT {expression}, g FROM generate_series(1, {n}) g"
            )
            spec = [{"table": table, "mode": "full"}]
            with_store, _ = run_sync(
                _secrets(server, spec, key_store=f"s3://{bucket}/scale/{table}"), {}
            )
            without, _ = run_sync(_secrets(server, spec), {})
            out.append((kind, n, with_store, without))
            server.execute(f"DROP TABLE {table}")
            print(
                f"state | {kind:<22} | {n:>9,} keys | store: {with_store.max_state:,} B max, "
                f"{with_store.invocations} calls | no store: "
                f"{'refused' if without.refused else f'{without.max_state:,} B'}",
                flush=True,
            )
    return out


def delete_figures(server: PostgresServer, bucket: str, n: int) -> tuple[SyncFigures, SyncFigures]:
    """A full table of ``n`` sparse integer keys synced, then every row deleted and synced."""
    server.execute("DROP TABLE IF EXISTS scale_deletes")
    server.execute("CREATE TABLE scale_deletes (id bigint PRIMARY KEY)")
    server.execute(f"INSERT INTO scale_deletes SELECT g * 2 FROM generate_series(1, {n}) g")
    secrets = _secrets(
        server, [{"table": "scale_deletes", "mode": "full"}], key_store=f"s3://{bucket}/deletes"
    )
    load, state = run_sync(secrets, {})
    server.execute("TRUNCATE scale_deletes")
    deletes, _ = run_sync(secrets, state)
    server.execute("DROP TABLE scale_deletes")
    print(
        f"deletes | {n:,} | load {load.invocations} calls, {load.peak_rss_mb:.0f} MB | deletes "
        f"{deletes.deletes:,} in {deletes.invocations} calls, {deletes.peak_rss_mb:.0f} MB peak, "
        f"{deletes.seconds:.1f} s",
        flush=True,
    )
    return load, deletes


def tables_figures(
    server: PostgresServer, tables: int, rows: int
) -> tuple[SyncFigures, SyncFigures]:
    """``tables`` full tables of ``rows`` rows against one table of tables x rows rows."""
    server.execute("DROP SCHEMA IF EXISTS scale_many CASCADE")
    server.execute("CREATE SCHEMA scale_many")
    server.execute(
        "DO $$ BEGIN FOR i IN 1.." + str(tables) + " LOOP EXECUTE format("
        "'CREATE TABLE scale_many.t%s (id int PRIMARY KEY, v text)', i); EXECUTE format("
        "'INSERT INTO scale_many.t%s SELECT g, ''value '' || g FROM generate_series(1, "
        + str(rows)
        + ") g', i); END LOOP; END $$"
    )
    server.execute("CREATE TABLE scale_one (id int PRIMARY KEY, v text)")
    server.execute(
        f"INSERT INTO scale_one SELECT g, 'value ' || g FROM generate_series(1, {tables * rows}) g"
    )
    many_secrets = _secrets(server, [], schema="scale_many")
    many_secrets.pop("tables")
    many, _ = run_sync(many_secrets, {})
    one, _ = run_sync(_secrets(server, [{"table": "scale_one", "mode": "full"}]), {})
    server.execute("DROP SCHEMA scale_many CASCADE")
    server.execute("DROP TABLE scale_one")
    print(
        f"tables | {tables} x {rows}: {many.seconds:.2f} s, {many.invocations} calls | one table "
        f"of {tables * rows:,}: {one.seconds:.2f} s | ratio {many.seconds / one.seconds:.2f}x",
        flush=True,
    )
    return many, one


def run_all(
    server: PostgresServer, sizes: list[int], deletes: int, tables: int, rows: int
) -> dict[str, Any]:
    with SeaweedS3() as s3:
        saved = {k: os.environ.get(k) for k in s3.aws_env()}
        os.environ.update(s3.aws_env())
        try:
            bucket = s3.new_bucket()
            return {
                "state": state_figures(server, bucket, sizes),
                "deletes": delete_figures(server, bucket, deletes),
                "tables": tables_figures(server, tables, rows),
                "sizes": sizes,
                "delete_rows": deletes,
                "table_shape": (tables, rows),
            }
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def report(figures: dict[str, Any]) -> list[str]:
    """Markdown lines of the scale figures."""
    out = [
        "### Full refresh at scale (issue 16)",
        "",
        "State bytes of a first full sync (largest state over its responses; the bound is "
        f"{lf.TABLE_STATE_MAX_BYTES:,} B per full table, {lf.CONNECTOR_STATE_MAX_BYTES:,} B per "
        "connector), with the S3 key store (SeaweedFS on loopback) and without:",
        "",
        "| key | keys | state, with key store | invocations | without key store |",
        "|---|---:|---:|---:|---|",
    ]
    for kind, n, with_store, without in figures["state"]:
        alone = (
            "refused up front (set key_store)"
            if without.refused
            else f"{without.max_state:,} B in the state"
        )
        out.append(
            f"| {kind} | {n:,} | {with_store.max_state:,} B (entry {with_store.max_entry:,} B) | "
            f"{with_store.invocations} | {alone} |"
        )
    load, deletes = figures["deletes"]
    n = figures["delete_rows"]
    out += [
        "",
        f"{n:,} deletes: a full table of {n:,} integer keys synced ({load.invocations} "
        f"invocations), then every row deleted and synced again: {deletes.deletes:,} deletes in "
        f"{deletes.invocations} invocations, {deletes.seconds:.1f} s, peak RSS of one "
        f"invocation {deletes.peak_rss_mb:.0f} MB (the load's: {load.peak_rss_mb:.0f} MB; "
        "VmHWM reset before each invocation, the whole Python process counted).",
    ]
    many, one = figures["tables"]
    tables, rows = figures["table_shape"]
    out += [
        "",
        f"{tables} full tables x {rows} rows in one schema selection: {many.seconds:.2f} s for "
        f"the first sync ({many.invocations} invocations); one table of {tables * rows:,} rows: "
        f"{one.seconds:.2f} s ({one.invocations} invocations): "
        f"**{many.seconds / one.seconds:.2f}x** (goal: within 2x; was 136 s against 2.3 s).",
        "",
    ]
    return out
