"""`killswitch demo` end to end: a real daemon subprocess against the simulator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_flattens_every_venue_and_prints_a_report() -> None:
    script = Path(sys.executable).parent / "killswitch"
    result = subprocess.run(
        [
            str(script),
            "demo",
            "--symbols",
            "4",
            "--orders-per-symbol",
            "5",
            "--latency-ms",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "RESULT: PASS" in out
    for label in ("binance/mm-1", "mexc/mm-2", "bingx/mm-1"):
        assert label in out
    assert "0 x 418" in out
    assert "all cancelled: yes" in out
