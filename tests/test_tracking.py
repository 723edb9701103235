"""`--log-with csv`: a condense run's loss terms and step times, read back from the CSV log."""

from __future__ import annotations

import json

import pytest
import torch
from test_retrieval import write_store

from ibdc_cli.store import load_synthetic_set
from ibdc_cli.tracking import read_csv_log


def test_condense_csv_log_holds_every_step_of_every_class(tmp_path, cli):
    torch.manual_seed(0)
    store = write_store(tmp_path / "store", {"audio": torch.randn(60, 16), "image": torch.randn(60, 16)}, classes=3)
    out = tmp_path / "syn.safetensors"
    args = ["condense", store, "-m", "audio,image", "--dpc", "2", "--iterations", "5", "--out", out, "--device", "cpu"]
    result = cli(*args, "--log-with", "csv")
    assert result.code == 0, result
    log = read_csv_log(tmp_path / "syn-logs" / "syn.csv")
    _, meta = load_synthetic_set(out)
    for c in range(3):
        assert [step for step, _ in log[f"class{c:03d}/total"]] == list(range(5))
        assert all(seconds > 0 for _, seconds in log[f"class{c:03d}/seconds"])
        assert {"uni", "cross", "joint"} <= {name.split("/")[1] for name in log if name.startswith(f"class{c:03d}/")}
    # the set's own loss history is the per-step sum over classes: the log holds the same numbers
    summed = [sum(log[f"class{c:03d}/total"][step][1] for c in range(3)) for step in range(5)]
    assert summed == pytest.approx(meta["loss_history"]["total"], rel=1e-5)
    config = json.loads((tmp_path / "syn-logs" / "syn.config.json").read_text())
    assert config["dpc"] == 2 and config["iterations"] == 5 and config["store"] == str(store)
    unknown = cli(*args, "--log-with", "papyrus", "--out", tmp_path / "other.safetensors")
    assert unknown.code == 2 and "--log-with 'papyrus'" in unknown.err


def test_bind_csv_log_holds_steps_and_held_out_epochs(media_manifest, tmp_path, cli):
    out = tmp_path / "enc.safetensors"
    args = ["bind", media_manifest, "-m", "image,text", "--anchor", "image", "--epochs", "2", "--batch-size", "4"]
    result = cli(*args, "--val-fraction", "0.25", "--workers", "0", "--out", out, "--log-with", "csv", "--json")
    assert result.code == 0, result
    summary = json.loads(result.out)
    log = read_csv_log(tmp_path / "enc-logs" / "enc.csv")
    assert [v for _, v in log["epoch/loss"]] == pytest.approx(summary["loss_history"], rel=1e-5)
    assert [step for step, _ in log["held_out/text/r1_to_anchor"]] == [1, 2]
    assert len(log["loss"]) == 2 * (9 // 4)  # 9 training rows, batches of 4, 2 epochs
