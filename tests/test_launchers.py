"""The launchers the docs give really start 2 processes on a CPU machine, and ibdc says how many it sees."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_image, write_manifest

BIN = Path(sys.executable).parent
LAUNCHERS = {
    "accelerate --no_python ibdc": [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--no_python",
        str(BIN / "ibdc"),
    ],
    "accelerate -m ibdc_cli": [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "-m",
        "ibdc_cli",
    ],
    "torchrun -m ibdc_cli": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "ibdc_cli"],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_launcher_starts_two_processes(launcher, tmp_path):
    if not Path(LAUNCHERS[launcher][0]).exists() and shutil.which(LAUNCHERS[launcher][0]) is None:
        pytest.fail(f"{LAUNCHERS[launcher][0]} is not installed")
    rows = [{"image": write_image(tmp_path / f"i{k}.png", seed=k).name, "label": "ab"[k % 2]} for k in range(6)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    args = ["embed", str(manifest), "-m", "image", "--workers", "0", "--chunk-rows", "2", "--out", str(tmp_path / "s")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([*LAUNCHERS[launcher], *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr, result.stderr[-3000:]
    assert result.stdout.count("wrote") == 1 and (tmp_path / "s" / "index.json").exists()
