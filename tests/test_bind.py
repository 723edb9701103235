"""`ibdc bind`: the checkpoint reproduces the trained encoder everywhere, the anchor stays frozen, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_image, write_manifest, write_wav
from safetensors.torch import save_file

from ibdc_cli import bind as bind_module
from ibdc_cli.bind import bind_encoder, format_report
from ibdc_cli.data.manifest import read_manifest
from ibdc_cli.data.pairs import one_clip_if_repeated
from ibdc_cli.data.preprocess import load
from ibdc_cli.encoders import training
from ibdc_cli.encoders.frontends import envelope
from ibdc_cli.encoders.imagebind import build_model, load_encoder
from ibdc_cli.encoders.metrics import class_mean_cosines, embed_clips
from ibdc_cli.encoders.training import augment_audio, class_mean_nce, class_means
from ibdc_cli.losses import info_nce
from ibdc_cli.store import open_store, partial_dir, read_tensors

FAST = ["--epochs", "2", "--batch-size", "3", "--workers", "0", "--val-fraction", "0.25", "--device", "cpu"]


def _pairs(directory: Path, rows: int = 8, empty: dict[int, str] | None = None) -> Path:
    """`rows` rows of image + audio + text in two classes; `empty` blanks cells {row: column}."""
    directory.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(rows):
        label = ["low", "high"][i % 2]
        record = {
            "image": write_image(directory / f"img{i}.png", size=(20 + 2 * i, 24), seed=i).name,
            "audio": write_wav(directory / f"snd{i}.wav", 0.3, freq=(220.0, 880.0)[i % 2] + 10 * i).name,
            "text": f"a {label} tone number {i}",
            "label": label,
        }
        for row, column in (empty or {}).items():
            if row == i:
                record[column] = ""
        records.append(record)
    return write_manifest(directory / "pairs.csv", records)


@pytest.fixture(scope="module")
def bound(tmp_path_factory):
    """One bind of audio to image (2 epochs), kept in memory: the result and the manifest."""
    directory = tmp_path_factory.mktemp("bind")
    manifest = _pairs(directory)
    result = bind_encoder(
        manifest,
        ["image", "audio"],
        "image",
        directory / "enc.safetensors",
        epochs=2,
        batch_size=3,
        workers=0,
        val_fraction=0.25,
        device="cpu",
    )
    return result, manifest


def _inputs(manifest: Path, modality: str) -> torch.Tensor:
    m = read_manifest(manifest, [modality], require_label=False)
    return torch.stack([load(modality, row[modality], m.base_dir) for row in m.rows])


def test_checkpoint_reproduces_the_trained_encoder(bound):
    result, manifest = bound
    loaded = load_encoder("imagebind_tiny", checkpoint=result.out)
    assert loaded.describe() == result.encoder.describe()
    assert set(loaded.centers) == set(loaded.whiteners) == {"image"}
    with torch.no_grad():
        for modality in ("image", "audio"):
            x = _inputs(manifest, modality)
            assert torch.equal(loaded.embed(modality, x), result.encoder.embed(modality, x)), modality
    # The anchor's map is fitted on the training rows: a random tower's raw outputs share one direction.
    raw = torch.nn.functional.normalize(build_model("imagebind_tiny")({"vision": _inputs(manifest, "image")})["vision"])
    assert (raw @ raw.T).mean() > 0.9
    _, metadata = read_tensors(result.out)
    info = json.loads(metadata["ibdc"])
    assert info["preset"] == "imagebind_tiny" and info["anchor"] == "image" and info["bound"] == ["audio"]
    assert info["anchor_map"] == "whiten" and info["settings"]["temperature"] == 0.2 and info["ibdc_version"]
    assert info["manifest"]["sha256"] == read_manifest(manifest, ["image"]).sha256
    assert set(info["metrics"]["before"]["audio"]) >= {"r1_to_anchor", "r1_from_anchor", "cos_same_class"}
    assert {"cos_class_means", "cos_class_means_other"} <= set(info["metrics"]["after"]["audio"])
    assert len(info["loss_history"]) == 2 and info["rows"] == {"train": 6, "held_out": 2}
    # From random init a bound audio tower reads the envelope frontend, and the checkpoint says so.
    assert info["frontends"] == {"audio": "envelope"} == loaded.frontends
    assert info["preprocessing"]["audio"]["frontend"] == "envelope"


def test_the_bound_audio_tower_reads_its_frontend_everywhere(bound):
    """`embed` of a bound encoder is its tower on the frontend's output; without the frontend it differs."""
    result, manifest = bound
    loaded = load_encoder("imagebind_tiny", checkpoint=result.out)
    x = _inputs(manifest, "audio")
    with torch.no_grad():
        through = loaded.embed("audio", x)
        loaded.frontends.clear()
        assert torch.allclose(loaded.embed("audio", envelope(x)), through, atol=1e-6)
        assert not torch.allclose(loaded.embed("audio", x), through, atol=1e-3)


def test_audio_frontend_logmel_binds_imagebinds_own_input(tmp_path, cli):
    manifest = _pairs(tmp_path / "data")
    out = tmp_path / "logmel.safetensors"
    assert cli("bind", manifest, "-m", "image,audio", "--out", out, *FAST, "--audio-frontend", "logmel").code == 0
    info = json.loads(read_tensors(out)[1]["ibdc"])
    assert info["frontends"] == {} and "frontend" not in info["preprocessing"]["audio"]
    assert load_encoder("imagebind_tiny", checkpoint=out).frontends == {}
    # auto from a checkpoint keeps what its audio tower was trained on
    again = bind_encoder(
        manifest,
        ["image", "audio"],
        "image",
        tmp_path / "again.safetensors",
        checkpoint=out,
        epochs=1,
        batch_size=3,
        workers=0,
        val_fraction=0.25,
        device="cpu",
    )
    assert again.encoder.frontends == {}


def test_embed_with_the_bound_checkpoint_gives_the_trained_embeddings(bound, tmp_path, cli):
    result, manifest = bound
    store = tmp_path / "store"
    args = ["--batch-size", "8", "--workers", "0", "--device", "cpu"]
    done = cli("embed", manifest, "-m", "image,audio", "--checkpoint", result.out, "--out", store, *args)
    assert done.code == 0, done
    data = open_store(store).load()
    with torch.no_grad():
        for modality in ("image", "audio"):
            assert torch.equal(data[modality], result.encoder.embed(modality, _inputs(manifest, modality))), modality
    assert open_store(store).encoder["weights"] == result.encoder.checkpoint
    assert open_store(store).encoder["frontends"] == {"audio": "envelope"}
    assert "audio envelope" in done.err  # the startup line names the frontend


def test_anchor_tower_is_unchanged_and_the_bound_tower_trained(bound):
    result, _ = bound
    start = build_model("imagebind_tiny", seed=0).state_dict()
    state, _ = read_tensors(result.out)
    for name, value in start.items():
        if ".vision" in name or ".text" in name or ".depth" in name or "postprocessors" in name:
            assert torch.equal(state[name], value), name
    for part in ("modality_preprocessors.audio.", "modality_trunks.audio.", "modality_heads.audio."):
        assert any(not torch.equal(state[n], v) for n, v in start.items() if n.startswith(part)), part


def test_cli_prints_before_after_table_and_json(tmp_path, cli):
    manifest = _pairs(tmp_path / "data", empty={3: "text"})
    out = tmp_path / "enc.safetensors"
    done = cli("bind", manifest, "-m", "image,text", "--anchor", "vision", "--out", out, *FAST, "--val-fraction", "0.5")
    assert done.code == 0, done
    assert "text->image R@1" in done.out and "before" in done.out and f"wrote {out}" in done.out
    again = cli(
        "bind",
        manifest,
        "-m",
        "image,text",
        "--out",
        out,
        *FAST,
        "--label-positives",
        "--overwrite",
        "--json",
        "--epochs",
        "1",
    )
    assert again.code == 0, again
    summary = json.loads(again.out)
    assert summary["bound"] == ["text"] and summary["settings"]["label_positives"] is True
    assert summary["metrics"]["after"]["text"]["rows"] >= 1
    assert not partial_dir(out).exists()


def test_a_checkpoints_recorded_config_fed_back_binds_the_same_encoder(tmp_path, cli):
    manifest = _pairs(tmp_path / "data")
    first, again = tmp_path / "first.safetensors", tmp_path / "again.safetensors"
    assert cli("bind", manifest, "-m", "image,audio", "--out", first, *FAST, "--seed", "3").code == 0
    recorded = json.loads(read_tensors(first)[1]["ibdc"])["config"]
    assert recorded["manifest"] == str(manifest.resolve()) and recorded["seed"] == 3 and "out" not in recorded
    done = cli("bind", "--config", first, "--out", again)
    assert done.code == 0, done
    a, b = read_tensors(first)[0], read_tensors(again)[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra", [[], ["--ema", "0.5"]], ids=["plain", "ema"])
def test_resume_after_interruption_gives_the_same_checkpoint(extra, tmp_path, cli, monkeypatch):
    manifest = _pairs(tmp_path / "data")
    whole, resumed = tmp_path / "whole.safetensors", tmp_path / "resumed.safetensors"
    fast = [*FAST, *extra]
    assert cli("bind", manifest, "-m", "image,audio", "--out", whole, *fast).code == 0

    original = bind_module.save_training_state

    def save_then_interrupt(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(bind_module, "save_training_state", save_then_interrupt)
    stopped = cli("bind", manifest, "-m", "image,audio", "--out", resumed, *fast)
    assert stopped.code == 130 and "--resume" in stopped.err
    assert not resumed.exists() and (partial_dir(resumed) / "state.safetensors").exists()
    monkeypatch.setattr(bind_module, "save_training_state", original)
    done = cli("bind", manifest, "-m", "image,audio", "--out", resumed, *fast, "--resume")
    assert done.code == 0, done
    a, meta_a = read_tensors(whole)
    b, meta_b = read_tensors(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    info_a, info_b = json.loads(meta_a["ibdc"]), json.loads(meta_b["ibdc"])
    assert info_a["loss_history"] == info_b["loss_history"] and info_a["metrics"] == info_b["metrics"]
    assert not partial_dir(resumed).exists()


def test_resume_with_other_settings_is_refused(tmp_path, cli, monkeypatch):
    manifest = _pairs(tmp_path / "data")
    out = tmp_path / "enc.safetensors"

    def interrupt(*args, **kwargs):
        bind_module.atomic_save_tensors(args[0], {"x": torch.zeros(1)})
        raise KeyboardInterrupt

    monkeypatch.setattr(bind_module, "save_training_state", interrupt)
    assert cli("bind", manifest, "-m", "image,audio", "--out", out, *FAST).code == 130
    refused = cli("bind", manifest, "-m", "image,audio", "--out", out, *FAST, "--lr", "0.01", "--resume")
    assert refused.code == 2 and "lr" in refused.err


def test_bf16_autocasts_the_towers_and_keeps_the_loss_float32():
    encoder = load_encoder("imagebind_tiny", seed=0)
    params = training.trainable_parameters(encoder.model, ["audio"])
    generator = torch.Generator().manual_seed(0)
    data = {"inputs.audio": torch.randn(6, 1, 1, 128, 204, generator=generator), "slot.audio": torch.arange(6)}
    anchor = torch.nn.functional.normalize(torch.randn(6, encoder.out_dim, generator=generator), dim=-1)
    labels, rows = torch.tensor([0, 0, 1, 1, 2, 2]), torch.arange(6)
    losses, grads = {}, {}
    for precision in ("fp32", "bf16"):
        encoder.model.zero_grad(set_to_none=True)
        loss = training.bind_loss(encoder, ["audio"], data, anchor, labels, rows, 0.2, precision=precision)
        loss.backward()
        losses[precision] = loss.detach()
        grads[precision] = torch.cat([p.grad.flatten() for p in params.values() if p.grad is not None])
    assert losses["bf16"].dtype == torch.float32 and torch.isfinite(grads["bf16"]).all()
    assert losses["bf16"] != losses["fp32"]  # the tower really ran in bfloat16 ...
    assert torch.allclose(losses["bf16"], losses["fp32"], rtol=2e-2)  # ... and computes the same loss
    cosine = torch.nn.functional.cosine_similarity(grads["bf16"], grads["fp32"], dim=0)
    assert cosine > 0.95, cosine


def test_bind_in_bf16_records_it_and_announces_it(tmp_path, cli):
    manifest = _pairs(tmp_path / "data")
    out = tmp_path / "enc.safetensors"
    done = cli("bind", manifest, "-m", "image,audio", "--out", out, *FAST, "--precision", "bf16", "--json")
    assert done.code == 0, done
    assert "precision bf16" in done.err.splitlines()[0]
    info = json.loads(read_tensors(out)[1]["ibdc"])
    assert info["settings"]["precision"] == "bf16" and info["config"]["precision"] == "bf16"
    audio = [v for k, v in read_tensors(out)[0].items() if ".audio." in k]  # the trained tower
    assert audio and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in audio)


def _foreign_checkpoint(path: Path) -> Path:
    save_file({"x": torch.zeros(1)}, str(path), metadata={"ibdc": json.dumps({"preset": "imagebind_huge"})})
    return path


@pytest.mark.parametrize(
    "case, expected",
    [
        ("one-modality", "at least one other modality"),
        ("anchor-not-listed", "--anchor text is not among"),
        ("row-without-anchor", "row 2 has an empty 'image' cell"),
        ("checkpoint-of-another-preset", "made for preset 'imagebind_huge'"),
        ("existing-out", "exists; choose another --out or pass --overwrite"),
        ("label-positives-without-labels", "needs a 'label' column"),
        ("class-means-without-labels", "--targets class-means needs a 'label' column"),
        ("unknown-targets", "--targets pairs: choose one of rows, class-means"),
        ("frontend-of-a-frozen-tower", "--audio-frontend envelope: only a bound (trained) audio tower"),
        ("unknown-frontend-in-checkpoint", "unknown audio frontend 'cepstrum9'"),
        ("fp16", "--precision fp16: choose one of fp32, bf16"),
    ],
)
def test_bad_input_exits_2_with_one_line(case, expected, tmp_path, cli):
    manifest = _pairs(tmp_path / "data", empty={2: "image"} if case == "row-without-anchor" else None)
    out = tmp_path / "enc.safetensors"
    args = ["-m", "image,audio", "--out", out, *FAST]
    if case == "one-modality":
        args[1] = "image"
    elif case == "anchor-not-listed":
        args += ["--anchor", "text"]
    elif case == "checkpoint-of-another-preset":
        args += ["--checkpoint", _foreign_checkpoint(tmp_path / "huge.safetensors")]
    elif case == "existing-out":
        out.write_bytes(b"keep me")
    elif case in ("label-positives-without-labels", "class-means-without-labels"):
        text = manifest.read_text().splitlines()
        unlabeled = [",".join(line.split(",")[:-1]) for line in text]
        manifest.write_text("\n".join(unlabeled) + "\n")
        args += ["--label-positives"] if case.startswith("label") else ["--targets", "class-means"]
    elif case == "unknown-targets":
        args += ["--targets", "pairs"]
    elif case == "fp16":
        args += ["--precision", "fp16"]
    elif case == "frontend-of-a-frozen-tower":
        args += ["--anchor", "audio", "--audio-frontend", "envelope"]
    elif case == "unknown-frontend-in-checkpoint":
        path = tmp_path / "future.safetensors"
        state = build_model("imagebind_tiny").state_dict()
        metadata = {"ibdc": json.dumps({"preset": "imagebind_tiny", "frontends": {"audio": "cepstrum9"}})}
        save_file({k: v.clone() for k, v in state.items()}, str(path), metadata=metadata)
        args += ["--checkpoint", path]
    result = cli("bind", manifest, *args)
    assert result.code == 2, result
    assert expected in result.err and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert not partial_dir(out).exists()
    assert (out.read_bytes() == b"keep me") if case == "existing-out" else not out.exists()


def test_info_nce_label_positives():
    x = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    # Same-label rows as positives: swapping rows within a class leaves the loss unchanged.
    swapped = x[[1, 0, 3, 2, 5, 4]]
    assert torch.allclose(info_nce(x, swapped, 0.1, labels), info_nce(x, x, 0.1, labels))
    assert info_nce(x, x, 0.1) < info_nce(x, swapped, 0.1)


def test_class_mean_targets_are_cross_entropy_against_the_anchor_class_means():
    generator = torch.Generator().manual_seed(0)
    anchor = torch.nn.functional.normalize(torch.randn(30, 8, generator=generator), dim=-1)
    labels = torch.arange(30) % 3
    means = class_means(anchor, labels, 4)  # class 3 has no rows: a zero row
    assert torch.allclose(means[:3].norm(dim=-1), torch.ones(3)) and torch.equal(means[3], torch.zeros(8))
    own = torch.nn.functional.normalize(anchor[labels == 1].mean(0), dim=-1)
    assert torch.allclose(means[1], own, atol=1e-6)
    # a bound row sitting on its class mean is the loss's optimum direction: lower loss than on another's
    z_right, z_wrong = means[labels[:3]], means[(labels[:3] + 1) % 3]
    assert class_mean_nce(z_right, means, labels[:3], 0.1) < class_mean_nce(z_wrong, means, labels[:3], 0.1)
    logits = z_right @ means.T / 0.1
    assert torch.allclose(
        class_mean_nce(z_right, means, labels[:3], 0.1), torch.nn.functional.cross_entropy(logits, labels[:3])
    )


def test_class_mean_cosine_sees_aligned_classes_that_the_row_cosine_misses():
    # Anchor rows spread around their class direction (as a random tower's centred outputs are); bound
    # rows exactly on it. The classes line up perfectly, yet the mean row-pair cosine is small.
    g = torch.Generator().manual_seed(0)
    classes, per_class, dim = 4, 400, 64
    directions = torch.nn.functional.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    z = directions[labels]
    a = torch.nn.functional.normalize(directions[labels] + torch.randn(len(labels), dim, generator=g), dim=-1)
    same = labels[:, None] == labels[None, :]
    assert float((z @ a.T)[same].mean()) < 0.3
    cosines = class_mean_cosines(z, a, labels)
    assert cosines["cos_class_means"] > 0.9 and abs(cosines["cos_class_means_other"]) < 0.3
    assert class_mean_cosines(z, z, labels)["cos_class_means"] == pytest.approx(1.0)


def test_report_shows_row_and_class_mean_cosines(bound):
    result, _ = bound
    report = format_report(result)
    assert "cosine, same class" in report and "cosine of class means, same class" in report
    assert "cosine of class means, other classes" in report


def test_val_manifest_holds_out_its_own_rows(tmp_path, cli):
    """With --val-manifest every training row trains and the metrics come from the other manifest's rows,
    whose labels are matched to the training classes by name."""
    train = _pairs(tmp_path / "train", rows=8)
    held_out = _pairs(tmp_path / "val", rows=6)
    out = tmp_path / "enc.safetensors"
    done = cli("bind", train, "-m", "image,audio", "--out", out, *FAST, "--val-manifest", held_out, "--json")
    assert done.code == 0, done
    summary = json.loads(done.out)
    assert summary["rows"] == {"train": 8, "held_out": 6} and summary["val_manifest"]["rows"] == 6
    for when in ("before", "after"):
        metrics = summary["metrics"][when]["audio"]
        assert metrics["rows"] == 6 and {"label_r1_to_anchor", "cos_class_means"} <= set(metrics)
    stranger = tmp_path / "val" / "stranger.csv"
    stranger.write_text(held_out.read_text().replace(",low", ",middle"))
    refused = cli(
        "bind", train, "-m", "image,audio", "--out", tmp_path / "b.safetensors", *FAST, "--val-manifest", stranger
    )
    assert refused.code == 2 and "'middle' has no training rows" in refused.err


def test_binding_from_a_bound_checkpoint_keeps_the_anchor_map(bound, tmp_path):
    """A second bind (text, from the first bind's checkpoint) keeps the image map, so audio stays bound."""
    result, manifest = bound
    again = bind_encoder(
        manifest,
        ["image", "text"],
        "image",
        tmp_path / "again.safetensors",
        checkpoint=result.out,
        epochs=1,
        batch_size=3,
        workers=0,
        val_fraction=0.25,
        device="cpu",
    )
    assert torch.equal(again.encoder.centers["image"], result.encoder.centers["image"])
    assert torch.equal(again.encoder.whiteners["image"], result.encoder.whiteners["image"])
    with torch.no_grad():
        for modality in ("image", "audio"):
            x = _inputs(manifest, modality)
            assert torch.equal(again.encoder.embed(modality, x), result.encoder.embed(modality, x)), modality


def test_equal_clips_embed_as_one():
    """Short recordings give equal clips; training on one of them changes no embedding."""
    encoder = load_encoder("imagebind_tiny", seed=0)
    one = torch.randn(4, 1, 1, 128, 204, generator=torch.Generator().manual_seed(0))
    three = one.expand(4, 3, 1, 128, 204).contiguous()
    assert one_clip_if_repeated(three, "audio").shape == (4, 1, 1, 128, 204)
    with torch.no_grad():
        assert torch.allclose(encoder.embed("audio", three), encoder.embed("audio", one), atol=1e-6)
    different = three.clone()
    different[0, 2] += 1
    assert one_clip_if_repeated(different, "audio") is different
    # the held-out metrics embed per row: row 0 from its 3 clips, rows 1-3 from one, the same embeddings
    with torch.no_grad():
        assert torch.allclose(embed_clips(encoder, "audio", different), encoder.embed("audio", different), atol=1e-6)


def test_augment_audio_varies_the_input_reproducibly():
    # one spectrum (a ramp across mel bins), steady in time: a delay leaves it as it is, a mel shift
    # moves it by at most AUDIO_MEL_SHIFT bins, and a gain adds one level to every cell
    ramp = torch.linspace(-1, 1, 128).view(1, 1, 1, 128, 1)
    x = ramp.expand(8, 1, 1, 128, 204).contiguous()
    torch.manual_seed(1)
    a = augment_audio(x)
    torch.manual_seed(1)
    b = augment_audio(x)
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, x)
    step = 2 / 127
    bound = training.AUDIO_GAIN + training.AUDIO_MEL_SHIFT * step + 1e-6
    assert (a - x).abs().max() <= bound  # a variant of the input, not noise
    assert torch.allclose(a[..., :1], a[..., 100:101])  # still steady in time


def test_moving_average_of_weights_is_what_is_saved(tmp_path, cli, monkeypatch):
    """--ema: the checkpoint holds the averaged weights, not the last step's; the same run twice, the same file."""
    manifest = _pairs(tmp_path / "data")
    args = ["-m", "image,audio", "--ema", "0.5", *FAST, "--epochs", "3", "--label-positives"]
    plain = cli("bind", manifest, *args, "--out", tmp_path / "ema.safetensors")
    assert plain.code == 0, plain
    steps = []
    real_update = bind_module.update_average

    def spy(average, params, decay):
        real_update(average, params, decay)
        steps.append({n: (average[n].clone(), p.detach().clone()) for n, p in params.items()})

    monkeypatch.setattr(bind_module, "update_average", spy)
    again = cli("bind", manifest, *args, "--out", tmp_path / "again.safetensors")
    assert again.code == 0, again
    state, metadata = read_tensors(tmp_path / "again.safetensors")
    last_average = {n: a for n, (a, _) in steps[-1].items()}
    last_weights = {n: w for n, (_, w) in steps[-1].items()}
    assert all(torch.equal(state[n], a) for n, a in last_average.items())
    assert any(not torch.equal(state[n], w) for n, w in last_weights.items())  # not the last step's weights
    assert json.loads(metadata["ibdc"])["settings"]["ema"] == 0.5
    assert state.keys() == read_tensors(tmp_path / "ema.safetensors")[0].keys()
    assert all(torch.equal(v, read_tensors(tmp_path / "ema.safetensors")[0][k]) for k, v in state.items())
