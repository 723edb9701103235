"""Media decoding and ImageBind's own preprocessing, one function per modality.

Each `load_<modality>` takes a path (or the text itself) and returns the model-input tensor of ONE example:

    image    [3, 224, 224]       short side 224 (bicubic), center crop, CLIP mean/std
    audio    [3, 1, 128, 204]    mono, 16 kHz, 3 clips of 2 s, Kaldi fbank (128 mel), mean -4.268 / std 9.138
    text     [77] int64          ImageBind's BPE tokenizer; longer texts are truncated
    depth    [1, 224, 224]       single channel, short side 224, center crop, scaled to [0, 1]
    thermal  [1, 224, 224]       as depth

Audio is decoded with soundfile (no FFmpeg needed) and resampled with torchaudio.functional.resample.
Problems with a file raise `MediaError`, which callers turn into a message naming the manifest row.

Media held in memory (a Hugging Face dataset's encoded `Image`/`Audio` cells) are decoded from their
bytes by the same code (`data=`, with `path` only naming them in messages), and a decoded waveform by
`waveform_input`: the same file's bytes give the same tensor as its path.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio
from PIL import Image, UnidentifiedImageError
from torchvision import transforms

from ibdc_cli.errors import IbdcError

IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

AUDIO_SAMPLE_RATE = 16_000
AUDIO_CLIP_SECONDS = 2.0
AUDIO_CLIPS = 3
AUDIO_MEL_BINS = 128
AUDIO_TARGET_FRAMES = 204
AUDIO_MEAN = -4.268
AUDIO_STD = 9.138
# Kaldi's fbank needs at least one 25 ms window: shorter clips are zero-padded to this many samples.
AUDIO_MIN_SAMPLES = int(0.025 * AUDIO_SAMPLE_RATE)

TEXT_CONTEXT = 77

PREPROCESSING = {
    "image": {
        "resize": IMAGE_SIZE,
        "interpolation": "bicubic",
        "crop": "center",
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
    },
    "audio": {
        "sample_rate": AUDIO_SAMPLE_RATE,
        "clips": AUDIO_CLIPS,
        "clip_seconds": AUDIO_CLIP_SECONDS,
        "mel_bins": AUDIO_MEL_BINS,
        "frames": AUDIO_TARGET_FRAMES,
        "frame_length_ms": 25,
        "frame_shift_ms": 10,
        "window": "hanning",
        "htk_compat": True,
        "dither": 0.0,
        "mean": AUDIO_MEAN,
        "std": AUDIO_STD,
        "decoder": "soundfile",
    },
    "text": {"tokenizer": "imagebind-bpe", "context": TEXT_CONTEXT},
    "depth": {"resize": IMAGE_SIZE, "crop": "center", "scale": "[0,1]"},
    "thermal": {"resize": IMAGE_SIZE, "crop": "center", "scale": "[0,1]"},
}

INPUT_SHAPES = {
    "image": (3, IMAGE_SIZE, IMAGE_SIZE),
    "audio": (AUDIO_CLIPS, 1, AUDIO_MEL_BINS, AUDIO_TARGET_FRAMES),
    "text": (TEXT_CONTEXT,),
    "depth": (1, IMAGE_SIZE, IMAGE_SIZE),
    "thermal": (1, IMAGE_SIZE, IMAGE_SIZE),
}

MEDIA_SUFFIXES = {
    "image": {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"},
    "audio": {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"},
    "depth": {".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg"},
    "thermal": {".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg"},
}


class MediaError(IbdcError):
    """A media file that cannot be decoded (missing, empty, corrupt, unsupported)."""


_image_transform = transforms.Compose(
    [
        transforms.Resize(IMAGE_SIZE, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(IMAGE_SIZE),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ]
)

_map_transform = transforms.Compose(
    [
        transforms.Resize(IMAGE_SIZE, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.CenterCrop(IMAGE_SIZE),
    ]
)


# An image whose long side exceeds this many times its short side is first cut to its central part: the
# resize to a short side of 224 would otherwise make it huge (a 10000x1 strip: 2.2 million x 224 pixels),
# and the center crop keeps only the middle anyway.
MAX_ASPECT = 4


def _open_image(path: Path, data: bytes | None = None) -> Image.Image:
    if data is None and not path.is_file():
        raise MediaError(f"file not found: {path}")
    try:
        image = Image.open(path if data is None else io.BytesIO(data))
        image.load()
    except Image.DecompressionBombError as exc:  # PIL's guard against images of absurd pixel counts
        raise MediaError(f"image {path} is too large to decode safely: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MediaError(f"cannot decode image {path}: {exc}") from None
    if min(image.size) == 0:
        raise MediaError(f"image {path} has no pixels ({image.size[0]}x{image.size[1]})")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with 8 bits per channel. 16- and 32-bit grey images (mode I;16, I, F) are scaled from their full
    range: PIL's own convert("RGB") clips them at 255, which leaves a 16-bit image two grey levels."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if image.mode == "F":
            top = max(float(array.max(initial=0)), 1e-12) if array.max(initial=0) > 1 else 1.0
        array = np.clip(array / top * 255.0, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    return image.convert("RGB")


def _central_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the central part of a `width` x `height` picture whose long side is at
    most MAX_ASPECT times its short side (the whole picture when it already is)."""
    keep = MAX_ASPECT * min(width, height)
    left, top = max(width - keep, 0) // 2, max(height - keep, 0) // 2
    return left, top, left + min(width, keep), top + min(height, keep)


def _central_part(image: Image.Image) -> Image.Image:
    """`image`, or for a strip longer than MAX_ASPECT times its width, its central MAX_ASPECT:1 part."""
    box = _central_box(*image.size)
    return image if box == (0, 0, *image.size) else image.crop(box)


def load_image(path: str | Path, data: bytes | None = None) -> torch.Tensor:
    """`[3, 224, 224]` float: any PIL-readable image (grayscale, 16-bit, RGBA, non-square) as ImageBind sees it;
    from the file `path`, or from its bytes `data`."""
    return _image_transform(_central_part(_to_rgb(_open_image(Path(path), data))))


def load_map(path: str | Path, data: bytes | None = None) -> torch.Tensor:
    """`[1, 224, 224]` float in [0, 1]: a depth or thermal map (8/16-bit PNG/TIFF, or a 2-D `.npy`); from the
    file `path`, or from its bytes `data`."""
    path = Path(path)
    if path.suffix == ".npy" or (data is not None and data[:6] == b"\x93NUMPY"):
        if data is None and not path.is_file():
            raise MediaError(f"file not found: {path}")
        try:
            array = np.load(path if data is None else io.BytesIO(data), allow_pickle=False).astype(np.float32)
        except (ValueError, OSError) as exc:
            raise MediaError(f"cannot read {path}: {exc}") from None
    else:
        image = _open_image(path, data)
        array = np.asarray(image, dtype=np.float32)
        if array.ndim == 3:  # colour-mapped maps: use the luminance
            array = np.asarray(image.convert("L"), dtype=np.float32)
        array = array / (65535.0 if array.max(initial=0) > 255 else 255.0)
    if array.ndim != 2 or array.size == 0:
        raise MediaError(f"{path}: expected a 2-D map, got shape {array.shape}")
    left, top, right, bottom = _central_box(array.shape[1], array.shape[0])
    array = array[top:bottom, left:right]  # a long strip: only its centre survives the crop anyway
    if not np.isfinite(array).all():
        raise MediaError(f"{path}: map contains NaN or Inf")
    return _map_transform(torch.from_numpy(np.ascontiguousarray(array))[None])


def decode_audio(path: str | Path, data: bytes | None = None) -> tuple[torch.Tensor, int]:
    """Mono waveform `[T]` float32 and its sample rate, decoded with soundfile from the file `path`, or from
    its bytes `data`."""
    path = Path(path)
    if data is None and not path.is_file():
        raise MediaError(f"file not found: {path}")
    try:
        samples, sample_rate = soundfile.read(
            str(path) if data is None else io.BytesIO(data), dtype="float32", always_2d=True
        )
    except (RuntimeError, soundfile.LibsndfileError, ValueError, EOFError) as exc:
        raise MediaError(f"cannot decode audio {path}: {exc}") from None
    if samples.size == 0:
        raise MediaError(f"audio file has no samples: {path}")
    declared = declared_wav_frames(path, data)
    if declared is not None and declared > len(samples):
        raise MediaError(
            f"audio file is truncated: {path} holds {len(samples)} of the {declared} frames its header declares"
        )
    waveform = torch.from_numpy(samples).mean(dim=1)
    if not torch.isfinite(waveform).all():
        raise MediaError(f"audio contains NaN or Inf: {path}")
    return waveform, int(sample_rate)


def declared_wav_frames(path: Path, data: bytes | None = None) -> int | None:
    """The frame count a WAV file's header declares (its data chunk's size / block align), or None when
    the file is not a RIFF WAV or the size is a streaming writer's placeholder (0 or 0xFFFFFFFF).

    libsndfile reads a truncated WAV without complaint (it trusts the file's length over its header);
    comparing the two is how `decode_audio` notices a copy cut short.
    """
    try:
        with open(path, "rb") if data is None else io.BytesIO(data) as handle:
            if handle.read(12)[:4] != b"RIFF":
                return None
            block_align = None
            while len(header := handle.read(8)) == 8:
                chunk, size = header[:4], int.from_bytes(header[4:], "little")
                if chunk == b"fmt ":
                    fmt = handle.read(size)
                    block_align = int.from_bytes(fmt[12:14], "little") if len(fmt) >= 14 else None
                    handle.seek(size % 2, 1)
                elif chunk == b"data":
                    if not block_align or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                else:
                    handle.seek(size + size % 2, 1)
    except OSError:
        return None
    return None


def clip_bounds(duration: float) -> list[tuple[float, float]]:
    """Start/end seconds of ImageBind's 3 evenly spaced 2 s clips (pytorchvideo's constant sampler)."""
    last_start = max(duration - AUDIO_CLIP_SECONDS, 0.0)
    step = last_start / max(AUDIO_CLIPS - 1, 1)
    return [(i * step, i * step + AUDIO_CLIP_SECONDS) for i in range(AUDIO_CLIPS)]


def waveform_to_fbank(clip: torch.Tensor) -> torch.Tensor:
    """`[1, 128, 204]` normalised log-mel of a 16 kHz mono clip `[T]` (padded or cut to 204 frames)."""
    clip = clip - clip.mean()
    if clip.numel() < AUDIO_MIN_SAMPLES:
        clip = torch.nn.functional.pad(clip, (0, AUDIO_MIN_SAMPLES - clip.numel()))
    fbank = torchaudio.compliance.kaldi.fbank(
        clip[None],
        htk_compat=True,
        sample_frequency=AUDIO_SAMPLE_RATE,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=AUDIO_MEL_BINS,
        dither=0.0,
        frame_length=25,
        frame_shift=10,
    ).T
    frames = fbank.shape[1]
    if frames < AUDIO_TARGET_FRAMES:
        fbank = torch.nn.functional.pad(fbank, (0, AUDIO_TARGET_FRAMES - frames))
    fbank = fbank[:, :AUDIO_TARGET_FRAMES]
    return ((fbank - AUDIO_MEAN) / AUDIO_STD)[None]


def load_audio(path: str | Path, data: bytes | None = None) -> torch.Tensor:
    """`[3, 1, 128, 204]`: ImageBind's audio input; stereo is averaged, any rate resampled, short clips padded;
    from the file `path`, or from its bytes `data`."""
    return audio_input(*decode_audio(path, data))


def waveform_input(samples, sample_rate: int, name: str = "waveform") -> torch.Tensor:
    """`[3, 1, 128, 204]` of a decoded waveform (`[T]`, or `[T, C]` / `[C, T]`: averaged over the shorter
    axis, the channels) at `sample_rate` Hz."""
    waveform = torch.as_tensor(np.asarray(samples, dtype=np.float32))
    if waveform.ndim == 2:  # channels are the shorter axis
        waveform = waveform.mean(dim=1 if waveform.shape[1] <= waveform.shape[0] else 0)
    if waveform.ndim != 1 or waveform.numel() == 0:
        raise MediaError(f"{name}: expected a 1-D or [T, C] waveform with samples, got shape {tuple(waveform.shape)}")
    if not torch.isfinite(waveform).all():
        raise MediaError(f"audio contains NaN or Inf: {name}")
    if not sample_rate or sample_rate <= 0:
        raise MediaError(f"{name}: no sampling rate")
    return audio_input(waveform, int(sample_rate))


def audio_input(waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """`[3, 1, 128, 204]` of a mono waveform `[T]` float32 at `sample_rate` Hz: resampled to 16 kHz, 3 clips."""
    if sample_rate != AUDIO_SAMPLE_RATE:
        waveform = torchaudio.functional.resample(waveform, sample_rate, AUDIO_SAMPLE_RATE)
    duration = waveform.numel() / AUDIO_SAMPLE_RATE
    clips = []
    for start, end in clip_bounds(duration):
        segment = waveform[int(start * AUDIO_SAMPLE_RATE) : int(end * AUDIO_SAMPLE_RATE)]
        clips.append(waveform_to_fbank(segment))
    return torch.stack(clips)


def load_text(text: str) -> torch.Tensor:
    """`[77]` int64 token ids (ImageBind's BPE tokenizer, truncated to 77 tokens)."""
    from ibdc_cli.encoders.imagebind import tokenizer

    if not isinstance(text, str) or not text.strip():
        raise MediaError("empty text")
    return tokenizer()(text)


def load(modality: str, value: str, base_dir: Path) -> torch.Tensor:
    """Model input of one manifest cell: a path relative to `base_dir`, or the text itself."""
    if modality == "text":
        return load_text(value)
    path = Path(value) if Path(value).is_absolute() else base_dir / value
    if modality == "image":
        return load_image(path)
    if modality == "audio":
        return load_audio(path)
    if modality in ("depth", "thermal"):
        return load_map(path)
    raise IbdcError(f"unknown modality {modality!r}")
