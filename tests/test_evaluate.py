"""`ibdc evaluate` (linear / mlp): the protocol, the test split never steering training, JSON, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ibdc_cli.evaluate import HeadSchedule, train_heads


@pytest.fixture(scope="module")
def syn(digits, tmp_path_factory):
    from ibdc_cli.condense import CondenseConfig, condense

    out = tmp_path_factory.mktemp("syn") / "dm.safetensors"
    condense(digits["train"], out, CondenseConfig(modalities=["audio", "image"], dpc=5, method="dm", iterations=20))
    return out


@pytest.mark.parametrize("protocol", ["linear", "mlp"])
def test_protocol_json_schema_and_whole_data(digits, syn, cli, protocol):
    result = cli(
        "evaluate",
        syn,
        "--test",
        digits["test"],
        "--train",
        digits["train"],
        "--protocol",
        protocol,
        "--seeds",
        2,
        "--epochs",
        50,
        "--json",
    )
    assert result.code == 0, result
    report = json.loads(result.out)
    for key in ("mean", "std", "runs", "whole_mean", "whole_std", "ratio"):
        assert key in report
    assert len(report["runs"]) == 2 and report["protocol"] == protocol
    assert 10 < report["mean"] <= 100 and report["whole_mean"] > report["mean"] - 5
    assert report["ratio"] == pytest.approx(report["mean"] / report["whole_mean"])
    human = cli("evaluate", syn, "--test", digits["test"], "--seeds", 1, "--epochs", 20)
    assert human.code == 0 and "±" in human.out


def test_heads_ignore_the_test_split(digits, syn):
    """Training never reads the test split: the heads are the same whatever the test labels are."""
    from ibdc_cli.store import load_synthetic_set

    tensors, _ = load_synthetic_set(syn)
    features = {m: tensors[m] for m in ("audio", "image")}
    schedule = HeadSchedule(epochs=20)
    a = train_heads(features, tensors["labels"], 10, protocol="linear", schedule=schedule, seed=0)
    b = train_heads(features, tensors["labels"], 10, protocol="linear", schedule=schedule, seed=0)
    for m in a:
        for pa, pb in zip(a[m].parameters(), b[m].parameters(), strict=True):
            assert torch.equal(pa, pb)


def test_shuffled_test_labels_change_only_the_score(digits, syn, tmp_path, cli):
    """Shuffling the test store's labels leaves the trained heads (hence the seeds' runs on the real labels)
    untouched; only the score changes. The evaluation picks no epoch or setting by test accuracy."""
    import ibdc_cli.evaluate as ev

    trained = []
    real_train = ev.train_heads

    def spy(*args, **kwargs):
        heads = real_train(*args, **kwargs)
        trained.append({m: [p.detach().clone() for p in h.parameters()] for m, h in heads.items()})
        return heads

    shuffled = tmp_path / "test-shuffled"
    shutil.copytree(digits["test"], shuffled)
    from safetensors.torch import load_file, save_file

    for shard in shuffled.glob("shard-*.safetensors"):
        tensors = load_file(shard)
        tensors["labels"] = tensors["labels"][
            torch.randperm(len(tensors["labels"]), generator=torch.Generator().manual_seed(0))
        ]
        save_file(tensors, shard)
    ev.train_heads = spy
    try:
        one = ev.evaluate(syn, digits["test"], seeds=1, schedule=HeadSchedule(epochs=30))
        two = ev.evaluate(syn, shuffled, seeds=1, schedule=HeadSchedule(epochs=30))
    finally:
        ev.train_heads = real_train
    for m in trained[0]:
        for pa, pb in zip(trained[0][m], trained[1][m], strict=True):
            assert torch.equal(pa, pb)
    assert one["mean"] != two["mean"]


def test_bad_input(digits, syn, tmp_path, cli):
    from ibdc_cli.embed import embed_manifest

    other = tmp_path / "other"
    embed_manifest(digits["data"] / "test.csv", ["audio"], other, seed=4)
    result = cli("evaluate", syn, "--test", other)
    assert result.code == 2 and "different encoders" in result.err
    result = cli("evaluate", syn, "--test", digits["test"], "--protocol", "knn")
    assert result.code == 2 and "--protocol 'knn'" in result.err
    (tmp_path / "foreign.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    result = cli("evaluate", tmp_path / "foreign.safetensors", "--test", digits["test"])
    assert result.code == 2 and "not an ibdc synthetic set" in result.err
    audio_only = tmp_path / "audio.safetensors"
    assert (
        cli("condense", digits["train"], "-m", "audio", "--dpc", 2, "--method", "random", "--out", audio_only).code == 0
    )
    result = cli("evaluate", audio_only, "--test", other)
    assert result.code == 2
