"""Memory of `ibdc condense` is bounded by what it condenses, not by the store: a ceiling on a scaled-down
shape (benchmarks/scale.py measures the real one). Peaks are the ones the set records per process
(`peak_memory_mib_per_process`: each process's high-water RSS), above a run on a tiny store that loads
the same code; no timing is asserted.

What the ceilings would have caught: the whole store loaded by every process; the space map's fit making
float64 copies of every row (LedoitWolf on the centred [N, D] matrix); `Store.load` concatenating its
shards into a second copy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ibdc_cli.store import load_synthetic_set, write_store

pytestmark = pytest.mark.slow

DIM = 768
QUICK = ["--dpc", "2", "--iterations", "1", "--num-freqs", "64", "--freq-bank", "2", "--device", "cpu"]


def _store(path: Path, classes: int, rows: int) -> float:
    """A class-structured store of `classes` x `rows` rows (audio + image, D = 768); its data in MiB."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(rows)
    labels = labels[torch.randperm(len(labels), generator=g)]
    embeddings = {
        m: F.normalize(
            torch.randn(classes, DIM, generator=g)[labels] + torch.randn(len(labels), DIM, generator=g), dim=-1
        )
        for m in ("audio", "image")
    }
    write_store(path, embeddings, labels, shard_rows=2048, encoder={"preset": "synthetic", "weights": "synthetic"})
    return 2 * len(labels) * DIM * 4 / 2**20


def _peaks(store: Path, out: Path, processes: int = 1) -> list[float]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command = [*launcher, "-m", "ibdc_cli", "condense", str(store), "-m", "audio,image", *QUICK, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_synthetic_set(out)[1]["peak_memory_mib_per_process"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    tiny, large = root / "tiny", root / "large"
    _store(tiny, 2, 20)
    data_mib = _store(large, 60, 400)  # 24,000 rows: 141 MiB of embeddings
    baseline = _peaks(tiny, root / "tiny.safetensors")[0]
    return {"tiny": tiny, "large": large, "data_mib": data_mib, "baseline": baseline, "root": root}


def test_one_process_holds_the_data_once_plus_a_shard(stores):
    peak = _peaks(stores["large"], stores["root"] / "one.safetensors")[0]
    extra = peak - stores["baseline"]
    # the rows once, in the condensation space, plus one shard's temporaries; the old fit alone added
    # three float64 copies of a modality (x.double(), the centred matrix, sklearn's squares)
    assert extra < 1.4 * stores["data_mib"], f"{extra:.0f} MiB above the tiny run for {stores['data_mib']:.0f} MiB"


def test_each_of_two_processes_holds_only_its_own_classes(stores):
    peaks = _peaks(stores["large"], stores["root"] / "two.safetensors", processes=2)
    assert len(peaks) == 2
    for process, peak in enumerate(peaks):
        extra = peak - stores["baseline"]
        assert extra < 0.85 * stores["data_mib"], f"process {process}: {extra:.0f} MiB for half the classes"


def test_loading_some_classes_gives_their_rows_of_the_whole_load(tmp_path):
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 5, (300,), generator=g)
    embeddings = {"audio": F.normalize(torch.randn(300, 8, generator=g), dim=-1)}
    store = write_store(tmp_path / "s", embeddings, labels, shard_rows=64)
    whole = store.load(["audio"])
    some = store.load(["audio"], classes=[1, 3])
    keep = (whole["labels"] == 1) | (whole["labels"] == 3)
    assert all(torch.equal(some[k], whole[k][keep]) for k in ("audio", "labels", "row"))
    doubled = store.load(["audio"], classes=[3], transforms={"audio": lambda x: 2 * x})
    assert torch.equal(doubled["audio"], 2 * whole["audio"][whole["labels"] == 3])
    assert store.load(["audio"], classes=[])["audio"].shape == (0, 8)
