"""The README's first command works: scripts/demo.py copies a table exactly, then its changes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_full_and_incremental_sync_match():
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "demo.py"),
            "--rows",
            "3000",
            "--max-response-bytes",
            "60000",
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, f"stdout:\n{out}\nstderr:\n{result.stderr}"
    assert len(re.findall(r"^\s*MATCH$", out, re.M)) == 2, out  # full, then incremental
    assert "MISMATCH" not in out
    assert re.search(r"incremental sync delivered 5 rows: ids \[1, 1501, 3001, 3002, 3003\]", out)
    assert " batch " not in out  # --quiet
    assert "password=(hidden)" in out
    assert re.search(r"its directory .* was removed", out)
