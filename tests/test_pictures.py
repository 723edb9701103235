"""Pictures people read: class order, synthetic markers over real points, loss terms that were off, the
default projection (chosen by measurement), and audio padding drawn and played as silence."""

from __future__ import annotations

import inspect as pyinspect
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import soundfile
import torch

from ibdc_cli import export, visualize
from ibdc_cli.data.preprocess import AUDIO_MEAN, AUDIO_SAMPLE_RATE, AUDIO_STD, waveform_to_fbank
from ibdc_cli.store import save_synthetic_set

AV_DIGITS_NAMES = ["eight", "five", "four", "nine", "one", "seven", "six", "three", "two", "zero"]  # ids as stored
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


# ----------------------------------------------------------------------------------------------------
# 1. classes in natural order


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (AV_DIGITS_NAMES, WORDS),
        (["Two", "ten", "one", "Twenty"], ["one", "Two", "ten", "Twenty"]),  # number words, any case
        (["10", "2", "1", "0"], ["0", "1", "2", "10"]),  # integers: numeric, not "10" < "2"
        (["class10", "class2", "Class1", "b"], ["b", "Class1", "class2", "class10"]),  # natural sort
        (["dog", "cat", "bird"], ["bird", "cat", "dog"]),
    ],
)
def test_natural_class_order(names, expected):
    order = visualize.natural_class_order(names)
    assert sorted(order) == list(range(len(names)))  # a permutation of the ids: the ids are unchanged
    assert [names[i] for i in order] == expected


def test_legend_and_colours_follow_the_natural_order():
    colours = visualize.class_colours(AV_DIGITS_NAMES)
    tab10 = plt.get_cmap("tab10")(np.arange(10))
    for rank, word in enumerate(WORDS):  # zero gets the first colour, nine the tenth
        assert np.allclose(colours[AV_DIGITS_NAMES.index(word)], tab10[rank])
    figure = plt.figure()
    visualize._legend(figure, AV_DIGITS_NAMES, colours, synthetic_label="synthetic row")
    legend = figure.legends[0]
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels == ["real row", "synthetic row", *WORDS]
    for word, handle in zip(WORDS, legend.legend_handles[2:], strict=True):
        assert np.allclose(handle.get_color(), colours[AV_DIGITS_NAMES.index(word)])
    plt.close(figure)


def test_store_class_names_read_in_order(digits):
    from ibdc_cli.store import open_store

    names = open_store(digits["train"]).class_names
    assert [names[i] for i in visualize.natural_class_order(names)] == WORDS


# ----------------------------------------------------------------------------------------------------
# 2. synthetic markers over the real cloud, without hiding it


def test_synthetic_markers_do_not_hide_real_points():
    rng = np.random.default_rng(0)
    real_xy, syn_xy = rng.normal(size=(50, 2)), rng.normal(size=(6, 2))
    real_labels, syn_labels = np.arange(50) % 3, np.array([0, 0, 1, 1, 2, 2])
    figure, ax = plt.subplots()
    visualize.draw_real_and_synthetic(
        ax, real_xy, real_labels, syn_xy, syn_labels, visualize.class_colours(list("abc"))
    )
    real, synthetic = ax.collections  # real first: drawn underneath
    assert len(real.get_offsets()) == 50 and len(synthetic.get_offsets()) == 6
    assert synthetic.get_zorder() > real.get_zorder()  # on top ...
    fill = synthetic.get_facecolors()
    assert len(fill) == 6 and (fill[:, 3] < 1).all() and (fill[:, 3] > 0).all()  # ... but see-through
    assert np.allclose(fill[:, :3], visualize.class_colours(list("abc"))[syn_labels][:, :3])  # class colour
    assert np.allclose(synthetic.get_edgecolors()[:, :3], 0)  # black edges tell them from the dots
    assert (synthetic.get_sizes() < 110).all()  # smaller than the old paper-sized markers (s=110)
    assert (real.get_sizes() < synthetic.get_sizes().min()).all()
    plt.close(figure)


# ----------------------------------------------------------------------------------------------------
# 3. loss terms that were off are not drawn, and are named


def test_loss_terms_off_are_left_out_and_named():
    history = {
        "uni": [3.0, 2.0, 1.5],
        "cross": [0.0, 0.0, 0.0],
        "joint": [0.4, 0.3, 0.2],
        "total": [3.0, 2.0, 1.5],
    }
    settings = {"lambda_uni": 1.0, "lambda_cross": 1.0, "lambda_joint": 0.0, "cross_form": "paper"}
    off = visualize.loss_terms_off(history, settings, "imagebinddc")
    assert off == {"cross": "0 at every step", "joint": "lambda_joint 0"}
    figure, ax = plt.subplots()
    drawn = visualize.plot_loss_history(ax, history, off)
    assert drawn == ["uni", "total"]
    assert [line.get_label() for line in ax.get_lines()] == ["uni", "total"]  # no flat line at 0
    assert "cross" in ax.get_title() and "joint" in ax.get_title() and "off" in ax.get_title()
    plt.close(figure)
    # a form of "none" is off too, whatever the history says; AVDD's terms are weighed by lambda_cross / _joint
    assert visualize.loss_terms_off({"cross": [1.0], "total": [1.0]}, {"cross_form": "none"}, "imagebinddc") == {
        "cross": "cross_form none"
    }
    avdd = {"dm": [1.0], "icm": [2.0], "cgm": [3.0], "total": [1.0]}
    assert visualize.loss_terms_off(avdd, {"lambda_cross": 0.0, "lambda_joint": 1.0}, "avdd") == {
        "icm": "lambda_cross 0"
    }
    assert visualize.loss_terms_off({"total": [0.0, 0.0]}, {}, "dm") == {}  # the total is always drawn


# ----------------------------------------------------------------------------------------------------
# 4. the default projection is the one that separates the classes better


def test_default_projection_is_the_measured_one(digits):
    """k-NN (k=5) leave-one-out accuracy on the 2-D points of av-digits train (22 rows per class, whitened as
    a synthetic set's plot draws them): the default projection must score higher (docs/commands/inspect.md)."""
    scores = visualize.projection_scores(digits["train"], space_map="whiten")
    assert set(scores) == {"image", "audio", "text"}
    mean = {p: np.mean([scores[m][p]["knn5"] for m in scores]) for p in visualize.PROJECTIONS}
    other = next(p for p in visualize.PROJECTIONS if p != visualize.DEFAULT_PROJECTION)
    assert mean[visualize.DEFAULT_PROJECTION] > mean[other] + 0.1, scores
    for modality in scores:
        assert scores[modality]["full"]["knn5"] >= scores[modality][visualize.DEFAULT_PROJECTION]["knn5"] - 0.1
    for function in (visualize.plot_store, visualize.plot_synthetic_set):
        assert pyinspect.signature(function).parameters["projection"].default == visualize.DEFAULT_PROJECTION


def test_cli_default_projection_is_the_measured_one():
    from ibdc_cli import cli

    assert pyinspect.signature(cli.inspect).parameters["projection"].default == visualize.DEFAULT_PROJECTION


# ----------------------------------------------------------------------------------------------------
# 5. audio: zero-padding drawn as silence, WAVs cut to the real clip


def _tone_fbank(seconds: float) -> torch.Tensor:
    """`[1, 128, 204]` normalised fbank of a 440 Hz tone of `seconds` (padded by ImageBind's rule)."""
    t = torch.arange(int(seconds * AUDIO_SAMPLE_RATE)) / AUDIO_SAMPLE_RATE
    return waveform_to_fbank(0.3 * torch.sin(2 * math.pi * 440 * t))


def test_padded_frames_are_the_zero_tail():
    fbank = _tone_fbank(0.5)  # 8,000 samples: 1 + (8000 - 400) // 160 = 48 Kaldi frames, then 156 of padding
    assert torch.allclose(fbank[0, :, 48:], torch.tensor((0 - AUDIO_MEAN) / AUDIO_STD))  # what padding looks like
    log_mel = export.denormalise_fbank(fbank[None])[0]  # [128, 204]
    assert export.padded_frames(log_mel).tolist() == [False] * 48 + [True] * 156
    assert export.real_frame_count(log_mel) == 48
    assert export.real_frame_count(export.denormalise_fbank(_tone_fbank(2.5)[None])[0]) == 204  # no padding
    # digital silence is flat too, but at log(epsilon), not 0: quiet sound, not padding
    quiet = log_mel.clone()
    quiet[:, 48:] = -15.9424
    assert export.real_frame_count(quiet) == 204
    # a flat zero frame between sounds is not the padded tail
    gap = log_mel.clone()
    gap[:, 10] = 0.0
    assert export.real_frame_count(gap) == 48


def test_padding_is_drawn_as_silence():
    log_mel = export.denormalise_fbank(torch.stack([_tone_fbank(0.5)] * 3))  # [3, 128, 204]
    silenced = export.silence_padding(log_mel)
    assert torch.equal(silenced[:, :, :48], log_mel[:, :, :48])  # real frames untouched
    assert (silenced[:, :, 48:] == log_mel[:, :, :48].min()).all()  # padding = the quietest real value
    assert log_mel[:, :, 48:].abs().max() < 1e-3 < log_mel[:, :, :48].max() - log_mel[:, :, :48].min()
    # the grid tile: padded columns are the colour map's darkest colour, not the colour of log-mel 0
    tile = export._spectrogram_rgb(log_mel[0])  # [128, 204, 3]
    darkest = (np.array(plt.get_cmap("magma")(0.0)[:3]) * 255).astype(np.uint8)
    assert (tile[:, 48:] == darkest).all()
    assert not (tile[:, :48] == darkest).all(axis=-1).all()


def test_exported_wav_is_cut_to_the_real_clip(tmp_path, monkeypatch):
    short = torch.stack([_tone_fbank(0.5)] * 3)  # a 0.5 s recording: ImageBind's 3 clips are the same clip
    full = torch.stack([_tone_fbank(2.5)] * 3)  # 2.5 s: every clip is 2 s of sound, no padding
    syn = tmp_path / "audio.safetensors"
    meta = {
        "kind": "selection",
        "method": "random",
        "modalities": ["audio"],
        "tensor_spaces": {"audio": "input"},
        "encoder": {},
    }
    tensors = {"audio": torch.stack([short, full]), "labels": torch.tensor([0, 1])}
    save_synthetic_set(syn, tensors, {**meta, "class_names": ["two", "one"]})
    figures = []

    def keep_grid(figure, file, dpi=None):
        if file.name == "audio_grid.png":
            figures.append([ax.get_ylabel() for ax in figure.axes if ax.get_ylabel()])
        plt.close(figure)
        file.write_bytes(b"")

    export.export_synthetic_set(syn, tmp_path / "files")
    waveform, rate = soundfile.read(str(tmp_path / "files" / "audio" / "0000-two.wav"))
    assert rate == AUDIO_SAMPLE_RATE and len(waveform) == 3 * 48 * 160  # 3 x 0.48 s, not 3 x 2 s
    assert np.abs(waveform).max() > 0.01
    waveform, _ = soundfile.read(str(tmp_path / "files" / "audio" / "0001-one.wav"))
    assert len(waveform) == 3 * 203 * 160  # unpadded clips keep their whole length (Griffin-Lim's 203 hops)
    # the grid lists the classes in natural order too (one before two, though "two" has id 0)
    monkeypatch.setattr(export, "save_png", keep_grid)
    export.export_synthetic_set(syn, tmp_path / "again")
    assert figures == [["one", "two"]]
