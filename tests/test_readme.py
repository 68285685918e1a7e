"""The README stays true: every setting the code reads is documented, and nothing else is."""

from __future__ import annotations

import re

from helpers import ROOT

import lambda_function as lf

README = (ROOT / "README.md").read_text(encoding="utf-8")


def documented_settings() -> list[str]:
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.M)


def test_every_setting_is_in_the_configuration_table_and_only_those():
    assert sorted(documented_settings()) == sorted(lf.SETTINGS)


def test_every_setting_the_code_reads_is_declared():
    source = (ROOT / "lambda_function.py").read_text(encoding="utf-8")
    read = set(re.findall(r'secrets(?:\.get\(|, )"([a-z0-9_]+)"', source))
    read |= set(re.findall(r'_setting\(\s*secrets,\s*"([a-z0-9_]+)"', source))
    assert read and read <= set(lf.SETTINGS), read - set(lf.SETTINGS)


def test_documented_defaults_match_the_code():
    rows = {
        m[0]: m[1] for m in re.findall(r"^\| `([a-z_]+)` \|[^|]*\| `?([^|`]*)`? \|", README, re.M)
    }
    assert rows["port"] == str(lf.DEFAULT_PORT)
    assert rows["limit"] == str(lf.DEFAULT_LIMIT)
    assert rows["max_response_bytes"] == str(lf.DEFAULT_MAX_RESPONSE_BYTES)
    assert rows["sslmode"] == lf.DEFAULT_SSLMODE
    assert rows["connect_timeout_s"] == str(int(lf.DEFAULT_CONNECT_TIMEOUT_S))


def test_quick_start_has_exactly_the_two_commands():
    quick = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["./demo.sh", "./test.sh"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "./test.sh" in ci
