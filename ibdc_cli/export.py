"""Exports for `ibdc inspect FILE --export DIR` (`--format files`): a synthetic set as ordinary files.

    DIR/image/0003-eight.png       input-space images, ImageBind's CLIP normalisation undone
    DIR/image_grid.png             classes x examples (the paper's Fig. 5); also for audio, depth, thermal
    DIR/audio/0003-eight.png       input-space fbanks as spectrograms (the 3 clips side by side; padding as silence)
    DIR/audio/0003-eight.wav       the same fbanks turned back into sound (approximate, see `fbank_to_waveform`),
                                   each clip cut to its real frames (the zero-padded tail left out)
    DIR/depth/0003-eight.png       depth / thermal maps as grey images
    DIR/text.npy                   embedding-space rows [M, D] float32, in the set's mapped space; the map
    DIR/center.text.npy ...        itself as center.<m>.npy [D] (and whiten.<m>.npy [D, D]), see ibdc_cli/space.py
    DIR/labels.csv                 row, label, class_name
    DIR/index.csv                  every exported file: file, modality, kind, row, label, class_name

Everything is written into a hidden temp directory next to DIR and renamed to DIR at the end
(`write_directory`, which the Hugging Face and Parquet exports of `export_hf` use too), so an error
never leaves half an export behind.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402
import torchaudio  # noqa: E402
from PIL import Image  # noqa: E402

from ibdc_cli.data.preprocess import (  # noqa: E402
    AUDIO_MEAN,
    AUDIO_MEL_BINS,
    AUDIO_SAMPLE_RATE,
    AUDIO_STD,
    CLIP_MEAN,
    CLIP_STD,
)
from ibdc_cli.errors import IbdcError  # noqa: E402
from ibdc_cli.synthetic_set import SyntheticSet  # noqa: E402
from ibdc_cli.visualize import natural_class_order, save_png  # noqa: E402

# ImageBind's Kaldi fbank: 25 ms windows (400 samples, zero-padded to 512 for the FFT), 10 ms hop.
FBANK_WINDOW = 400
FBANK_FFT = 512
FBANK_HOP = 160
FBANK_LOW_HZ = 20.0
PREEMPHASIS = 0.97
GRIFFIN_LIM_ITERATIONS = 32
FLAT_FRAME_STD = 0.1  # log-mel std across bins below which a frame is flat (see fbank_to_waveform)
# ImageBind pads a clip shorter than 2 s with fbank value 0 (log-mel 0 in every bin; (0 - AUDIO_MEAN) /
# AUDIO_STD once normalised). A flat frame whose level is this close to 0 is padding; digital silence in
# a recording is flat too, but at log(epsilon) = -15.9.
PAD_LEVEL_TOLERANCE = 1.0
GRID_MAX_PER_CLASS = 10
GRID_CELL_INCHES = 1.2
GRID_MIN_WIDTH_INCHES = 4.5  # room for the title when there are only one or two examples per class
DPI = 100
SPACE_MAP_TENSORS = ("center", "whiten")  # the map into the space the set lives in, see ibdc_cli/space.py
INDEX_COLUMNS = ("file", "modality", "kind", "row", "label", "class_name")
T = TypeVar("T")


def export_synthetic_set(path: str | Path, out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write the synthetic set `path` as PNG, WAV, `.npy` and CSV files into the new directory `out`.

    Returns a JSON-ready summary: the directory, the number of files per kind, and the modalities.
    """
    synthetic = SyntheticSet.load(path)
    index = write_directory(out, lambda work: write_export(synthetic, work), overwrite=overwrite)
    kinds: dict[str, int] = {}
    for entry in index:
        kinds[entry["kind"]] = kinds.get(entry["kind"], 0) + 1
    return {
        "export": str(out),
        "format": "files",
        "files": len(index) + 1,
        "kinds": kinds,
        "modalities": synthetic.modalities,
    }


def write_directory(out: str | Path, write: Callable[[Path], T], *, overwrite: bool = False) -> T:
    """`write(work)` into a hidden temp directory next to the new directory `out`, renamed to `out` once
    it returns (an existing `out` is replaced only with `overwrite`); on any error nothing is left."""
    out = Path(out)
    if out.exists() and not (overwrite and out.is_dir()):
        hint = "pass --overwrite to replace it" if out.is_dir() else "it is a file"
        raise IbdcError(f"--export {out} exists; choose another directory or {hint}")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        _make_public(work)
        result = write(work)
        _replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return result


def write_export(synthetic: SyntheticSet, out: Path) -> list[dict[str, Any]]:
    """Write every export file of a loaded set into the existing directory `out`; returns the index rows."""
    tensors = synthetic.tensors
    labels = synthetic.labels.long().tolist()
    class_names = synthetic.class_names
    names = [class_names[label] if label < len(class_names) else str(label) for label in labels]
    spaces = synthetic.tensor_spaces
    index: list[dict[str, Any]] = []

    def add(file: Path, modality: str, kind: str, row: int | str = "") -> None:
        label, name = (labels[row], names[row]) if isinstance(row, int) else ("", "")
        index.append(
            {"file": file.relative_to(out).as_posix(), "modality": modality, "kind": kind, "row": row,
             "label": label, "class_name": name}
        )  # fmt: skip

    for modality in synthetic.modalities:
        values = tensors[modality].float()
        if spaces.get(modality) != "input":
            np.save(out / f"{modality}.npy", values.numpy())
            add(out / f"{modality}.npy", modality, "embeddings")
            for name in (f"{prefix}.{modality}" for prefix in SPACE_MAP_TENSORS):
                if name in tensors:
                    np.save(out / f"{name}.npy", tensors[name].float().numpy())
                    add(out / f"{name}.npy", modality, "space map")
            continue
        folder = out / modality
        folder.mkdir()
        if modality == "audio":
            pictures = []
            for row, fbank in enumerate(values):
                stem = folder / _file_stem(row, names[row])
                spectrogram = denormalise_fbank(fbank)
                _save_spectrogram(stem.with_suffix(".png"), spectrogram, f"row {row}: {names[row]}")
                add(stem.with_suffix(".png"), modality, "spectrogram", row)
                soundfile.write(str(stem.with_suffix(".wav")), fbanks_to_wav(spectrogram).numpy(), AUDIO_SAMPLE_RATE)
                add(stem.with_suffix(".wav"), modality, "audio (approximate)", row)
                pictures.append(_spectrogram_rgb(spectrogram[0]))
        else:
            pictures = [image_array(modality, x) for x in values]
            for row, picture in enumerate(pictures):
                file = folder / f"{_file_stem(row, names[row])}.png"
                Image.fromarray(picture).save(file)
                add(file, modality, "image" if modality == "image" else "grey image", row)
        grid = out / f"{modality}_grid.png"
        what = "real rows selected" if synthetic.metadata.get("kind") == "selection" else "synthetic rows"
        _save_grid(grid, pictures, labels, class_names, f"{modality}: {what} per class ({synthetic.method})")
        add(grid, modality, "grid")

    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "label", "class_name"])
        writer.writerows([row, label, names[row]] for row, label in enumerate(labels))
    add(out / "labels.csv", "", "labels")
    with open(out / "index.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(index)
    return index


# ----------------------------------------------------------------------------------------------------
# model inputs back to media


def image_array(modality: str, x: torch.Tensor) -> np.ndarray:
    """`[H, W, 3]` (image) or `[H, W]` (depth, thermal) uint8 of one model input `[C, H, W]`.

    Images have ImageBind's CLIP mean/std normalisation undone; depth and thermal maps are in [0, 1].
    """
    if modality == "image":
        mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        std = torch.tensor(CLIP_STD).view(3, 1, 1)
        pixels = (x * std + mean).clamp(0, 1).permute(1, 2, 0)
    else:
        pixels = x[0].clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8).numpy()


def denormalise_fbank(fbank: torch.Tensor) -> torch.Tensor:
    """`[clips, 128, frames]` Kaldi log-mel energies of an audio model input `[clips, 1, 128, frames]`."""
    return fbank[:, 0] * AUDIO_STD + AUDIO_MEAN


def padded_frames(log_mel: torch.Tensor) -> torch.Tensor:
    """`[frames]` bool: the zero-padded tail of one clip's log-mel fbank `[128, frames]`.

    ImageBind pads a short clip's fbank with 0 at the end: a trailing run of frames that are flat across
    the mel bins (std < `FLAT_FRAME_STD`) at level 0 (|mean| < `PAD_LEVEL_TOLERANCE`). Only the tail
    counts; a flat frame between sounds is not padding. Once a synthetic set has optimised its padding
    frames they are no longer flat, and are then sound, not padding.
    """
    flat = (log_mel.std(dim=0) < FLAT_FRAME_STD) & (log_mel.mean(dim=0).abs() < PAD_LEVEL_TOLERANCE)
    real = torch.nonzero(~flat).flatten()
    first_pad = int(real[-1]) + 1 if len(real) else 0
    return torch.arange(log_mel.shape[1]) >= first_pad


def real_frame_count(log_mel: torch.Tensor) -> int:
    """Frames of one clip `[128, frames]` before its padded tail (`padded_frames`)."""
    return int((~padded_frames(log_mel)).sum())


def silence_padding(log_mel: torch.Tensor) -> torch.Tensor:
    """A copy of clips `[clips, 128, frames]` with each clip's padded tail set to the quietest value of
    the real frames (of all clips), so a picture draws the padding as silence, the bottom of the colour
    scale, rather than as a band at log-mel 0, which is louder than the quiet parts of speech."""
    padded = torch.stack([padded_frames(clip) for clip in log_mel])  # [clips, frames]
    real_values = log_mel.permute(1, 0, 2)[:, ~padded]  # [128, real frames of all clips]
    floor = float(real_values.min()) if real_values.numel() else 0.0
    return log_mel.masked_fill(padded[:, None, :], floor)


def fbanks_to_wav(log_mel: torch.Tensor) -> torch.Tensor:
    """`[T]` 16 kHz waveform of clips `[clips, 128, frames]`, one clip after another, scaled not to clip.

    Each clip goes through `fbank_to_waveform` whole (its padding silent) and is then cut to its real
    frames (`real_frame_count`) x 10 ms, so the padded tail is left out: a 0.5 s recording gives 3 x 0.48 s
    of WAV rather than 3 x 2 s (ImageBind's 3 clips of a recording shorter than 2 s are the same clip).
    """
    parts = [fbank_to_waveform(clip)[: real_frame_count(clip) * FBANK_HOP] for clip in log_mel]
    return _fit_range(torch.cat(parts))


def kaldi_mel_filterbank() -> torch.Tensor:
    """`[128, 257]`: the mel filterbank of ImageBind's Kaldi fbank (power spectrum bins -> mel bins)."""
    banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
        AUDIO_MEL_BINS, FBANK_FFT, float(AUDIO_SAMPLE_RATE), FBANK_LOW_HZ, 0.0, 100.0, -500.0, 1.0
    )
    return torch.nn.functional.pad(banks, (0, 1))  # Kaldi leaves the Nyquist bin out


def fbank_to_waveform(log_mel: torch.Tensor, iterations: int = GRIFFIN_LIM_ITERATIONS) -> torch.Tensor:
    """An approximate 16 kHz waveform `[T]` whose Kaldi fbank is close to `log_mel` `[128, frames]`.

    Approximate by nature: the mel filterbank keeps 128 of 257 frequency bins and no phase. The power
    spectrum is the non-negative least-squares-style inverse of Kaldi's own filterbank (as torchaudio's
    InverseMelScale does for its filterbanks), the phase comes from Griffin-Lim, and Kaldi's
    pre-emphasis is undone at the end. On av-digits speech, the fbank of the result correlates
    about 0.9 with the original (log-mel, speech frames).
    """
    mel_power = log_mel.double().exp()
    # ImageBind pads short clips with fbank value 0 (energy 1 in every mel bin); no real sound has a
    # flat log-mel frame (mel bins widen with frequency), so such frames are padding: keep them silent.
    mel_power[:, log_mel.std(dim=0) < FLAT_FRAME_STD] = 0.0
    power = torch.linalg.lstsq(kaldi_mel_filterbank().double(), mel_power).solution.clamp(min=0).float()
    griffin_lim = torchaudio.transforms.GriffinLim(
        n_fft=FBANK_FFT,
        win_length=FBANK_WINDOW,
        hop_length=FBANK_HOP,
        power=2.0,
        n_iter=iterations,
        rand_init=False,
    )
    waveform = griffin_lim(power)
    return torchaudio.functional.deemphasis(waveform, PREEMPHASIS)


def _fit_range(waveform: torch.Tensor) -> torch.Tensor:
    """Scale down (never up) so that the WAV does not clip."""
    peak = float(waveform.abs().max()) if waveform.numel() else 0.0
    return waveform * (0.9 / peak) if peak > 0.9 else waveform


# ----------------------------------------------------------------------------------------------------
# pictures


def _save_spectrogram(file: Path, log_mel: torch.Tensor, title: str) -> None:
    """The clips `[clips, 128, frames]` side by side, with axes and a colour bar; padding drawn as silence."""
    clips, _, frames = log_mel.shape
    real = [real_frame_count(clip) for clip in log_mel]
    figure, ax = plt.subplots(figsize=(9, 3.4), dpi=DPI, layout="constrained")
    shown = ax.imshow(
        torch.cat(list(silence_padding(log_mel)), dim=1).numpy(),
        origin="lower",
        aspect="auto",
        cmap="magma",
        interpolation="nearest",
    )
    for clip in range(1, clips):
        ax.axvline(clip * frames - 0.5, color="white", linewidth=1)
    padding = "" if min(real) == frames else f"; real frames {', '.join(map(str, real))}, padding drawn as silence"
    ax.set_title(f"{title} — log-mel fbank, {clips} clips of 2 s{padding}", fontsize=10 if padding else None)
    ax.set_xlabel(f"frame (10 ms; clips of {frames} frames)")
    ax.set_ylabel("mel bin")
    figure.colorbar(shown, ax=ax, label="log mel energy")
    save_png(figure, file, dpi=DPI)


def _spectrogram_rgb(log_mel: torch.Tensor) -> np.ndarray:
    """`[128, frames, 3]` uint8 of one clip `[128, frames]`, low frequencies at the bottom, for the grid;
    the padded tail is drawn as silence (the colour map's darkest colour)."""
    log_mel = silence_padding(log_mel[None])[0]
    low, high = float(log_mel.min()), float(log_mel.max())
    scaled = ((log_mel - low) / ((high - low) or 1.0)).flip(0).numpy()
    return (plt.get_cmap("magma")(scaled)[..., :3] * 255).astype(np.uint8)


def _save_grid(file: Path, pictures: list[np.ndarray], labels: list[int], class_names: list[str], title: str) -> None:
    """Classes as rows, up to `GRID_MAX_PER_CLASS` examples as columns, class names on the left."""
    aspect = "equal" if pictures[0].shape[0] == pictures[0].shape[1] else "auto"  # spectrograms fill the cell
    present = set(labels)
    classes = [c for c in natural_class_order(class_names) if c in present]  # zero, one, ... as in --plot
    classes += sorted(present - set(classes))  # labels beyond the class names, if any
    rows_of = {c: [i for i, label in enumerate(labels) if label == c][:GRID_MAX_PER_CLASS] for c in classes}
    columns = max(len(rows) for rows in rows_of.values())
    figure, axes = plt.subplots(
        len(classes),
        columns,
        figsize=(max(GRID_MIN_WIDTH_INCHES, 1.4 + columns * GRID_CELL_INCHES), 0.5 + len(classes) * GRID_CELL_INCHES),
        dpi=DPI,
        squeeze=False,
        layout="constrained",
    )
    for r, c in enumerate(classes):
        for k, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if k < len(rows_of[c]):
                picture = pictures[rows_of[c][k]]
                ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=255, aspect=aspect)
            else:
                ax.set_axis_off()
        axes[r][0].set_ylabel(class_names[c] if c < len(class_names) else str(c), rotation=0, ha="right", va="center")
    for k in range(columns):
        axes[0][k].set_title(f"#{k + 1}", fontsize=9)
    figure.suptitle(title, fontsize=10)
    save_png(figure, file, dpi=DPI)


# ----------------------------------------------------------------------------------------------------
# files


def _file_stem(row: int, class_name: str) -> str:
    """`0003-eight`: the row number, then the class name made safe for file names."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", class_name).strip("_")[:40] or "class"
    return f"{row:04d}-{safe}"


def _make_public(folder: Path) -> None:
    """Give the temp directory the mode a plain `mkdir` would (mkdtemp's 0700 would make the export private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)


def _replace_dir(work: Path, out: Path) -> None:
    """Move the finished `work` to `out`; an old `out` (only with --overwrite) is moved aside first."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{work.name}"
        out.rename(old)
    work.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
