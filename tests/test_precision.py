"""--precision on condense (input space: the encoder's passes) and evaluate, and --device on evaluate; CPU-safe."""

from __future__ import annotations

import json

import pytest
import torch

from ibdc_cli.store import load_synthetic_set


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_input_space_condense_and_evaluate_under_autocast(digits, tmp_path, cli, precision):
    out = tmp_path / f"{precision}.safetensors"
    args = ["condense", digits["train"], "-m", "audio,image", "--space", "input", "--dpc", "1", "--iterations", "2"]
    result = cli(*args, "--num-freqs", "64", "--precision", precision, "--device", "cpu", "--out", out)
    assert result.code == 0, result
    assert f"precision {precision}" in result.err  # the first line says what runs
    tensors, meta = load_synthetic_set(out)
    assert meta["settings"]["precision"] == precision
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    scored = cli(
        "evaluate",
        out,
        "--test",
        digits["test"],
        "--seeds",
        "1",
        "--epochs",
        "5",
        "--device",
        "cpu",
        "--precision",
        precision,
        "--json",
    )
    assert scored.code == 0, scored
    assert 0 <= json.loads(scored.out)["mean"] <= 100


def test_evaluate_refuses_bad_device_and_precision(digits, tmp_path, cli):
    out = tmp_path / "syn.safetensors"
    assert cli("condense", digits["train"], "-m", "audio", "--dpc", "1", "--iterations", "2", "--out", out).code == 0
    bad = cli("evaluate", out, "--test", digits["test"], "--device", "bogus")
    assert bad.code == 2 and "--device 'bogus'" in bad.err
    bad = cli("evaluate", out, "--test", digits["test"], "--precision", "fp8")
    assert bad.code == 2 and "--precision must be one of" in bad.err
    fp32 = json.loads(cli("evaluate", out, "--test", digits["test"], "--seeds", "1", "--json").out)["mean"]
    bf16 = json.loads(
        cli("evaluate", out, "--test", digits["test"], "--seeds", "1", "--precision", "bf16", "--json").out
    )["mean"]
    assert abs(fp32 - bf16) < 10  # the same heads, rounded forward passes: close, not equal
