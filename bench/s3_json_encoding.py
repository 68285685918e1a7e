"""How to encode rows for the S3 payload: one json.dumps per row dict, or the row transcoder
generated for the column layout straight from DataRow messages (what the function does).

Not part of the test suite. Rows like the demo's orders table (8 columns: ints, text, decimal
text, timestamps, unicode, NULLs), 200,000 of them in pages of 5,000; prints ms and MB/s.

    .venv/bin/python bench/s3_json_encoding.py
"""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lambda_function as s3o

ROWS, PAGE, REPEATS = 200_000, 5_000, 5


class Sink:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)


def make_rows() -> list[dict[str, object]]:
    return [
        {
            "id": i,
            "customer_id": i % 9973,
            "status": ("new", "paid", "shipped", "cancelled")[i % 4],
            "amount": f"{i % 100_000}.{i % 100:02d}",
            "note": None if i % 7 == 0 else f"order {i} für Jürgen ✓",
            "created_at": f"2024-01-{1 + i % 28:02d}T10:{i % 60:02d}:00.123456",
            "updated_at": f"2024-03-{1 + i % 28:02d}T12:{i % 60:02d}:00Z",
            "is_gift": i % 11 == 0,
        }
        for i in range(ROWS)
    ]


def per_row(rows: list[dict[str, object]]) -> int:
    encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
    sink = Sink()
    stream = s3o.JsonObjectStream(sink)
    stream.begin_table("orders")
    for start in range(0, len(rows), PAGE):
        stream.rows([encode(row) for row in rows[start : start + PAGE]])
    stream.end_table()
    return stream.finish()


OIDS = [s3o.OID_INT8, s3o.OID_INT4, 25, s3o.OID_NUMERIC, 25, s3o.OID_TIMESTAMP]
OIDS += [s3o.OID_TIMESTAMPTZ, s3o.OID_BOOL]


def data_rows(rows: list[dict[str, object]]) -> list[bytes]:
    """The rows as the server sends them: DataRow payloads of their text forms."""
    out = []
    for row in rows:
        texts = [
            None if v is None else ("t" if v else "f") if isinstance(v, bool) else str(v)
            for v in row.values()
        ]
        texts[5] = str(texts[5]).replace("T", " ")
        texts[6] = str(texts[6]).replace("T", " ").replace("Z", "+00")
        payload = bytearray(struct.pack("!h", len(texts)))
        for text in texts:
            raw = None if text is None else text.encode()
            payload += struct.pack("!i", -1) if raw is None else struct.pack("!i", len(raw)) + raw
        out.append(bytes(payload))
    return out


def transcoded(messages: list[bytes], names: list[str]) -> int:
    transcode = s3o.row_transcoder(OIDS, names, s3o.S3_JSON)
    sink = Sink()
    stream = s3o.JsonObjectStream(sink)
    stream.begin_table("orders")
    for start in range(0, len(messages), PAGE):
        stream.rows([transcode(m) for m in messages[start : start + PAGE]])
    stream.end_table()
    return stream.finish()


def per_row_dumps(rows: list[dict[str, object]]) -> int:
    """json.dumps(row, ...) called as a function each time (keyword parsing every call)."""
    sink = Sink()
    stream = s3o.JsonObjectStream(sink)
    stream.begin_table("orders")
    for start in range(0, len(rows), PAGE):
        stream.rows(
            [
                json.dumps(row, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
                for row in rows[start : start + PAGE]
            ]
        )
    stream.end_table()
    return stream.finish()


def main() -> None:
    rows = make_rows()
    messages, names = data_rows(rows), list(rows[0])
    for name, func in (
        ("per row, json.dumps(row, ...)", per_row_dumps),
        ("per row, a JSONEncoder's encode", per_row),
        ("DataRow -> row_transcoder", lambda _: transcoded(messages, names)),
    ):
        best, size = float("inf"), 0
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            size = func(rows)
            best = min(best, time.perf_counter() - t0)
        print(
            f"{name:40s} {best * 1000:7.1f} ms  {size / best / 1e6:6.1f} MB/s  "
            f"{ROWS / best / 1e3:6.0f} k rows/s  ({size} bytes)"
        )


if __name__ == "__main__":
    main()
