"""`ibdc evaluate --protocol retrieval` and `ibdc condense` on stores without labels (pseudo-classes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ibdc_cli.evaluation import RetrievalSchedule, evaluate, format_retrieval
from ibdc_cli.evaluation.retrieval import recall_at_k
from ibdc_cli.store import atomic_save_tensors, atomic_write_json, file_sha256, load_synthetic_set, save_synthetic_set

DIM = 16
ENCODER = {"preset": "imagebind_tiny", "weights": "random-init", "seed": 0, "out_dim": DIM, "normalized": True}
FAST = RetrievalSchedule(epochs=30)


def write_store(path: Path, tensors: dict[str, torch.Tensor], encoder: dict = ENCODER, classes: int = 0) -> Path:
    """An embedding store; without `classes` it has no labels (labels -1, as `ibdc embed` writes for a
    manifest without a label column), with it rows are labelled round-robin."""
    n = next(iter(tensors.values())).shape[0]
    shard = {
        **{m: torch.nn.functional.normalize(x, dim=-1) for m, x in tensors.items()},
        "labels": torch.arange(n) % classes if classes else torch.full((n,), -1, dtype=torch.int64),
        "row": torch.arange(n),
    }
    atomic_save_tensors(path / "shard-00000.safetensors", shard)
    index = {
        "format": "ibdc-store",
        "format_version": 1,
        "num_rows": n,
        "modalities": {m: x.shape[1] for m, x in tensors.items()},
        "class_names": [f"c{c}" for c in range(classes)],
        "labeled": bool(classes),
        "encoder": encoder,
        "manifest": {"path": str(path / "none.csv"), "sha256": "0" * 64, "rows": n},
        "shards": [
            {"file": "shard-00000.safetensors", "rows": n, "sha256": file_sha256(path / "shard-00000.safetensors")}
        ],
    }
    atomic_write_json(path / "index.json", index)
    return path


def paired(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Audio-text pairs sharing a latent: text = latent @ A + noise, audio = latent @ B + noise."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.Generator().manual_seed(1234)  # the same modality maps in every split
    a, b = torch.randn(8, DIM, generator=mix), torch.randn(8, DIM, generator=mix)
    latent = torch.randn(n, 8, generator=g)
    return {
        "audio": latent @ a + 0.3 * torch.randn(n, DIM, generator=g),
        "text": latent @ b + 0.3 * torch.randn(n, DIM, generator=g),
    }


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pairs")
    return {
        "train": write_store(root / "train", paired(200, 0)),
        "test": write_store(root / "test", paired(60, 1)),
    }


@pytest.fixture(scope="module")
def pairs_set(stores, tmp_path_factory) -> Path:
    """40 random real pairs of the train store: the retrieval baseline."""
    from ibdc_cli.condense import CondenseConfig, condense

    out = tmp_path_factory.mktemp("syn") / "random.safetensors"
    condense(stores["train"], out, CondenseConfig(modalities=["audio", "text"], dpc=40, method="random"))
    return out


# ------------------------------------------------------------------------------------------- the math


def test_recall_perfect_pairs_and_chance():
    x = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    assert recall_at_k(x, x) == {1: 100.0, 5: 100.0, 10: 100.0}
    assert recall_at_k(x, 3 * x + 1e-4 * torch.randn(100, 8))[1] == 100.0  # cosine: scale does not matter
    # gallery in a random order: the match is a random item, so R@k ~ k / N
    shuffled = [recall_at_k(x, x[torch.randperm(100, generator=torch.Generator().manual_seed(s))]) for s in range(20)]
    mean = {k: sum(r[k] for r in shuffled) / len(shuffled) for k in (1, 5, 10)}
    assert mean[1] < 5 and 1 < mean[5] < 10 and 5 < mean[10] < 16


def test_recall_ties_count_against_the_match():
    """A head that maps everything to one point must not look perfect."""
    same = torch.ones(50, 4)
    assert recall_at_k(same, same) == {1: 0.0, 5: 0.0, 10: 0.0}
    with pytest.raises(ValueError):
        recall_at_k(torch.ones(3, 4), torch.ones(4, 4))


def test_info_nce_without_labels_is_clips_loss():
    """`losses.info_nce` without labels is the loss the retrieval protocol trained with before it moved to
    losses.py, bit for bit (cross-entropy of the cosine logits against the diagonal, both ways); with
    labels it is bind's SupCon form."""
    import torch.nn.functional as F

    from ibdc_cli.losses import info_nce

    def retrieval_info_nce(a, b, temperature):  # ibdc_cli/retrieval.py's, as it was
        logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
        target = torch.arange(len(a), device=a.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    def bind_info_nce(x, y, temperature, labels):  # ibdc_cli/bind.py's SupCon form, as it was (unit inputs)
        logits = x @ y.T / temperature
        weights = (labels[:, None] == labels[None, :]).float()
        x_to_y = -(weights * logits.log_softmax(dim=1)).sum(1) / weights.sum(1)
        y_to_x = -(weights.T * logits.T.log_softmax(dim=1)).sum(1) / weights.sum(0)
        return (x_to_y.mean() + y_to_x.mean()) / 2

    g = torch.Generator().manual_seed(0)
    for batch, dim in ((2, 3), (7, 16), (64, 128)):
        a, b = 3 * torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g) + 1
        for temperature in (0.07, 1.0):
            expected = retrieval_info_nce(a, b, temperature)
            assert torch.equal(info_nce(a, b, temperature), expected)
            distinct = info_nce(a, b, temperature, labels=torch.arange(batch))
            assert torch.allclose(distinct, expected, rtol=1e-6, atol=1e-6)
            labels = torch.randint(0, 3, (batch,), generator=g)
            x, y = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
            supcon = bind_info_nce(x, y, temperature, labels)
            assert torch.allclose(info_nce(a, b, temperature, labels), supcon, rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------------------------------- protocol


def test_protocol_learns_pairs_and_whole_data(stores, pairs_set):
    result = evaluate(
        pairs_set, stores["test"], protocol="retrieval", seeds=2, train_store=stores["train"], schedule=FAST
    )
    assert result["protocol"] == "retrieval" and result["pairs"] == 40 and result["test_pairs"] == 60
    assert result["pseudo_labels"] == "none"
    names = {f"{q}->{g} R@{k}" for q, g in (("audio", "text"), ("text", "audio")) for k in (1, 5, 10)}
    assert set(result["metrics"]) == names
    for block in result["metrics"].values():
        assert len(block["runs"]) == 2 and len(block["whole_runs"]) == 2
        assert block["ratio"] == pytest.approx(block["mean"] / block["whole_mean"])
    # a shared latent makes the pairs learnable: far above chance (R@10 = 10/60 = 17 %)
    assert result["metrics"]["audio->text R@10"]["mean"] > 50
    assert result["metrics"]["text->audio R@10"]["whole_mean"] > 50


def test_heads_never_see_the_test_split(stores, pairs_set, tmp_path, monkeypatch):
    """Shuffling the test pairs changes only the score: the trained heads are identical."""
    import ibdc_cli.evaluation.retrieval as retrieval

    trained = []
    real_train = retrieval.train_projection_heads

    def spy(*args, **kwargs):
        heads = real_train(*args, **kwargs)
        trained.append([p.detach().clone() for h in heads.values() for p in h.parameters()])
        return heads

    monkeypatch.setattr(retrieval, "train_projection_heads", spy)
    test = paired(60, 1)
    shuffled = {"audio": test["audio"], "text": test["text"][torch.randperm(60)]}
    a = evaluate(pairs_set, stores["test"], protocol="retrieval", seeds=1, schedule=FAST)
    b = evaluate(pairs_set, write_store(tmp_path / "shuffled", shuffled), protocol="retrieval", seeds=1, schedule=FAST)
    assert all(torch.equal(x, y) for x, y in zip(trained[0], trained[1], strict=True))
    assert b["metrics"]["audio->text R@10"]["mean"] < a["metrics"]["audio->text R@10"]["mean"]


def test_cli_json_schema_and_table(stores, pairs_set, cli):
    args = ("evaluate", pairs_set, "--test", stores["test"], "--protocol", "retrieval", "--seeds", 2, "--epochs", 20)
    result = cli(*args, "--train", stores["train"], "--json")
    assert result.code == 0, result
    report = json.loads(result.out)
    assert report["schedule"]["epochs"] == 20 and report["seeds"] == 2
    for block in report["metrics"].values():
        for key in ("mean", "std", "runs", "whole_mean", "ratio"):
            assert key in block
    human = cli(*args)
    assert human.code == 0, human
    assert "audio->text" in human.out and "text->audio" in human.out and "±" in human.out


def test_several_sets_recalls_over_sets_and_seeds(stores, pairs_set, tmp_path, cli):
    """Random pairs with condensation seeds 0 and 1: each recall is mean ± std over 2 sets x 2 head seeds,
    each set's mean is given, and the whole-data heads are trained once."""
    import statistics

    from ibdc_cli.condense import CondenseConfig, condense

    other = tmp_path / "random-1.safetensors"
    condense(stores["train"], other, CondenseConfig(modalities=["audio", "text"], dpc=40, method="random", seed=1))
    result = evaluate(
        [pairs_set, other], stores["test"], protocol="retrieval", seeds=2, train_store=stores["train"], schedule=FAST
    )
    assert result["sets"] == [str(pairs_set), str(other)] and result["seeds"] == 2
    for block in result["metrics"].values():
        values = [r["value"] for r in block["runs"]]
        assert [(r["set"], r["seed"]) for r in block["runs"]] == [
            (str(p), s) for p in (pairs_set, other) for s in (0, 1)
        ]
        assert block["mean"] == pytest.approx(statistics.fmean(values))
        assert [s["mean"] for s in block["per_set"]] == pytest.approx(
            [statistics.fmean(values[:2]), statistics.fmean(values[2:])]
        )
        assert block["set_std"] == pytest.approx(statistics.pstdev(s["mean"] for s in block["per_set"]))
        assert len(block["whole_runs"]) == 2
    table = format_retrieval(result)
    assert "2 sets × 2 head seeds" in table and "between sets" in table
    one = cli("evaluate", pairs_set, "--test", stores["test"], "--protocol", "retrieval", "--seeds", 1, "--epochs", 2)
    assert one.code == 0 and "1 set × 1 head seed: spread over head seeds only" in one.out, one


# ------------------------------------------------------------------------------------ pseudo-classes


def test_condense_unlabeled_one_pseudo_class(stores, pairs_set, tmp_path, cli):
    tensors, meta = load_synthetic_set(pairs_set)
    assert tensors["audio"].shape == (40, DIM) and meta["class_names"] == ["all"]
    assert meta["pseudo_labels"] == "none" and meta["rows_per_class"] == {"all": 40}
    out = tmp_path / "ibdc.safetensors"
    args = ("condense", stores["train"], "--modalities", "audio,text", "--dpc", 8, "--iterations", 5)
    result = cli(*args, "--num-freqs", 64, "--joint-form", "cf", "--out", out)
    assert result.code == 0, result
    tensors, meta = load_synthetic_set(out)
    assert tensors["labels"].tolist() == [0] * 8 and meta["method"] == "imagebinddc"


def test_condense_unlabeled_kmeans_clusters(stores, tmp_path, cli):
    out = tmp_path / "k.safetensors"
    args = ("condense", stores["train"], "--modalities", "audio,text", "--method", "random", "--dpc", 2)
    result = cli(*args, "--clusters", 5, "--out", out)
    assert result.code == 0, result
    tensors, meta = load_synthetic_set(out)
    assert meta["pseudo_labels"] == "kmeans" and meta["clusters"] == 5
    assert meta["class_names"] == [f"cluster-{c}" for c in range(5)]
    assert sorted(tensors["labels"].tolist()) == [c for c in range(5) for _ in range(2)]
    assert "--clusters 5" in meta["command"]
    again = tmp_path / "k2.safetensors"
    assert cli(*args, "--clusters", 5, "--out", again).code == 0
    assert torch.equal(load_synthetic_set(again)[0]["audio"], tensors["audio"])  # seeded k-means


# ------------------------------------------------------------------------------------------ bad input


def test_bad_input_exits_2(stores, pairs_set, tmp_path, cli):
    test = ("--test", stores["test"], "--protocol", "retrieval", "--seeds", 1, "--epochs", 2)
    one = tmp_path / "one.safetensors"
    assert cli("condense", stores["train"], "--modalities", "audio", "--method", "random", "--out", one).code == 0
    result = cli("evaluate", one, *test)
    assert result.code == 2 and "exactly two" in result.err

    audio_only = write_store(tmp_path / "audio-only", {"audio": paired(10, 2)["audio"]})
    result = cli("evaluate", pairs_set, "--test", audio_only, "--protocol", "retrieval")
    assert result.code == 2 and "no 'text' embeddings" in result.err

    other = write_store(tmp_path / "other", paired(10, 2), encoder={**ENCODER, "seed": 7})
    result = cli("evaluate", pairs_set, "--test", other, "--protocol", "retrieval")
    assert result.code == 2 and "different encoders" in result.err

    tensors, meta = load_synthetic_set(pairs_set)
    narrow = tmp_path / "narrow.safetensors"  # rows of another dimension than the store's: once a traceback
    save_synthetic_set(narrow, {**tensors, "audio": tensors["audio"][:, :8]}, meta)
    result = cli("evaluate", narrow, *test)
    assert result.code == 2 and "has dimension 16" in result.err, result
    result = cli("inspect", narrow, "--plot", tmp_path / "narrow.png", "--real", stores["train"])
    assert result.code == 2 and "has dimension 16" in result.err, result

    labeled = write_store(tmp_path / "labeled", paired(20, 3), classes=2)
    out = tmp_path / "x.safetensors"
    result = cli("condense", labeled, "--modalities", "audio,text", "--clusters", 3, "--out", out)
    assert result.code == 2 and "--clusters" in result.err

    out = tmp_path / "too-many.safetensors"
    result = cli("condense", stores["train"], "--modalities", "audio,text", "--clusters", 500, "--out", out)
    assert result.code == 2 and "--clusters 500" in result.err
    assert not out.exists()
