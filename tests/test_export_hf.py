"""`ibdc inspect SET --export DIR --format hf|parquet`, the inversion of the space maps behind its
`<m>_encoder` columns, and `SyntheticSet.map`: an exported set trains the heads the set trains, the
encoder-space rows map forward to the stored ones, media columns are real PNG / WAV, writes are atomic."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F

import ibdc_cli.api as api
from ibdc_cli import export, export_hf
from ibdc_cli.console import set_quiet
from ibdc_cli.errors import IbdcError
from ibdc_cli.space import SpaceMap, fit_space_map, invert_embeddings, map_embeddings
from ibdc_cli.store import save_synthetic_set, write_store
from ibdc_cli.synthetic_set import SyntheticSet

datasets = pytest.importorskip("datasets")

NAMES = ["cat", "dog", "bird"]
DIM = 8


def unit_rows(rows_per_class: int, seed: int, scale: float = 1.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Class-structured rows of norm `scale` (ibdc's encoders give unit rows), 3 classes, audio + image."""
    generator = torch.Generator().manual_seed(seed)
    means = {m: torch.randn(3, DIM, generator=torch.Generator().manual_seed(ord(m[0]))) for m in ("audio", "image")}
    labels = torch.arange(3).repeat_interleave(rows_per_class)
    rows = {m: mu[labels] + 0.6 * torch.randn(len(labels), DIM, generator=generator) for m, mu in means.items()}
    return {m: scale * F.normalize(x, dim=-1) for m, x in rows.items()}, labels


@pytest.fixture(scope="module", params=["whiten", "center", "none"])
def condensed(request, tmp_path_factory):
    """A set condensed from tensors (Python API), kept as a file, and a test store of the same classes."""
    set_quiet(True)
    tmp = tmp_path_factory.mktemp(f"hf-{request.param}")
    train, labels = unit_rows(12, seed=0)
    options = {"dpc": 2, "iterations": 3, "num_freqs": 64, "real_batch": 8, "seed": 0, "device": "cpu"}
    synthetic = api.condense_embeddings(
        train, labels, class_names=NAMES, space_map=request.param, out=tmp / "syn.safetensors", **options
    )
    test, test_labels = unit_rows(8, seed=1)
    store = write_store(tmp / "test", test, test_labels, class_names=NAMES, encoder=synthetic.encoder)
    yield tmp / "syn.safetensors", store.path
    set_quiet(False)


def _evaluated(synthetic, test_store) -> list[float]:
    report = api.evaluate_set(synthetic, test_store, seeds=2, epochs=30)
    return [run["value"] for run in report["runs"]]


# ------------------------------------------------------------------------------------------ the maths


@pytest.mark.parametrize("kind", ["whiten", "center", "none"])
def test_encoder_rows_map_forward_to_the_stored_rows(kind):
    """x = c + t y W^-1 with ||x|| = 1: the positive root of the quadratic; mapping x forward gives y."""
    real, _ = unit_rows(40, seed=2)
    space_map = fit_space_map(real["audio"], kind)
    y = map_embeddings(torch.randn(50, DIM, generator=torch.Generator().manual_seed(3)), space_map)  # unit rows
    x, found = invert_embeddings(y, space_map, 1.0)
    assert bool(found.all())  # ||c|| < 1 for a mean of unit rows: always exactly one positive root
    assert torch.allclose(x.norm(dim=1), torch.ones(50), atol=1e-5)
    assert (map_embeddings(x, space_map) - y).abs().max() < 1e-5
    if kind == "none":
        assert torch.equal(x, y)


def test_without_a_positive_root_the_row_is_missing():
    """||c|| > r: the ray from c may miss the sphere of radius r; such rows are NaN and not found."""
    center = torch.zeros(DIM)
    center[0] = 2.0
    y = F.normalize(torch.randn(200, DIM, generator=torch.Generator().manual_seed(4)) - center, dim=-1)
    x, found = SpaceMap(center).invert(y, 1.0)
    assert 0 < int(found.sum()) < 200
    assert bool(torch.isnan(x[~found]).all())
    assert (SpaceMap(center)(x[found]) - y[found]).abs().max() < 1e-5
    assert torch.allclose(x[found].norm(dim=1), torch.ones(int(found.sum())), atol=1e-5)


def test_the_norm_of_external_embeddings_comes_from_the_whitening():
    """For vectors made outside ibdc (not unit-norm), a whitening records their RMS norm: ||c||^2 + tr C."""
    real, _ = unit_rows(40, seed=5, scale=7.0)
    space_map = fit_space_map(real["image"], "whiten")
    assert abs(space_map.encoder_norm() - 7.0) < 1e-3
    y = map_embeddings(real["image"][:5], space_map)
    x, found = space_map.invert(y, space_map.encoder_norm())
    assert bool(found.all()) and (space_map(x) - y).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------ exports


def test_hf_export_round_trip_trains_the_same_heads(condensed, tmp_path, cli):
    path, test_store = condensed
    out = tmp_path / "syn-hf"
    result = cli("inspect", path, "--export", out, "--format", "hf", "--json")
    assert result.code == 0, result
    summary = json.loads(result.out)["export"]
    assert summary["format"] == "hf" and summary["rows"] == 6
    assert summary["columns"] == ["label", "audio", "audio_encoder", "image", "image_encoder"]

    synthetic = SyntheticSet.load(path)
    dataset = datasets.load_from_disk(str(out))
    assert dataset.features["label"].names == NAMES
    assert dataset.features["audio"] == datasets.List(datasets.Value("float32"), length=DIM)
    described = json.loads(dataset.info.description)
    sidecar = json.loads((out / "ibdc.json").read_text())
    for record in (described, sidecar):
        assert record["method"] == "imagebinddc" and record["dpc"] == 2 and record["encoder"] == synthetic.encoder
        assert record["space_map"] == synthetic.settings["space_map"]
    assert sidecar["set_metadata"] == synthetic.metadata

    # The set rebuilt from the columns, with the set's metadata and maps, is the set, and trains the same heads.
    table = dataset.with_format("numpy")
    tensors = {m: torch.from_numpy(np.asarray(table[m])) for m in ("audio", "image")}
    tensors["labels"] = torch.from_numpy(np.asarray(table["label"])).long()
    tensors.update({k: v for k, v in synthetic.tensors.items() if k.startswith(("center.", "whiten."))})
    rebuilt = SyntheticSet(out, tensors, synthetic.metadata)
    for name, tensor in synthetic.tensors.items():
        assert torch.equal(rebuilt.tensors[name], tensor), name
    assert _evaluated(rebuilt, test_store) == _evaluated(synthetic, test_store)
    loaded = export_hf.load_export(out)  # the same, from the export alone
    assert all(torch.equal(loaded.tensors[k], v) for k, v in synthetic.tensors.items())

    # <m>_encoder: unit rows (ibdc's encoder norm, and these vectors') that the set's map sends to <m>.
    for m in ("audio", "image"):
        x = torch.from_numpy(np.asarray(table[f"{m}_encoder"]))
        assert torch.allclose(x.norm(dim=1), torch.ones(6), atol=1e-5)
        assert (synthetic.map(m, x) - tensors[m]).abs().max() < 1e-5


def test_parquet_export_is_the_same_table(condensed, tmp_path, cli):
    path, _ = condensed
    result = cli("inspect", path, "--export", tmp_path / "pq", "--format", "parquet")
    assert result.code == 0 and "Parquet table train.parquet: 6 rows" in result.out, result
    assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == sorted(
        ["train.parquet", "ibdc.json", *(["space_maps.safetensors"] if SyntheticSet.load(path).space_maps else [])]
    )
    table = datasets.Dataset.from_parquet(str(tmp_path / "pq" / "train.parquet"), cache_dir=str(tmp_path / "cache"))
    assert table.features["label"].names == NAMES  # the features travel in the Parquet schema
    synthetic = SyntheticSet.load(path)
    assert np.array_equal(np.asarray(table.with_format("numpy")["image"]), synthetic.tensors["image"].numpy())
    loaded = export_hf.load_export(tmp_path / "pq")
    assert all(torch.equal(loaded.tensors[k], v) for k, v in synthetic.tensors.items())


def _hand_made_set(tmp_path, tensors, modalities, spaces) -> str:
    path = tmp_path / "hand.safetensors"
    metadata = {"kind": "synthetic", "method": "dm", "dpc": 1, "modalities": modalities, "tensor_spaces": spaces}
    save_synthetic_set(path, tensors, {**metadata, "encoder": {}, "class_names": ["a b", "c"]})
    return path


def test_rows_without_an_encoder_row_are_null(tmp_path):
    center = torch.zeros(DIM)
    center[0] = 2.0
    y = F.normalize(torch.randn(40, DIM, generator=torch.Generator().manual_seed(6)) - center, dim=-1)
    labels = torch.arange(40) % 2
    path = _hand_made_set(tmp_path, {"text": y, "labels": labels, "center.text": center}, ["text"], {})
    summary = export_hf.export_table(path, tmp_path / "hf")
    dataset = datasets.load_from_disk(str(tmp_path / "hf"))
    nulls = [row is None for row in dataset["text_encoder"]]
    _, found = SpaceMap(center).invert(y)
    assert nulls == (~found).tolist() and summary["encoder_rows_missing"] == {"text": sum(nulls)} and any(nulls)


def test_input_space_media_columns(tmp_path):
    generator = torch.Generator().manual_seed(7)
    tensors = {
        "image": torch.randn(2, 3, 224, 224, generator=generator),
        "audio": 0.3 * torch.randn(2, 3, 1, 128, 204, generator=generator),
        "text": F.normalize(torch.randn(2, DIM, generator=generator), dim=-1),
        "labels": torch.tensor([0, 1]),
    }
    spaces = {"image": "input", "audio": "input", "text": "embedding"}
    path = _hand_made_set(tmp_path, tensors, ["image", "audio", "text"], spaces)
    export_hf.export_table(path, tmp_path / "hf")
    dataset = datasets.load_from_disk(str(tmp_path / "hf"))
    assert dataset.column_names == ["label", "image", "audio", "text", "text_encoder"]
    assert isinstance(dataset.features["image"], datasets.Image) and isinstance(
        dataset.features["audio"], datasets.Audio
    )
    dataset = dataset.cast_column("audio", datasets.Audio(decode=False))  # decoding audio needs torchcodec
    picture, raw = dataset[1]["image"], dataset[0]["audio"]
    assert picture.size == (224, 224)
    assert np.array_equal(np.asarray(picture), export.image_array("image", tensors["image"][1]))
    waveform, rate = soundfile.read(io.BytesIO(raw["bytes"]))
    expected = export.fbanks_to_wav(export.denormalise_fbank(tensors["audio"][0]))
    assert rate == 16_000 and raw["path"] == "0000-a_b.wav" and len(waveform) == len(expected)
    with pytest.raises(IbdcError, match="media"):
        export_hf.load_export(tmp_path / "hf")


def test_failed_export_leaves_nothing_and_bad_input_exits_2(condensed, tmp_path, monkeypatch, cli):
    path, test_store = condensed

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", broken)
    with pytest.raises(RuntimeError):
        export_hf.export_table(path, tmp_path / "out" / "hf")
    assert list((tmp_path / "out").iterdir()) == []
    (tmp_path / "taken").mkdir()
    for args, message in (
        ([path, "--export", tmp_path / "x", "--format", "arrow"], "--format 'arrow' is not one of"),
        ([path, "--export", tmp_path / "taken", "--format", "hf"], "--overwrite"),
        ([test_store, "--export", tmp_path / "x", "--format", "parquet"], "embedding store"),
    ):
        result = cli("inspect", *args)
        assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1, result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "taken"]


# ------------------------------------------------------------------------------------------ SyntheticSet.map


def test_map_is_what_evaluate_does_to_a_test_store(condensed):
    path, _ = condensed
    synthetic = SyntheticSet.load(path)
    mine, _ = unit_rows(3, seed=8)
    mapped = synthetic.map("audio", mine["audio"].numpy())  # arrays are fine
    assert torch.equal(mapped, map_embeddings(mine["audio"], synthetic.space_maps.get("audio")))
    with pytest.raises(IbdcError, match="dimension 5"):
        synthetic.map("audio", torch.randn(4, 5))
    with pytest.raises(IbdcError, match="no 'depth'"):
        synthetic.map("depth", torch.randn(4, DIM))


def test_help_imports_neither_datasets_nor_torch():
    code = (
        "import sys\nfrom ibdc_cli.cli import main\n"
        "for args in (['--help'], ['inspect', '--help']):\n"
        "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
        "assert 'datasets' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_cli_maps_a_users_embeddings_into_the_sets_space(condensed, tmp_path, cli):
    path, _ = condensed
    mine, _ = unit_rows(3, seed=9)
    np.save(tmp_path / "mine.npy", mine["image"].numpy())
    out = tmp_path / "mapped.npy"
    args = ["inspect", path, "--map-embeddings", tmp_path / "mine.npy", "--modality", "image", "--out", out]
    result = cli(*args)
    assert result.code == 0 and f"wrote {out} (9 image rows" in result.out, result
    expected = SyntheticSet.load(path).map("image", mine["image"])
    assert np.array_equal(np.load(out), expected.numpy())
    again = cli(*args)
    assert again.code == 2 and "--overwrite" in again.err, again
    np.save(tmp_path / "ints.npy", np.zeros((2, DIM), dtype=np.int64))
    for extra, message in (
        (["--map-embeddings", tmp_path / "mine.npy", "--modality", "image"], "needs --modality and --out"),
        (["--map-embeddings", tmp_path / "ints.npy", "--modality", "image", "--out", tmp_path / "b.npy"], "int64"),
        (["--map-embeddings", tmp_path / "no.npy", "--modality", "image", "--out", tmp_path / "b.npy"], "no.npy"),
    ):
        result = cli("inspect", path, *extra)
        assert result.code == 2 and message in result.err, result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ints.npy", "mapped.npy", "mine.npy"]
