"""The benchmark scripts run (tiny settings) and print what they promise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_runs_tiny_on_cpu():
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_imagebind_huge.py"),
            "--tiny",
            "--dpc",
            "1,2",
            "--steps",
            "1",
            "--num-freqs",
            "256",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["preset"] == "imagebind_tiny" and report["device"] == "CPU"
    assert [row["dpc"] for row in report["rows"]] == [1, 2]
    assert all(row["seconds_per_class_step"] > 0 and row["peak_memory_gib"] > 0 for row in report["rows"])


@pytest.mark.slow
def test_condense_speed_quick_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "condense_speed.py"), "--quick", "--parts", "1,3", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)
