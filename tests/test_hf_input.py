"""`ibdc embed hf:...`: a Hugging Face dataset (save_to_disk folder, Parquet) gives the store its files'
manifest gives, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from conftest import write_manifest, write_wav
from PIL import Image
from safetensors.torch import load_file

from ibdc_cli.store import open_store

datasets = pytest.importorskip("datasets")

SMALL = ("--model", "imagebind_tiny", "--device", "cpu", "--workers", "0")


@pytest.fixture
def digits(tmp_path):
    """fsdd-mnist in miniature: 6 rows of a 28x28 grey digit image and an 8 kHz spoken-digit-like WAV,
    labels 0-2; as a CSV manifest and as a `datasets` DatasetDict saved to disk (train and test)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        image = tmp_path / f"img{i}.png"
        Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8), mode="L").save(image)
        audio = write_wav(tmp_path / f"snd{i}.wav", 0.3 + 0.1 * i, rate=8_000, freq=200.0 + 60 * i)
        rows.append({"image": image.name, "audio": audio.name, "label": str([2, 0, 1][i % 3])})
    manifest = write_manifest(tmp_path / "train.csv", rows)

    from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    # Audio cells as their files' bytes, cast to Audio(): encoding audio through `datasets` needs torchcodec.
    features = Features(
        {
            "img": ImageFeature(),
            "speech": {"bytes": Value("binary"), "path": Value("string")},
            "digit": ClassLabel(names=["0", "1", "2"]),
        }
    )
    table = {
        "img": [str(tmp_path / r["image"]) for r in rows],
        "speech": [{"bytes": (tmp_path / r["audio"]).read_bytes(), "path": r["audio"]} for r in rows],
        "digit": [int(r["label"]) for r in rows],
    }
    dataset = Dataset.from_dict(table, features=features).cast_column("speech", Audio())
    DatasetDict({"train": dataset, "test": dataset.select([0, 1])}).save_to_disk(str(tmp_path / "ds"))
    return tmp_path, manifest, dataset


def _assert_same(a, b, classes=("0", "1", "2")):
    sa, sb = open_store(a), open_store(b)
    assert sa.index["class_names"] == sb.index["class_names"] == list(classes)
    assert sa.index["rows_per_class"] == sb.index["rows_per_class"]
    ta, tb = sa.load(), sb.load()
    for key in ("image", "audio", "labels", "row"):
        assert torch.equal(ta[key], tb[key]), key


HF_COLUMNS = ("--image-column", "img", "--audio-column", "speech", "--label-column", "digit")


def test_hf_dataset_on_disk_gives_the_csv_store_bit_for_bit(digits, cli, monkeypatch):
    root, manifest, dataset = digits
    csv_run = cli("embed", manifest, "-m", "image,audio", "--out", root / "csv", *SMALL)
    assert csv_run.code == 0, csv_run
    hf_run = cli("embed", f"hf:{root / 'ds'}", "--split", "train", *HF_COLUMNS, "-m", "image,audio",
                 "--out", root / "hf", *SMALL)  # fmt: skip
    assert hf_run.code == 0, hf_run
    _assert_same(root / "csv", root / "hf")
    record = open_store(root / "hf").index["manifest"]
    assert record["kind"] == "hf" and record["split"] == "train" and record["format"] == "save_to_disk"
    assert record["path"] == str((root / "ds").resolve()) and record["rows"] == 6
    assert record["fingerprint"] == record["sha256"] == datasets.load_from_disk(str(root / "ds"))["train"]._fingerprint
    assert record["columns"] == {"image": "img", "audio": "speech", "label": "digit"}

    # Parquet files of the same dataset: the same store again (its cache in tmp, not ~/.cache)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", root / "hf-cache")
    (root / "pq").mkdir()
    dataset.to_parquet(str(root / "pq" / "train-0.parquet"))
    pq_run = cli("embed", f"hf:{root / 'pq'}/*.parquet", *HF_COLUMNS, "-m", "image,audio", "--out", root / "pq-store",
                 *SMALL)  # fmt: skip
    assert pq_run.code == 0, pq_run
    _assert_same(root / "csv", root / "pq-store")
    assert open_store(root / "pq-store").index["manifest"]["format"] == "parquet"

    # --space input reads the rows' media again from the dataset the store records: the CSV store's set
    sets = {}
    for name in ("csv", "hf"):
        sets[name] = root / f"syn-{name}.safetensors"
        condense = cli("condense", root / name, "-m", "image,audio", "--space", "input", "--dpc", "1",
                       "--iterations", "1", "--out", sets[name], "--device", "cpu")  # fmt: skip
        assert condense.code == 0, condense
    a, b = load_file(sets["csv"]), load_file(sets["hf"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hf_bad_input_exit_2_with_the_option_named(digits, cli):
    root, manifest, _ = digits
    ds = f"hf:{root / 'ds'}"
    cases = [
        ((ds, "-m", "image", "--image-column", "picture"), "no column 'picture' for image"),
        ((ds, "-m", "image", "--split", "val", "--image-column", "img"), "no split 'val' (splits: train, test)"),
        ((ds, "-m", "image"), "no column 'image' for image"),
        ((f"hf:{root / 'nothing-here'}/*.parquet", "-m", "image"), "not a dataset saved with save_to_disk"),
        ((manifest, "-m", "image", "--image-column", "img"), "--image-column is for hf: and wds: inputs"),
    ]
    for args, expect in cases:
        result = cli("embed", *args, "--out", root / "bad", *SMALL)
        assert result.code == 2 and expect in result.err, (args, result)
        assert "Traceback" not in result.err and not (root / "bad").exists()


def test_a_decoded_waveform_gives_the_files_audio_input(tmp_path):
    from ibdc_cli.data.preprocess import load_audio, waveform_input

    path = write_wav(tmp_path / "a.wav", 0.7, rate=22_050, channels=2, freq=330.0)
    samples, rate = soundfile.read(str(path), dtype="float32")
    assert torch.equal(waveform_input(samples, rate), load_audio(path))
    assert torch.equal(waveform_input(samples.T, rate), load_audio(path))  # channels first
    assert torch.equal(load_audio(path, path.read_bytes()), load_audio(path))


def test_ibdc_help_does_not_import_datasets():
    import subprocess
    import sys

    code = "import sys; from ibdc_cli.cli import app; assert 'datasets' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_fsdd_mnist_exported_to_a_dataset_gives_the_csv_store(fsdd_source, tmp_path, cli):
    """The real fsdd-mnist build (2 recordings per digit per split) as a self-contained DatasetDict on disk
    (the media's bytes in Image/Audio columns, the files then moved away): `embed hf:` gives the CSV's store."""
    import csv

    from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    from ibdc_cli.data.fsdd_mnist import build_fsdd_mnist

    data = tmp_path / "fsdd-mnist"
    build_fsdd_mnist(data, source=fsdd_source, per_class=2)
    features = Features(
        {
            "image": ImageFeature(),
            "audio": {"bytes": Value("binary"), "path": Value("string")},  # cast to Audio() below
            # in digit order: the store's class ids still follow the label rules (text order of the names)
            "label": ClassLabel(names=DIGITS),
        }
    )
    splits = {}
    for split in ("train", "val", "test"):
        rows = list(csv.DictReader((data / f"{split}.csv").open()))
        table = {
            "image": [{"bytes": (data / r["image"]).read_bytes(), "path": r["image"]} for r in rows],
            "audio": [{"bytes": (data / r["audio"]).read_bytes(), "path": r["audio"]} for r in rows],
            "label": [DIGITS.index(r["label"]) for r in rows],
        }
        splits[split] = Dataset.from_dict(table, features=features).cast_column("audio", Audio())
    DatasetDict(splits).save_to_disk(str(tmp_path / "fsdd-mnist-hf"))

    csv_run = cli("embed", data / "val.csv", "-m", "image,audio", "--out", tmp_path / "csv", *SMALL)
    assert csv_run.code == 0, csv_run
    (data / "images").rename(tmp_path / "images-elsewhere")  # the dataset holds its media itself
    (data / "audio").rename(tmp_path / "audio-elsewhere")
    hf_run = cli("embed", f"hf:{tmp_path / 'fsdd-mnist-hf'}", "--split", "val", "-m", "image,audio",
                 "--out", tmp_path / "hf", *SMALL)  # fmt: skip
    assert hf_run.code == 0, hf_run
    _assert_same(tmp_path / "csv", tmp_path / "hf", classes=sorted(DIGITS))
    assert open_store(tmp_path / "hf").num_rows == len(splits["val"]) == 20
