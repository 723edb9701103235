"""`ibdc inspect --plot / --export`: real pictures, readable exports, atomic writes, and bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from ibdc_cli import export
from ibdc_cli.data.preprocess import AUDIO_SAMPLE_RATE, CLIP_MEAN, CLIP_STD
from ibdc_cli.store import load_synthetic_set, save_synthetic_set
from ibdc_cli.visualize import figure_size_pixels


@pytest.fixture(scope="module")
def embedding_set(digits, tmp_path_factory):
    """imagebinddc, audio + image, DPC 2, a few iterations: a loss history with every term."""
    from ibdc_cli.condense import CondenseConfig, condense

    out = tmp_path_factory.mktemp("emb") / "syn.safetensors"
    config = CondenseConfig(modalities=["audio", "image"], dpc=2, iterations=5, num_freqs=128)
    condense(digits["train"], out, config, device="cpu")
    return out


@pytest.fixture(scope="module")
def input_set(digits, tmp_path_factory):
    """A random selection in input space (pixels and fbanks of real rows; text stays an embedding)."""
    from ibdc_cli.condense import CondenseConfig, condense

    out = tmp_path_factory.mktemp("input") / "input.safetensors"
    config = CondenseConfig(modalities=["audio", "image", "text"], dpc=1, method="random", space="input")
    condense(digits["train"], out, config, device="cpu")
    return out


def _png(path, size) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size, (path, image.size)
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10, f"{path} looks blank"
    return pixels


def _no_leftovers(folder) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], list(folder.iterdir())


def test_plot_embedding_space_set(embedding_set, digits, tmp_path, cli):
    out = tmp_path / "syn.png"
    result = cli("inspect", embedding_set, "--plot", out, "--json")
    assert result.code == 0, result
    info = json.loads(result.out)["plot"]
    assert info["panels"] == ["audio", "image", "loss"] and info["projection"] in ("pca", "tsne")
    assert info["real_rows"] == 220 and info["synthetic_rows"] == 20  # 22 real rows per class, all drawn
    assert info["loss_terms_off"] == {"cross": "cross_form none"}  # the default objective has no cross term
    _png(out, figure_size_pixels(3))
    human = cli("inspect", embedding_set, "--plot", out)
    assert human.code == 2 and "--overwrite" in human.err, human
    human = cli("inspect", embedding_set, "--plot", out, "--overwrite", "--real-per-class", 5)
    assert human.code == 0 and "wrote plot" in human.out and "loss total" in human.out, human
    _no_leftovers(tmp_path)


def test_plot_tsne_with_named_real_store(embedding_set, digits, tmp_path, cli):
    out = tmp_path / "tsne.png"
    result = cli("inspect", embedding_set, "--plot", out, "--projection", "tsne", "--real", digits["test"], "--json")
    assert result.code == 0, result
    info = json.loads(result.out)["plot"]
    assert info["projection"] == "tsne" and info["real_store"] == str(digits["test"])
    _png(out, figure_size_pixels(3))


def test_plot_input_space_set_embeds_its_rows(input_set, tmp_path, cli):
    out = tmp_path / "input.png"
    result = cli("inspect", input_set, "--plot", out, "--json")
    assert result.code == 0, result
    assert json.loads(result.out)["plot"]["panels"] == ["audio", "image", "text"]  # a selection: no loss curves
    _png(out, figure_size_pixels(3))


def test_plot_store(digits, tmp_path, cli):
    out = tmp_path / "store.png"
    result = cli("inspect", digits["train"], "--plot", out, "--real-per-class", 10, "--json")
    assert result.code == 0, result
    info = json.loads(result.out)
    assert info["kind"] == "store" and info["plot"]["panels"] == ["image", "audio", "text"]
    assert info["plot"]["rows"] == 100
    _png(out, figure_size_pixels(3))


def test_export_embedding_space_set(embedding_set, tmp_path, cli):
    out = tmp_path / "files"
    (tmp_path / "taken").mkdir()
    result = cli("inspect", embedding_set, "--export", out)
    assert result.code == 0 and f"wrote {out}/" in result.out, result
    assert out.stat().st_mode & 0o077 == (tmp_path / "taken").stat().st_mode & 0o077  # not mkdtemp's 0700
    tensors, meta = load_synthetic_set(embedding_set)
    for modality in ("audio", "image"):
        array = np.load(out / f"{modality}.npy")
        assert array.shape == (20, 256) and array.dtype == np.float32
        assert np.allclose(array, tensors[modality].numpy())
        for name in (f"center.{modality}", f"whiten.{modality}"):
            if name in tensors:
                assert np.allclose(np.load(out / f"{name}.npy"), tensors[name].numpy())
    with open(out / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["label"]) for r in rows] == tensors["labels"].tolist()
    assert [r["class_name"] for r in rows] == [meta["class_names"][i] for i in tensors["labels"].tolist()]
    with open(out / "index.csv") as handle:
        listed = {r["file"] for r in csv.DictReader(handle)}
    maps = {f"{name}.npy" for name in tensors if name.startswith(("center.", "whiten."))}
    assert "center.audio.npy" in maps and listed == {"audio.npy", "image.npy", "labels.csv", *maps}
    _no_leftovers(tmp_path)


def test_export_input_space_set(input_set, tmp_path):
    out = tmp_path / "files"
    summary = export.export_synthetic_set(input_set, out)
    tensors, meta = load_synthetic_set(input_set)
    names = [meta["class_names"][i] for i in tensors["labels"].tolist()]
    maps = len([name for name in tensors if name in ("center.text", "whiten.text")])
    expected = {"spectrogram": 10, "audio (approximate)": 10, "grid": 2, "image": 10, "embeddings": 1, "labels": 1}
    assert summary["kinds"] == {**expected, **({"space map": maps} if maps else {})}
    # images: 224 x 224 RGB with the CLIP normalisation undone (back to the model input within 8-bit rounding)
    first = out / "image" / f"0000-{names[0]}.png"
    pixels = _png(first, (224, 224)).astype(np.float32) / 255
    renormalised = (torch.from_numpy(pixels).permute(2, 0, 1) - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(
        CLIP_STD
    )[:, None, None]
    assert (renormalised - tensors["image"][0]).abs().max() < 0.02
    assert len(list((out / "image").glob("*.png"))) == 10
    _png(out / "image_grid.png", Image.open(out / "image_grid.png").size)
    # audio: spectrogram pictures and WAVs of the 3 clips at 16 kHz, each cut to its real frames of 10 ms:
    # av-digits words are shorter than 2 s, so their zero-padded tail is left out
    waveform, rate = soundfile.read(str(out / "audio" / f"0000-{names[0]}.wav"))
    real_frames = [export.real_frame_count(clip) for clip in export.denormalise_fbank(tensors["audio"][0])]
    assert 0 < max(real_frames) < 204
    assert rate == AUDIO_SAMPLE_RATE and waveform.ndim == 1 and len(waveform) == 160 * sum(real_frames)
    assert 0 < np.abs(waveform).max() <= 0.9 + 1e-4
    _png(out / "audio" / f"0000-{names[0]}.png", (900, 340))
    _png(out / "audio_grid.png", Image.open(out / "audio_grid.png").size)
    assert np.load(out / "text.npy").shape == (10, 256)


def test_export_depth_as_grey_pictures(tmp_path):
    depth = torch.linspace(0, 1, 224)[None, None, :].expand(4, 1, 224, 224).contiguous()
    syn = tmp_path / "depth.safetensors"
    metadata = {
        "kind": "synthetic",
        "method": "dm",
        "modalities": ["depth"],
        "tensor_spaces": {"depth": "input"},
        "encoder": {},
    }
    save_synthetic_set(
        syn, {"depth": depth, "labels": torch.tensor([0, 0, 1, 1])}, {**metadata, "class_names": ["a b", "c"]}
    )
    export.export_synthetic_set(syn, tmp_path / "files")
    with Image.open(tmp_path / "files" / "depth" / "0002-c.png") as image:
        assert image.mode == "L" and image.size == (224, 224)
        assert np.asarray(image)[0, 0] == 0 and np.asarray(image)[0, -1] == 255
    assert (tmp_path / "files" / "depth" / "0000-a_b.png").exists()
    _png(tmp_path / "files" / "depth_grid.png", Image.open(tmp_path / "files" / "depth_grid.png").size)


def test_failed_export_leaves_nothing(input_set, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "fbank_to_waveform", broken)
    with pytest.raises(RuntimeError):
        export.export_synthetic_set(input_set, tmp_path / "files")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("space_map", ["whiten", "center", "none"])
def test_inspect_counts_the_whole_data_statistics_a_set_carries(digits, tmp_path, cli, space_map):
    """A space map is a statistic of the whole training store: a mean [D] (center), and a [D, D] whitening
    matrix too (whiten), per modality; inspect counts them next to the numbers in the rows."""
    from ibdc_cli.condense import CondenseConfig, condense
    from ibdc_cli.store import open_store

    out = tmp_path / f"{space_map}.safetensors"
    config = CondenseConfig(modalities=["audio", "image"], dpc=1, method="random", space_map=space_map)
    condense(digits["train"], out, config)
    dims = open_store(digits["train"]).modalities
    per_modality = {"whiten": lambda d: d + d * d, "center": lambda d: d, "none": lambda d: 0}[space_map]
    result = cli("inspect", out, "--json")
    assert result.code == 0, result
    numbers = json.loads(result.out)["numbers"]
    assert numbers["rows"] == 10 * (dims["audio"] + dims["image"])  # 10 classes x DPC 1
    assert numbers["statistics"] == per_modality(dims["audio"]) + per_modality(dims["image"])
    human = cli("inspect", out)
    assert human.code == 0 and f"{numbers['statistics']:,} of whole-training-data statistics" in human.out, human
    assert ("count them too or condense with --space-map none" in human.out) == (space_map != "none")


def test_bad_input_exit_2(embedding_set, digits, tmp_path, cli):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(embedding_set.read_bytes()[:200])
    text = tmp_path / "notes.safetensors"
    text.write_text("not a tensor file\n")
    tensors, meta = load_synthetic_set(embedding_set)
    moved = tmp_path / "moved.safetensors"
    save_synthetic_set(moved, tensors, {**meta, "source_store": {"path": str(tmp_path / "gone")}})
    (tmp_path / "taken").mkdir()
    cases = [
        ([truncated, "--plot", tmp_path / "a.png"], "truncated or foreign"),
        ([text, "--export", tmp_path / "a"], "truncated or foreign"),
        ([embedding_set, "--plot", tmp_path / "a.png", "--real", tmp_path / "nowhere"], "not an ibdc embedding store"),
        ([moved, "--plot", tmp_path / "a.png"], "no longer exists; pass --real"),
        ([embedding_set, "--plot", tmp_path / "a.png", "--projection", "umap"], "--projection 'umap'"),
        ([embedding_set, "--plot", tmp_path / "a.jpg"], ".png"),
        ([embedding_set, "--export", tmp_path / "taken"], "--overwrite"),
        ([digits["train"], "--export", tmp_path / "a"], "embedding store"),
        ([digits["train"], "--plot", tmp_path / "a.png", "--real", digits["test"]], "--real names"),
    ]
    for args, expect in cases:
        result = cli("inspect", *args)
        assert result.code == 2 and expect in result.err and "Traceback" not in result.err, (args, result)
        assert len(result.err.strip().splitlines()) == 1, result
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "a").exists()
    assert list((tmp_path / "taken").iterdir()) == []
    _no_leftovers(tmp_path)
