"""`ibdc embed wds:...`: WebDataset tar shards give the store of the equivalent manifest, with 1 or 2
processes, and a killed run resumes by shard."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ibdc_cli.store import open_store

wds = pytest.importorskip("webdataset")

# shards of 4 samples and batches of 4: the manifest's chunks and the shards' groups make the same batches
FAST = ["--batch-size", "4", "--workers", "0", "--chunk-rows", "4", "--device", "cpu"]


def write_shards(manifest: Path, out: Path, per_shard: int, *, label_ext: str = "cls") -> list[Path]:
    """The manifest's rows as WebDataset shards (webdataset.TarWriter), in row order, `per_shard` a shard."""
    rows = list(csv.DictReader(manifest.open()))
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, len(rows), per_shard):
        shards.append(out / f"train-{start // per_shard:06d}.tar")
        with wds.TarWriter(str(shards[-1])) as sink:
            for i, row in enumerate(rows[start : start + per_shard], start=start):
                sample = {"__key__": f"sample{i:06d}", label_ext: row["label"], "txt": row["text"]}
                for modality, column in (("png", "image"), ("wav", "audio")):
                    sample[modality] = (manifest.parent / row[column]).read_bytes()
                sink.write(sample)
    return shards


def _assert_same_store(a: Path, b: Path) -> None:
    sa, sb = open_store(a), open_store(b)
    assert sa.index["class_names"] == sb.index["class_names"]
    da, db = sa.load(), sb.load()
    assert da.keys() == db.keys()
    for key in da:
        assert torch.equal(da[key], db[key]), key


def test_shards_give_the_manifest_store_bit_for_bit(media_manifest, tmp_path, cli):
    shards = write_shards(media_manifest, tmp_path / "shards", per_shard=4)
    assert cli("embed", media_manifest, "-m", "image,audio,text", "--out", tmp_path / "csv", *FAST).code == 0
    for spec in (
        f"wds:{tmp_path / 'shards'}",
        f"wds:{tmp_path / 'shards'}/train-{{000000..000002}}.tar",
        f"wds:{tmp_path / 'shards'}/train-*.tar",
    ):
        out = tmp_path / f"wds-{len(list(tmp_path.glob('wds-*')))}"
        result = cli("embed", spec, "-m", "image,audio,text", "--out", out, *FAST)
        assert result.code == 0, (spec, result)
        _assert_same_store(tmp_path / "csv", out)
    # shards of 3 (batches no longer the manifest's): the same rows and labels, embeddings up to float rounding
    write_shards(media_manifest, tmp_path / "threes", per_shard=3)
    threes = cli("embed", f"wds:{tmp_path / 'threes'}", "-m", "image,audio,text", "--out", tmp_path / "t", *FAST)
    assert threes.code == 0, threes
    a, b = open_store(tmp_path / "csv").load(), open_store(tmp_path / "t").load()
    assert torch.equal(a["row"], b["row"]) and torch.equal(a["labels"], b["labels"])
    assert all(torch.allclose(a[m], b[m], atol=1e-5) for m in ("image", "audio", "text"))
    record = open_store(out).index["manifest"]
    assert record["kind"] == "wds" and record["path"] == spec and record["rows"] == 12
    assert [s["samples"] for s in record["shards"]] == [4, 4, 4]
    assert [s["sha256"] for s in record["shards"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in shards]
    assert open_store(out).index["class_names"] == ["bird", "cat", "dog"]

    # --space input and the convnet protocol read the rows' media again from the recorded shards
    sets = {}
    for name, store in (("csv", tmp_path / "csv"), ("wds", out)):
        sets[name] = tmp_path / f"syn-{name}.safetensors"
        condense = cli("condense", store, "-m", "image,audio", "--space", "input", "--dpc", "1", "--iterations", "1",
                       "--out", sets[name], "--device", "cpu")  # fmt: skip
        assert condense.code == 0, condense
    a, b = load_file(sets["csv"]), load_file(sets["wds"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    scores = []
    for store in (tmp_path / "csv", out):
        result = cli("evaluate", sets["csv"], "--test", store, "--train", store, "--protocol", "convnet",
                     "--seeds", "1", "--epochs", "2", "--json")  # fmt: skip
        assert result.code == 0, result
        report = json.loads(result.out)
        scores.append((report["mean"], report["whole_mean"]))
    assert scores[0] == scores[1]
    moved = tmp_path / "moved"
    (tmp_path / "shards").rename(moved)  # the recorded shards are gone: say so, or read the copy named
    result = cli("condense", out, "-m", "image", "--space", "input", "--dpc", "1", "--iterations", "1",
                 "--out", tmp_path / "x.safetensors", "--device", "cpu")  # fmt: skip
    assert result.code == 2 and "not found; pass the shards with --manifest wds:" in result.err, result
    result = cli("condense", out, "-m", "image", "--space", "input", "--dpc", "1", "--iterations", "1",
                 "--out", tmp_path / "x.safetensors", "--device", "cpu", "--manifest", f"wds:{moved}")  # fmt: skip
    assert result.code == 0, result
    (moved / "train-000000.tar").write_bytes((moved / "train-000001.tar").read_bytes())
    result = cli("condense", out, "-m", "image", "--space", "input", "--dpc", "1", "--iterations", "1",
                 "--out", tmp_path / "y.safetensors", "--device", "cpu", "--manifest", f"wds:{moved}")  # fmt: skip
    assert result.code == 2 and "SHA-256 differs" in result.err, result


def test_two_process_wds_embed_equals_one_process(media_manifest, tmp_path):
    write_shards(media_manifest, tmp_path / "shards", per_shard=3)  # 4 shards: 2 for each process
    spec = f"wds:{tmp_path / 'shards'}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["-m", "ibdc_cli", "embed", spec, "-m", "image,audio", *FAST]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         env=env, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    two = subprocess.run([*launcher, *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env,
                         timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    _assert_same_store(tmp_path / "one", tmp_path / "two")
    assert "shards 4" in one.stderr


def test_a_killed_wds_embed_resumes_by_shard(media_manifest, tmp_path):
    write_shards(media_manifest, tmp_path / "shards", per_shard=2)  # 6 shards
    spec = f"wds:{tmp_path / 'shards'}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "ibdc_cli", "embed", spec, "-m", "image,audio", *FAST]
    whole = subprocess.run([*command, "--out", str(tmp_path / "whole")], capture_output=True, text=True, env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]

    partial = tmp_path / ".killed.partial"
    run = subprocess.Popen([*command, "--out", str(tmp_path / "killed")], stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 240
    while not list(partial.glob("part-*.safetensors")) and run.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)  # no handler runs: what is on disk is all a resume has
    run.wait()
    done = sorted(p.name for p in partial.glob("part-*.safetensors"))
    assert 1 <= len(done) < 6 and not (tmp_path / "killed").exists(), done

    resumed = subprocess.run([*command, "--out", str(tmp_path / "killed"), "--resume"], capture_output=True,
                             text=True, env=env)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming: {len(done)} of 6 shards already embedded" in resumed.stderr
    _assert_same_store(tmp_path / "whole", tmp_path / "killed")
    assert not partial.exists()


def test_bad_shards_exit_2_naming_the_sample(media_manifest, tmp_path, cli):
    write_shards(media_manifest, tmp_path / "good", per_shard=4)
    cases = {}

    # a sample without an audio member
    broken = tmp_path / "no-audio"
    broken.mkdir()
    with wds.TarWriter(str(broken / "a.tar")) as sink:
        sink.write({"__key__": "k0", "cls": "cat", "png": (media_manifest.parent / "img0.png").read_bytes()})
    cases[f"wds:{broken}"] = "sample 'k0' has no audio member"
    # two image members in one sample
    twice = tmp_path / "two-images"
    twice.mkdir()
    with wds.TarWriter(str(twice / "a.tar")) as sink:
        image = (media_manifest.parent / "img0.png").read_bytes()
        audio = (media_manifest.parent / "snd0.wav").read_bytes()
        sink.write({"__key__": "k0", "cls": "cat", "png": image, "jpg": image, "wav": audio})
    cases[f"wds:{twice}"] = "could be its image (jpg, png)"
    # a sample's members split apart
    split = tmp_path / "split"
    split.mkdir()
    with tarfile.open(split / "a.tar", "w") as tar:
        for name in ("k0.cls", "k1.cls", "k0.wav"):
            tar.add(media_manifest.parent / "snd0.wav", arcname=name)
    cases[f"wds:{split}"] = "are not next to each other"
    cases[f"wds:{tmp_path / 'nothing'}/x-{{0..3}}.tar"] = "shard not found"
    cases[f"wds:{tmp_path / 'empty-dir'}"] = "no tar shards found"
    (tmp_path / "empty-dir").mkdir()
    not_tar = tmp_path / "not-tar"
    not_tar.mkdir()
    (not_tar / "a.tar").write_bytes(b"this is not a tar file" * 100)
    cases[f"wds:{not_tar}"] = "not a readable tar shard"
    for spec, expect in cases.items():
        result = cli("embed", spec, "-m", "image,audio", "--out", tmp_path / "bad", *FAST)
        assert result.code == 2 and expect in result.err, (spec, result)
        assert "Traceback" not in result.err and not (tmp_path / "bad").exists()
        assert not (tmp_path / ".bad.partial").exists()
    result = cli("embed", f"wds:{tmp_path / 'good'}", "-m", "image", "--split", "train", "--out", tmp_path / "bad")
    assert result.code == 2 and "--split is for hf: inputs" in result.err, result


def test_skip_bad_skips_the_sample_and_records_its_key(media_manifest, tmp_path, cli):
    shards = tmp_path / "shards"
    shards.mkdir()
    with wds.TarWriter(str(shards / "a.tar")) as sink:
        for i in range(3):
            sample = {"__key__": f"k{i}", "label": ["cat", "dog", "cat"][i]}
            sample["png"] = b"not a png" if i == 1 else (media_manifest.parent / f"img{i}.png").read_bytes()
            sink.write(sample)
    result = cli("embed", f"wds:{shards}", "-m", "image", "--skip-bad", "--out", tmp_path / "s", *FAST)
    assert result.code == 0, result
    store = open_store(tmp_path / "s")
    assert store.load()["row"].tolist() == [0, 2] and store.load()["labels"].tolist() == [0, 0]
    assert store.index["class_names"] == ["cat", "dog"]  # the skipped sample still names its class
    skipped = store.index["skipped"]
    assert [(s["row"], s["key"]) for s in skipped] == [(1, "k1")], skipped
    assert json.loads(json.dumps(store.index["manifest"]))["rows"] == 3
