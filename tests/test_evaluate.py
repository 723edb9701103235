"""`ibdc evaluate` (linear / mlp): the protocol, the test split never steering training, JSON, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import record_shard_hashes

from ibdc_cli.evaluation import evaluate
from ibdc_cli.evaluation.heads import HeadSchedule, train_heads


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
    import ibdc_cli.evaluation.heads as heads

    trained = []
    real_train = heads.train_heads

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
    record_shard_hashes(shuffled)
    heads.train_heads = spy
    try:
        one = evaluate(syn, digits["test"], seeds=1, schedule=HeadSchedule(epochs=30))
        two = evaluate(syn, shuffled, seeds=1, schedule=HeadSchedule(epochs=30))
    finally:
        heads.train_heads = real_train
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


# ------------------------------------------------------------------------ several sets of one configuration


@pytest.fixture(scope="module")
def seed_sets(digits, tmp_path_factory):
    """Random selections (DPC 2) with condensation seeds 0, 1, 2: three sets of one configuration."""
    from ibdc_cli.condense import CondenseConfig, condense

    root = tmp_path_factory.mktemp("seeds")
    paths = []
    for seed in range(3):
        paths.append(root / f"random-{seed}.safetensors")
        config = CondenseConfig(modalities=["audio", "image"], dpc=2, method="random", seed=seed)
        condense(digits["train"], paths[-1], config)
    return paths


def test_several_sets_mean_over_sets_and_head_seeds(digits, seed_sets, cli):
    import statistics

    result = cli(
        "evaluate", *seed_sets, "--test", digits["test"], "--train", digits["train"], "--seeds", 2, "--epochs", 20,
        "--json",
    )  # fmt: skip
    assert result.code == 0, result
    report = json.loads(result.out)
    runs = report["runs"]
    assert report["sets"] == [str(p) for p in seed_sets] and report["seeds"] == 2
    assert sorted((r["set"], r["seed"]) for r in runs) == sorted((str(p), s) for p in seed_sets for s in range(2))
    values = [r["value"] for r in runs]
    assert report["mean"] == pytest.approx(statistics.fmean(values))
    assert report["std"] == pytest.approx(statistics.pstdev(values))
    per_set = {s["set"]: s["mean"] for s in report["per_set"]}
    for path in seed_sets:
        assert per_set[str(path)] == pytest.approx(statistics.fmean(r["value"] for r in runs if r["set"] == str(path)))
    assert report["set_std"] == pytest.approx(statistics.pstdev(per_set.values()))
    assert len(report["whole_runs"]) == 2  # the whole-data heads are trained once, not once per set
    assert report["ratio"] == pytest.approx(report["mean"] / report["whole_mean"])
    human = cli("evaluate", *seed_sets, "--test", digits["test"], "--seeds", 2, "--epochs", 5)
    assert human.code == 0 and "3 sets × 2 head seeds" in human.out and "std between sets" in human.out, human


def test_several_sets_are_the_single_sets_runs_together(digits, seed_sets):
    """Evaluating sets together scores each set as evaluating it alone does."""
    schedule = HeadSchedule(epochs=10)
    together = evaluate(seed_sets[:2], digits["test"], seeds=2, schedule=schedule)
    alone = [evaluate(path, digits["test"], seeds=2, schedule=schedule) for path in seed_sets[:2]]
    assert [r["value"] for r in together["runs"]] == pytest.approx([r["value"] for a in alone for r in a["runs"]])
    assert [s["mean"] for s in together["per_set"]] == pytest.approx([a["mean"] for a in alone])
    assert alone[0]["set_std"] == 0.0 and len(alone[0]["per_set"]) == 1


def test_one_set_says_the_spread_is_over_head_seeds_only(digits, seed_sets, cli):
    result = cli("evaluate", seed_sets[0], "--test", digits["test"], "--seeds", 2, "--epochs", 5)
    assert result.code == 0, result
    assert "1 set × 2 head seeds" in result.out and "head seeds only" in result.out, result


def test_sets_of_other_configurations_are_refused(digits, seed_sets, tmp_path, cli):
    from ibdc_cli.condense import CondenseConfig, condense

    other = tmp_path / "dpc3.safetensors"
    condense(digits["train"], other, CondenseConfig(modalities=["audio", "image"], dpc=3, method="random", seed=5))
    result = cli("evaluate", seed_sets[0], other, "--test", digits["test"], "--seeds", 1, "--epochs", 1)
    assert result.code == 2 and str(other) in result.err and "--dpc 3" in result.err, result
    assert len(result.err.strip().splitlines()) == 1, result
    unmapped = tmp_path / "none.safetensors"
    config = CondenseConfig(modalities=["audio", "image"], dpc=2, method="random", seed=6, space_map="none")
    condense(digits["train"], unmapped, config)
    result = cli("evaluate", *seed_sets, unmapped, "--test", digits["test"], "--seeds", 1, "--epochs", 1)
    assert result.code == 2 and str(unmapped) in result.err and "--space-map none" in result.err, result
    copy = tmp_path / "copy-of-seed-0.safetensors"
    shutil.copy(seed_sets[0], copy)
    result = cli("evaluate", seed_sets[0], copy, "--test", digits["test"], "--seeds", 1, "--epochs", 1)
    assert result.code == 2 and "--seed 0" in result.err, result
    result = cli("evaluate", seed_sets[0], seed_sets[0], "--test", digits["test"], "--seeds", 1, "--epochs", 1)
    assert result.code == 2 and "given twice" in result.err, result


def test_what_a_run_records_about_itself_does_not_split_a_configuration(digits, seed_sets, tmp_path):
    """Two runs of one configuration differ in timings and memory (never equal on a busy machine): still one."""
    from ibdc_cli.errors import IbdcError
    from ibdc_cli.evaluation.protocol import load_sets
    from ibdc_cli.store import load_synthetic_set, save_synthetic_set

    tensors, meta = load_synthetic_set(seed_sets[0])
    meta.update(seed=7, wall_time_s=meta["wall_time_s"] + 3.0, peak_memory_mib=meta["peak_memory_mib"] + 100)
    meta["settings"]["seed"] = 7
    meta["seconds_per_class"] = {k: v + 0.5 for k, v in meta["seconds_per_class"].items()}
    meta["peak_memory_mib_per_process"] = [m + 10 for m in meta["peak_memory_mib_per_process"]]
    rerun = tmp_path / "rerun.safetensors"
    save_synthetic_set(rerun, tensors, meta)
    assert [s.path for s in load_sets([seed_sets[0], rerun])] == [seed_sets[0], rerun]
    meta["dpc"] = meta["settings"]["dpc"] = 3  # but a setting still does
    save_synthetic_set(rerun, tensors, meta)
    with pytest.raises(IbdcError, match="--dpc 3"):
        load_sets([seed_sets[0], rerun])


def test_a_head_stops_at_max_steps_as_if_it_had_fewer_epochs():
    """Big stores: `max_steps` caps the epochs (whole epochs), the same heads as asking for those epochs."""
    from ibdc_cli.evaluation.heads import epochs_of

    assert epochs_of(1000, HeadSchedule()) == 300  # every store measured so far trains all its epochs
    assert epochs_of(16_896, HeadSchedule()) == 300 and epochs_of(16_897, HeadSchedule()) == 299
    assert epochs_of(200_232, HeadSchedule()) == 26 and epochs_of(10**9, HeadSchedule()) == 1
    g = torch.Generator().manual_seed(0)
    features, labels = {"image": torch.randn(1000, 16, generator=g)}, torch.randint(0, 3, (1000,), generator=g)
    capped = train_heads(features, labels, 3, protocol="linear", schedule=HeadSchedule(max_steps=8), seed=1)
    two = train_heads(features, labels, 3, protocol="linear", schedule=HeadSchedule(epochs=2), seed=1)
    longer = train_heads(features, labels, 3, protocol="linear", schedule=HeadSchedule(epochs=3), seed=1)
    assert torch.equal(capped["image"].weight, two["image"].weight)
    assert not torch.equal(capped["image"].weight, longer["image"].weight)


def test_a_store_too_large_for_memory_is_read_from_disk_with_the_same_result(digits, syn, monkeypatch):
    """Above `IN_MEMORY_BYTES` the whole-data heads read their mini-batches from temporary files and the
    test rows are scored chunk by chunk: the same heads bit for bit and the same scores as from memory;
    the files are gone afterwards."""
    import tempfile

    import ibdc_cli.evaluation.heads as heads
    import ibdc_cli.evaluation.rows_on_disk as rows_on_disk

    trained = []
    real_train = heads.train_heads

    def spy(features, *args, **kwargs):
        result = real_train(features, *args, **kwargs)
        kinds = {type(x).__name__ for x in features.values()}
        trained.append((kinds, {m: [p.detach().clone() for p in h.parameters()] for m, h in result.items()}))
        return result

    monkeypatch.setattr(heads, "train_heads", spy)
    monkeypatch.setattr(rows_on_disk.RowsOnDisk, "chunks", _small_chunks(rows_on_disk.RowsOnDisk.chunks))
    schedule = HeadSchedule(epochs=3)
    in_memory = evaluate(syn, digits["test"], train_store=digits["train"], seeds=2, schedule=schedule)
    before = set(_spill_folders(tempfile.gettempdir()))
    monkeypatch.setattr(heads, "IN_MEMORY_BYTES", 0)
    from_disk = evaluate(syn, digits["test"], train_store=digits["train"], seeds=2, schedule=schedule)
    assert set(_spill_folders(tempfile.gettempdir())) == before  # the temporary files are removed

    memory_whole = [params for kinds, params in trained[:4] if kinds == {"Tensor"}][2:]
    disk_whole = [params for kinds, params in trained[4:] if kinds == {"RowsOnDisk"}]
    assert len(memory_whole) == len(disk_whole) == 2  # two seeds of whole-data heads each way
    for a, b in zip(memory_whole, disk_whole, strict=True):
        for m in a:
            for pa, pb in zip(a[m], b[m], strict=True):
                assert torch.equal(pa, pb)
    assert from_disk["whole_runs"] == in_memory["whole_runs"] and from_disk["runs"] == in_memory["runs"]


def _small_chunks(chunks):
    """Score in chunks of 7 rows, so a test store of a few dozen rows spans several."""

    def small(self, size=7):
        return chunks(self, size)

    return small


def _spill_folders(folder):
    import pathlib

    return [p.name for p in pathlib.Path(folder).glob("ibdc-rows-*")]


def test_rows_on_disk_reads_back_what_was_written(tmp_path):
    from ibdc_cli.evaluation.rows_on_disk import spill

    g = torch.Generator().manual_seed(0)
    parts = [{"image": torch.randn(n, 5, generator=g), "labels": torch.arange(n)} for n in (3, 4)]
    files, labels = spill(parts, ["image"], {"image": 5}, lambda m, x: x * 2)
    whole = torch.cat([p["image"] for p in parts]) * 2
    rows = files["image"]
    assert rows.shape == (7, 5) and torch.equal(labels, torch.tensor([0, 1, 2, 0, 1, 2, 3]))
    index = torch.tensor([6, 0, 3, 3])
    assert torch.equal(rows[index], whole[index])
    assert torch.equal(torch.cat(list(rows.chunks(size=3))), whole)
    with pytest.raises(IndexError):
        rows[torch.tensor([7])]


def test_spilling_a_store_holds_about_one_shard_in_memory(tmp_path):
    """Memory ceiling on a scaled-down shape: spilling 10 shards of 16 MiB raises the process's resident
    memory by far less than the store's 160 MiB (it once kept every shard's buffer alive through a view of
    its labels, and grew by a shard per shard)."""
    import threading
    import time

    import psutil

    from ibdc_cli.evaluation.rows_on_disk import spill
    from ibdc_cli.store import open_store, write_store

    rows, dim = 20_480, 1024
    g = torch.Generator().manual_seed(0)
    embeddings = {m: torch.randn(rows, dim, generator=g) for m in ("audio", "image")}
    labels = torch.randint(0, 4, (rows,), generator=g)
    write_store(tmp_path / "store", embeddings, labels, class_names=list("abcd"), shard_rows=2048)
    del embeddings
    store = open_store(tmp_path / "store")
    process, peak, done = psutil.Process(), [0], threading.Event()
    baseline = process.memory_info().rss

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        files, spilled = spill(store.shards(["audio", "image"]), ["audio", "image"], store.modalities, lambda m, x: x)
    finally:
        done.set()
        watcher.join()
    assert len(spilled) == rows and files["image"].shape == (rows, dim)
    assert peak[0] - baseline < 80 * 2**20, f"spilling raised RSS by {(peak[0] - baseline) / 2**20:.0f} MiB"
