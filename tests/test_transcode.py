"""The row transcoders (issue 18): a DataRow's bytes straight to a row's JSON text, generated
per column layout from the codec table, must write exactly what the general path (each
codec's ``decode``, then the output's JSON encoder) writes, for every type, in both styles."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

import lambda_function as lf

UNKNOWN_OID = 99_999  # a type no codec names (an enum, SUPER...): the server's text

# The server's text of each type, as the pinned session writes it (extra_float_digits=2,
# DateStyle ISO, UTC, bytea hex), with the special values.
SAMPLES: dict[int, list[str]] = {
    lf.OID_BOOL: ["t", "f"],
    lf.OID_INT2: ["0", "-32768"],
    lf.OID_INT4: ["2147483647"],
    lf.OID_INT8: ["-9223372036854775808", "1"],
    lf.OID_OID: ["4294967295"],
    lf.OID_FLOAT4: ["1.5", "-0", "NaN", "Infinity", "3.4028235e+38", "1e-45"],
    lf.OID_FLOAT8: ["0.10000000000000001", "-Infinity", "1e+300", "2.5", "5e-324"],
    lf.OID_NUMERIC: ["12.30", "NaN", "-0.0001", "123456789012345678901234567890.5"],
    lf.OID_TIMESTAMP: [
        "2024-01-02 03:04:05.123456",
        "infinity",
        "-infinity",
        "0044-03-15 12:00:00 BC",
        "10000-01-01 00:00:00",
    ],
    lf.OID_TIMESTAMPTZ: [
        "2024-01-02 03:04:05+00",
        "2024-01-02 03:04:05.5+00",
        "infinity",
        "0044-03-15 12:00:00+00 BC",
        "10000-01-01 00:00:00+00",
        "2024-01-02 03:04:05+05:30",
    ],
    lf.OID_DATE: ["2024-01-02", "infinity", "0044-03-15 BC"],
    1083: ["03:04:05.123"],
    2950: ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
    lf.OID_INTERVAL: ["1 day 02:00:00", "-00:00:01"],
    lf.OID_BYTEA: ["\\x", "\\x00ff10", "abc"],
    lf.OID_JSON: [
        '{"a": [1, 2.5, null, "é"]}',
        "1e400",
        "[1.0000000000000001, 0.1]",
        '{"k": "\\ud800"}',
        "12345678901234567890123",
        '"x"',
    ],
    lf.OID_JSONB: ['{"a": {"b": [true, {}]}}', "-0.0"],
    # Past 127 bytes a length header has bytes >= 0x80: the ASCII fast path must not be
    # fooled by them (nor by a NULL's -1).
    25: ['ü€😀\n"\\\x7f', "", "a%sb%%", "plain", "é" * 100, "x" * 300 + "ü", "y" * 40_000],
    1043: ["varchar é"],
    UNKNOWN_OID: ["{1,2}", "happy"],
}
NAMES = ["id", 'quo"te', "k\u00e9y", "per%cent", "z"]


def data_row(texts: list[str | None]) -> bytes:
    out = bytearray(struct.pack("!h", len(texts)))
    for text in texts:
        if text is None:
            out += struct.pack("!i", -1)
        else:
            raw = text.encode("utf-8")
            out += struct.pack("!i", len(raw)) + raw
    return bytes(out)


def general_path(oids: list[int], names: list[str], texts: list[str | None], style: Any) -> str:
    values = [
        None if t is None else lf.codec(o).decode(t) for o, t in zip(oids, texts, strict=True)
    ]
    return style.encode(dict(zip(names, values, strict=True)))


STYLES = [lf.LAMBDA_JSON, lf.S3_JSON]


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.name)
@pytest.mark.parametrize("oid", list(SAMPLES))
def test_each_codec_transcodes_as_the_general_path(oid: int, style: Any) -> None:
    oids = [lf.OID_INT8, oid, oid]
    names = NAMES[:3]
    transcode = lf.row_transcoder(oids, names, style)
    for text in [*SAMPLES[oid], None]:
        texts = ["7", text, text]
        got = transcode(data_row(texts))
        assert got == general_path(oids, names, texts, style), text
        assert style.size(got) == len(got.encode("utf-8", "backslashreplace"))
        json.loads(got)  # strict JSON


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.name)
def test_a_wide_layout_of_every_type_with_nulls(style: Any) -> None:
    oids = list(SAMPLES)
    names = [f"c{i}" if i >= len(NAMES) else NAMES[i] for i in range(len(oids))]
    transcode = lf.row_transcoder(oids, names, style)
    for n in range(6):
        texts: list[str | None] = [
            None if (i + n) % 5 == 0 else SAMPLES[o][(i + n) % len(SAMPLES[o])]
            for i, o in enumerate(oids)
        ]
        got = transcode(data_row(texts))
        assert got == general_path(oids, names, texts, style)
        assert style.size(got) == len(got.encode("utf-8", "backslashreplace"))
    if style is lf.LAMBDA_JSON:
        assert got.isascii()  # as json.dumps writes it (ensure_ascii)


def test_a_codec_added_to_the_table_plugs_into_the_transcoders(monkeypatch: Any) -> None:
    """A codec declared with a decoder only (as a new Redshift type would be) is transcoded
    through it; one with a ``json`` expression, through that."""
    monkeypatch.setitem(lf.CODECS, 88_001, lf.Codec(decode=lambda t: {"wrapped": t}))
    monkeypatch.setitem(lf.CODECS, 88_002, lf.Codec(json="'\"' + v.upper() + '\"'"))
    monkeypatch.setattr(lf, "_transcoders", {})
    transcode = lf.row_transcoder([88_001, 88_002], ["a", "b"], lf.LAMBDA_JSON)
    assert transcode(data_row(["x", "y"])) == '{"a": {"wrapped": "x"}, "b": "Y"}'


def test_row_decoder_is_the_general_path() -> None:
    oids = [lf.OID_INT8, lf.OID_TIMESTAMPTZ, 25, UNKNOWN_OID]
    row = lf.row_decoder(oids)(data_row(["1", "2024-01-02 03:04:05+00", None, "é"]))
    assert row == [1, "2024-01-02T03:04:05Z", None, "é"]
