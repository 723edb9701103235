"""`ibdc datasets fsdd-mnist`: real recordings + real handwriting, splits sharing no speaker or image."""

import csv
import functools
import gzip
import http.server
import io
import json
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from ibdc_cli.data.fsdd_mnist import SPLITS


def rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mnist_labels(source: Path) -> np.ndarray:
    return np.frombuffer(gzip.decompress((source / "mnist-labels-idx1-ubyte.gz").read_bytes())[8:], np.uint8)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_splits_share_no_speaker_and_no_image_and_pairs_match_digits(fsdd_mnist, fsdd_source):
    manifests = {split: rows(fsdd_mnist["manifests"][split]) for split in SPLITS}
    assert {s: len(r) for s, r in manifests.items()} == {"train": 1000, "val": 500, "test": 500}
    root = Path(fsdd_mnist["manifests"]["train"]).parent
    speakers = {s: {Path(r["audio"]).parent.name for r in rs} for s, rs in manifests.items()}
    assert speakers == {"train": {"jackson", "nicolas"}, "val": {"theo"}, "test": {"yweweler"}}
    images = {s: {r["image"] for r in rs} for s, rs in manifests.items()}
    assert not images["train"] & images["val"] and not images["train"] & images["test"]
    assert not images["val"] & images["test"]
    assert len(images["train"]) == 1000  # no image used twice within a split either
    labels = mnist_labels(fsdd_source)
    names = "zero one two three four five six seven eight nine".split()
    for split, split_rows in manifests.items():
        start, end = fsdd_mnist["image_ranges"][split]
        for row in split_rows:
            index = int(Path(row["image"]).stem)
            digit = int(Path(row["audio"]).name.split("_")[0])
            assert start <= index < end
            assert names[labels[index]] == row["label"] == names[digit], row
    one = manifests["test"][0]
    wave, rate = sf.read(root / one["audio"])
    assert rate == 8000 and wave.ndim == 1 and len(wave) > 0
    assert Image.open(root / one["image"]).size == (28, 28)


def test_summary_states_licences_and_attribution(fsdd_mnist):
    audio, image = fsdd_mnist["sources"]["audio"], fsdd_mnist["sources"]["image"]
    assert audio["licence"] == "CC BY-SA 4.0" and "Jackson" in audio["attribution"]
    assert image["licence"] == "CC BY-SA 3.0" and "LeCun" in image["attribution"]
    readme = (Path(fsdd_mnist["manifests"]["train"]).parent / "README.txt").read_text()
    assert "CC BY-SA 4.0" in readme and "CC BY-SA 3.0" in readme


def test_rebuilding_the_same_is_a_no_op_and_a_different_build_is_refused(tmp_path, fsdd_source, cli):
    out = tmp_path / "data"
    first = cli("datasets", "fsdd-mnist", out, "--source", fsdd_source, "--json")
    assert first.code == 0, first
    assert json.loads(first.out)["counts"] == {"train": 1000, "val": 500, "test": 500}
    before = tree(out)
    again = cli("datasets", "fsdd-mnist", out, "--source", fsdd_source)
    assert again.code == 0 and tree(out) == before
    other = cli("datasets", "fsdd-mnist", out, "--source", fsdd_source, "--seed", "1")
    assert other.code == 2 and str(out) in other.err and "--overwrite" in other.err, other
    assert "Traceback" not in other.err
    assert tree(out) == before  # nothing changed
    swapped = cli("datasets", "fsdd-mnist", out, "--source", fsdd_source, "--val-speaker", "jackson")
    assert swapped.code == 2 and tree(out) == before
    replaced = cli("datasets", "fsdd-mnist", out, "--source", fsdd_source, "--val-speaker", "jackson", "--overwrite")
    assert replaced.code == 0, replaced
    val = rows(out / "val.csv")
    assert {Path(r["audio"]).parent.name for r in val} == {"jackson"}
    assert not (out / "audio" / "jackson").exists() or len(rows(out / "train.csv")) == 1000


def test_a_folder_that_is_no_build_is_never_touched(tmp_path, fsdd_source, cli):
    (tmp_path / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        result = cli("datasets", "fsdd-mnist", tmp_path, "--source", fsdd_source, *extra)
        assert result.code == 2 and "no ibdc dataset build" in result.err, result
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def copy_source(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("SHA256SUMS", "README.md"))
    return dst


def test_other_speakers_of_a_source_train_and_bad_sources_are_refused(tmp_path, fsdd_source, cli):
    source = copy_source(fsdd_source, tmp_path / "src")
    for take in range(3):  # a fifth speaker, "alice"
        shutil.copy(source / "recordings" / f"4_theo_{take}.wav", source / "recordings" / f"4_alice_{take}.wav")
    out = tmp_path / "out"
    result = cli("datasets", "fsdd-mnist", out, "--source", source, "--json")
    assert result.code == 0, result
    summary = json.loads(result.out)
    assert summary["speakers"]["train"] == ["alice", "jackson", "nicolas"]
    assert summary["counts"]["train"] == 1003

    bad = cli("datasets", "fsdd-mnist", tmp_path / "o2", "--source", source, "--test-speaker", "bob")
    assert bad.code == 2 and "--test-speaker 'bob'" in bad.err, bad
    same = cli("datasets", "fsdd-mnist", tmp_path / "o3", "--source", source, "--val-speaker", "yweweler")
    assert same.code == 2 and "must not share" in same.err, same

    (source / "recordings" / "0_theo_0.wav").write_bytes(b"RIFF not a recording")
    tampered = cli("datasets", "fsdd-mnist", tmp_path / "o4", "--source", source)
    assert tampered.code == 2 and "0_theo_0.wav" in tampered.err and "SHA-256" in tampered.err, tampered
    assert not (tmp_path / "o4").exists()

    source2 = copy_source(fsdd_source, tmp_path / "src2")
    (source2 / "mnist-labels-idx1-ubyte.gz").unlink()
    missing = cli("datasets", "fsdd-mnist", tmp_path / "o5", "--source", source2)
    assert missing.code == 2 and "MNIST labels" in missing.err, missing


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def mirror(tmp_path, fsdd_source):
    """A local HTTP server on 127.0.0.1 serving the files the download fetches, by their published names."""
    root = tmp_path / "www"
    root.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        archive.add(fsdd_source / "recordings", arcname="free-spoken-digit-dataset-1.0.10/recordings")
        readme = b"FSDD"
        info = tarfile.TarInfo("free-spoken-digit-dataset-1.0.10/README.md")
        info.size = len(readme)
        archive.addfile(info, io.BytesIO(readme))
    (root / "v1.0.10.tar.gz").write_bytes(buffer.getvalue())
    shutil.copy(fsdd_source / "mnist-images-idx3-ubyte.gz", root / "t10k-images-idx3-ubyte.gz")
    shutil.copy(fsdd_source / "mnist-labels-idx1-ubyte.gz", root / "t10k-labels-idx1-ubyte.gz")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_checks_hashes_and_builds_what_the_local_copy_builds(tmp_path, mirror, fsdd_mnist, cli):
    root, url = mirror
    out = tmp_path / "downloaded"
    result = cli("datasets", "fsdd-mnist", out, "--mirror", url, "--json")
    assert result.code == 0, result
    local = Path(fsdd_mnist["manifests"]["train"]).parent
    for split in SPLITS:
        assert (out / f"{split}.csv").read_text() == (local / f"{split}.csv").read_text()
    assert json.loads(result.out)["params"] == fsdd_mnist["params"]
    assert not (out / ".download").exists()

    # a mirror serving other MNIST images is refused, and the half-done build can be fixed and resumed
    raw = bytearray(gzip.decompress((root / "t10k-images-idx3-ubyte.gz").read_bytes()))
    raw[100] ^= 0xFF
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    bad = cli("datasets", "fsdd-mnist", tmp_path / "bad", "--mirror", url)
    assert bad.code == 2 and "differ from the pinned ones" in bad.err, bad
    assert not (tmp_path / "bad" / "train.csv").exists()

    offline = cli("datasets", "fsdd-mnist", tmp_path / "offline", "--mirror", "http://127.0.0.1:9/")
    assert offline.code == 2 and "--source" in offline.err, offline


def test_per_class_builds_a_small_subset_of_the_full_build(tmp_path, fsdd_source, fsdd_mnist, cli):
    out = tmp_path / "small"
    done = cli("datasets", "fsdd-mnist", out, "--source", fsdd_source, "--per-class", "3", "--json")
    assert done.code == 0, done
    summary = json.loads(done.out)
    assert summary["counts"] == {"train": 30, "val": 30, "test": 30} and summary["params"]["per_class"] == 3
    full = {split: {r["id"] for r in rows(Path(fsdd_mnist["manifests"][split]))} for split in SPLITS}
    for split in SPLITS:
        small = rows(out / f"{split}.csv")
        assert {r["id"] for r in small} <= full[split], split  # the same speakers in the same splits
        assert sorted(r["label"] for r in small) == sorted(list({r["label"] for r in small}) * 3)
    train_speakers = {Path(r["audio"]).parent.name for r in rows(out / "train.csv")}
    assert train_speakers == set(summary["speakers"]["train"]) and len(train_speakers) == 2  # both speakers
    refused = cli("datasets", "fsdd-mnist", tmp_path / "none", "--source", fsdd_source, "--per-class", "0")
    assert refused.code == 2 and "--per-class must be at least 1" in refused.err
