"""The benchmark scripts run (tiny settings) and print what they promise."""

from __future__ import annotations

import json
import os
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
    assert [row["modality"] for row in report["embed"]] == ["image", "audio", "text"]
    assert all(row["rows_per_second"] > 0 for row in report["embed"])


@pytest.mark.slow
def test_paper_table_quick_runs_and_renders(tmp_path):
    """The paper-table script end to end on tiny settings: every method and ablation row, then --render."""
    out = tmp_path / "table.json"
    env = {**os.environ, "IBDC_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "paper_table.py"), "--quick"]
    command += ["--parts", "methods,ablation,spaces"]
    command += ["--encoders", "random", "--dpcs", "1", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    entry = report["encoders"]["random"]
    assert set(entry["methods"]["rows"]) == {"random", "herding", "kcenter", "dm", "avdd", "imagebinddc"}
    assert all(0 <= row["1"]["mean"] <= 100 and row["1"]["seconds"] > 0 for row in entry["methods"]["rows"].values())
    assert 0 < entry["methods"]["whole"]["mean"] <= 100 and len(entry["ablation"]["rows"]) >= 10
    assert len(entry["spaces"]["rows"]) == 12 and "imagebinddc, --space-map center" in entry["spaces"]["rows"]
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "paper_table.py"), "--render", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rendered.returncode == 0 and "| imagebinddc |" in rendered.stdout and "whole data" in rendered.stdout
    assert "| dm, --space-map none |" in rendered.stdout


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


def test_prototype_locations_scores_the_mean_and_kernel_modes(digits, tmp_path):
    """The DPC 1 analysis script: at a tiny sigma the kernel mode is the mean, so both score the same."""
    out = tmp_path / "locations.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "prototype_locations.py")]
    command += ["--train", str(digits["train"]), "--test", str(digits["test"]), "--space-maps", "whiten,none"]
    command += ["--sigmas", "0.01,2", "--seeds", "1", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["space_map"] for row in rows] == ["whiten", "none"]
    for row in rows:
        assert row["mode σ=0.01"] == pytest.approx(row["mean (dm)"], abs=1.0)
        assert all(0 <= row[k] <= 100 for k in ("mean (dm)", "mode σ=0.01", "mode σ=2"))
    assert "| whiten |" in result.stdout
