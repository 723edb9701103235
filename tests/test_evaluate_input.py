"""`ibdc evaluate` on input-space sets: linear/mlp embed them with the recorded encoder; the `convnet`
protocol trains ConvNets from scratch on them and tests on the real test manifest."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import record_shard_hashes

from ibdc_cli.evaluation import ConvnetSchedule, HeadSchedule, evaluate, format_accuracy


@pytest.fixture(scope="module")
def input_set(digits, tmp_path_factory):
    """imagebinddc, audio + image, DPC 1, 2 iterations, optimised as model inputs."""
    from ibdc_cli.condense import CondenseConfig, condense

    out = tmp_path_factory.mktemp("input") / "input.safetensors"
    condense(digits["train"], out, CondenseConfig(modalities=["audio", "image"], dpc=1, space="input", iterations=2))
    return out


@pytest.fixture(scope="module")
def embedding_set(digits, tmp_path_factory):
    from ibdc_cli.condense import CondenseConfig, condense

    out = tmp_path_factory.mktemp("emb") / "random.safetensors"
    condense(digits["train"], out, CondenseConfig(modalities=["audio", "image"], dpc=1, method="random"))
    return out


def _copy_store(store, tmp_path, name, edit=None, shard_edit=None):
    """A copy of a store, with its index.json (and optionally its shards) edited."""
    copy = tmp_path / name
    shutil.copytree(store, copy)
    if edit:
        index = json.loads((copy / "index.json").read_text())
        edit(index)
        (copy / "index.json").write_text(json.dumps(index))
    if shard_edit:
        from safetensors.torch import load_file, save_file

        for shard in copy.glob("shard-*.safetensors"):
            tensors = load_file(shard)
            shard_edit(tensors)
            save_file(tensors, shard)
        record_shard_hashes(copy)
    return copy


def test_linear_embeds_input_space_sets_with_the_recorded_encoder(digits, input_set, tmp_path):
    """linear on an input-space set = linear on the same set embedded by hand and saved in embedding space."""
    from ibdc_cli.encoders.imagebind import load_encoder
    from ibdc_cli.space import map_embeddings, space_maps_of_set
    from ibdc_cli.store import load_synthetic_set, save_synthetic_set

    tensors, meta = load_synthetic_set(input_set)
    assert meta["tensor_spaces"] == {"audio": "input", "image": "input"}
    assert tensors["image"].shape[1:] == (3, 224, 224) and tensors["audio"].shape[1:] == (3, 1, 128, 204)
    encoder = load_encoder(meta["encoder"]["preset"], seed=meta["encoder"]["seed"])
    maps = space_maps_of_set(tensors, ["audio", "image"])
    by_hand = dict(tensors)
    with torch.no_grad():
        for m in ("audio", "image"):
            by_hand[m] = map_embeddings(encoder.embed(m, tensors[m]), maps.get(m))
    embedded = tmp_path / "embedded.safetensors"
    save_synthetic_set(
        embedded,
        by_hand,
        {k: v for k, v in meta.items() if k not in ("format", "format_version", "ibdc_version")}
        | {"space": "embedding", "tensor_spaces": {"audio": "embedding", "image": "embedding"}},
    )
    schedule = HeadSchedule(epochs=30)
    one = evaluate(input_set, digits["test"], seeds=2, schedule=schedule)
    two = evaluate(embedded, digits["test"], seeds=2, schedule=schedule)
    assert [r["value"] for r in one["runs"]] == pytest.approx([r["value"] for r in two["runs"]], abs=1e-6)
    assert one["mean"] > 15  # 10 classes: chance is 10 %


def test_convnet_json_schema_and_whole_data(digits, input_set, cli):
    result = cli(
        "evaluate",
        input_set,
        "--test",
        digits["test"],
        "--train",
        digits["train"],
        "--protocol",
        "convnet",
        "--seeds",
        2,
        "--epochs",
        1,
        "--json",
    )
    assert result.code == 0, result
    report = json.loads(result.out)
    for key in ("mean", "std", "runs", "whole_mean", "whole_std", "whole_runs", "ratio", "test_manifest"):
        assert key in report
    assert report["protocol"] == "convnet" and len(report["runs"]) == 2 and len(report["whole_runs"]) == 2
    assert report["schedule"]["epochs"] == 1 and report["schedule"]["resolution"] == 32
    assert report["test_rows"] == 220 and report["modalities"] == ["audio", "image"]
    assert all(0 <= value <= 100 for value in [r["value"] for r in report["runs"]] + report["whole_runs"])
    assert report["ratio"] == pytest.approx(report["mean"] / report["whole_mean"])
    human = cli("evaluate", input_set, "--test", digits["test"], "--protocol", "convnet", "--seeds", 1, "--epochs", 2)
    assert human.code == 0 and "±" in human.out and "convnet" in human.out


def test_network_input_pools_to_the_documented_resolution():
    from ibdc_cli.evaluation.convnet import network_input

    assert network_input(torch.zeros(2, 3, 224, 224), 32).shape == (2, 3, 32, 32)
    assert network_input(torch.zeros(2, 3, 1, 128, 204), 32).shape == (2, 3, 32, 51)
    assert network_input(torch.zeros(2, 3, 224, 224), 0).shape == (2, 3, 224, 224)


def test_shuffled_test_labels_leave_the_convnets_identical(digits, input_set, tmp_path):
    """The test split is read only to score: the trained ConvNets are the same whatever its labels are."""
    import ibdc_cli.evaluation.convnet as ce

    def shuffle(tensors):
        order = torch.randperm(len(tensors["labels"]), generator=torch.Generator().manual_seed(0))
        tensors["labels"] = tensors["labels"][order]

    shuffled = _copy_store(digits["test"], tmp_path, "test-shuffled", shard_edit=shuffle)
    trained = []
    real_train = ce.train_convnets

    def spy(*args, **kwargs):
        nets = real_train(*args, **kwargs)
        trained.append({m: [p.detach().clone() for p in net.parameters()] for m, net in nets.items()})
        return nets

    ce.train_convnets = spy
    try:
        schedule = ConvnetSchedule(epochs=2)
        one = evaluate(input_set, digits["test"], protocol="convnet", seeds=1, schedule=schedule)
        two = evaluate(input_set, shuffled, protocol="convnet", seeds=1, schedule=schedule)
    finally:
        ce.train_convnets = real_train
    assert len(trained) == 2
    for m in trained[0]:
        for pa, pb in zip(trained[0][m], trained[1][m], strict=True):
            assert torch.equal(pa, pb)
    assert one["mean"] != two["mean"]


def test_convnet_over_several_sets(digits, tmp_path):
    """Input-space random selections with condensation seeds 0 and 1: ConvNet accuracy over 2 sets x 1 seed."""
    from ibdc_cli.condense import CondenseConfig, condense

    sets = [tmp_path / f"input-{seed}.safetensors" for seed in (0, 1)]
    for seed, out in enumerate(sets):
        config = CondenseConfig(modalities=["audio", "image"], dpc=1, method="random", space="input", seed=seed)
        condense(digits["train"], out, config)
    result = evaluate(sets, digits["test"], protocol="convnet", seeds=1, schedule=ConvnetSchedule(epochs=1))
    assert [(r["set"], r["seed"]) for r in result["runs"]] == [(str(sets[0]), 0), (str(sets[1]), 0)]
    assert [s["mean"] for s in result["per_set"]] == pytest.approx([r["value"] for r in result["runs"]])
    assert result["mean"] == pytest.approx(sum(r["value"] for r in result["runs"]) / 2)
    assert "2 sets × 1 head seed" in format_accuracy(result)


def test_bad_input(digits, input_set, embedding_set, tmp_path, cli):
    test = digits["test"]
    result = cli("evaluate", embedding_set, "--test", test, "--protocol", "convnet")
    assert result.code == 2 and "convnet needs an input-space set (--space input)" in result.err

    other = _copy_store(test, tmp_path, "other-encoder", edit=lambda index: index["encoder"].update(seed=4))
    for protocol in ("linear", "convnet"):
        result = cli("evaluate", input_set, "--test", other, "--protocol", protocol)
        assert result.code == 2 and "different encoders" in result.err, result

    no_image = _copy_store(test, tmp_path, "no-image", edit=lambda index: index["modalities"].pop("image"))
    result = cli("evaluate", input_set, "--test", no_image, "--protocol", "convnet")
    assert result.code == 2 and "has no 'image' embeddings" in result.err

    moved = _copy_store(test, tmp_path, "moved", edit=lambda index: index["manifest"].update(path="/nowhere/test.csv"))
    result = cli("evaluate", input_set, "--test", moved, "--protocol", "convnet")
    assert result.code == 2 and "/nowhere/test.csv" in result.err and "--test-manifest" in result.err

    # the same manifest (same SHA-256) in a directory without its media files
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(digits["data"] / "test.csv", lonely / "test.csv")
    result = cli("evaluate", input_set, "--test", test, "--protocol", "convnet", "--test-manifest", lonely / "test.csv")
    assert result.code == 2 and "row 0" in result.err and "file not found" in result.err, result
    assert len(result.err.strip().splitlines()) == 1

    edited = tmp_path / "edited.csv"
    edited.write_text((digits["data"] / "test.csv").read_text() + "\n")
    result = cli("evaluate", input_set, "--test", test, "--protocol", "convnet", "--test-manifest", edited)
    assert result.code == 2 and "SHA-256 differs" in result.err and "--test-manifest" in result.err, result


def test_recorded_checkpoint_missing_or_different(digits, input_set, tmp_path, cli):
    from ibdc_cli.store import load_synthetic_set, save_synthetic_set

    tensors, meta = load_synthetic_set(input_set)
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "ibdc_version")}
    meta["encoder"] = dict(meta["encoder"], weights="ab" * 32, checkpoint_sha256="ab" * 32, seed=None)
    meta["settings"] = dict(meta["settings"], checkpoint=str(tmp_path / "gone.pth"))
    bound = tmp_path / "bound.safetensors"
    save_synthetic_set(bound, tensors, meta)
    test = _copy_store(digits["test"], tmp_path, "bound-test", edit=lambda index: index.update(encoder=meta["encoder"]))
    result = cli("evaluate", bound, "--test", test)
    assert result.code == 2 and "gone.pth" in result.err and "--checkpoint" in result.err, result
    wrong = tmp_path / "wrong.pth"
    torch.save({"x": torch.zeros(1)}, wrong)
    result = cli("evaluate", bound, "--test", test, "--checkpoint", wrong)
    assert result.code == 2 and "wrong.pth" in result.err and "is not the encoder" in result.err, result
