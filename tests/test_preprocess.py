"""ImageBind preprocessing: shapes, padding, channel/rate handling, tokenizer truncation."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from conftest import write_image, write_wav
from PIL import Image

from ibdc_cli.data import preprocess as pp
from ibdc_cli.data.preprocess import MediaError


def test_audio_shape_and_short_clip_is_padded(tmp_path):
    full = pp.load_audio(write_wav(tmp_path / "long.wav", 5.0))
    assert full.shape == (3, 1, 128, 204)
    short = pp.load_audio(write_wav(tmp_path / "short.wav", 0.2))
    assert short.shape == (3, 1, 128, 204)
    # 0.2 s gives ~18 frames of fbank; the rest is zero padding, i.e. (0 - mean) / std after normalising.
    pad_value = (0 - pp.AUDIO_MEAN) / pp.AUDIO_STD
    assert torch.allclose(short[0, 0, :, 30:], torch.full((128, 174), pad_value))
    assert not torch.allclose(short[0, 0, :, :15], torch.full((128, 15), pad_value))


def test_stereo_44k_equals_mono_of_same_signal(tmp_path):
    stereo = pp.load_audio(write_wav(tmp_path / "stereo.wav", 2.5, rate=44_100, channels=2))
    mono = pp.load_audio(write_wav(tmp_path / "mono.wav", 2.5, rate=44_100, channels=1))
    assert stereo.shape == (3, 1, 128, 204)
    assert torch.allclose(stereo, mono, atol=1e-5)


def test_resampling_44k_close_to_native_16k(tmp_path):
    native = pp.load_audio(write_wav(tmp_path / "a16.wav", 2.0, rate=16_000))
    resampled = pp.load_audio(write_wav(tmp_path / "a44.wav", 2.0, rate=44_100))
    # same tone, different source rate: the log-mel spectra agree where the tone's energy is
    assert torch.corrcoef(torch.stack([native.flatten(), resampled.flatten()]))[0, 1] > 0.95


def test_clip_bounds_follow_imagebind_sampler():
    assert pp.clip_bounds(10.0) == [(0.0, 2.0), (4.0, 6.0), (8.0, 10.0)]
    assert pp.clip_bounds(1.0) == [(0.0, 2.0)] * 3


def test_image_shapes_nonsquare_grayscale_rgba(tmp_path):
    for mode, size in [("RGB", (300, 120)), ("L", (8, 8)), ("RGBA", (50, 90))]:
        x = pp.load_image(write_image(tmp_path / f"{mode}.png", size=size, mode=mode))
        assert x.shape == (3, 224, 224), mode
    gray = pp.load_image(write_image(tmp_path / "g.png", size=(64, 64), mode="L"))
    # a grayscale image becomes three equal channels before CLIP normalisation
    raw = gray * torch.tensor(pp.CLIP_STD)[:, None, None] + torch.tensor(pp.CLIP_MEAN)[:, None, None]
    assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[1], raw[2], atol=1e-5)


def test_center_crop_keeps_middle(tmp_path):
    # a wide image whose left/right thirds are black and middle white: the crop sees only white
    array = np.zeros((100, 300), dtype=np.uint8)
    array[:, 100:200] = 255
    Image.fromarray(array).save(tmp_path / "wide.png")
    x = pp.load_image(tmp_path / "wide.png")
    raw = x * torch.tensor(pp.CLIP_STD)[:, None, None] + torch.tensor(pp.CLIP_MEAN)[:, None, None]
    assert raw[:, 20:-20, 20:-20].min() > 0.95


def test_text_truncated_to_77_tokens():
    tokens = pp.load_text("word " * 200)
    assert tokens.shape == (77,) and tokens.dtype == torch.int64
    assert int(tokens.argmax()) == 76  # ImageBind reads the text embedding at the end-of-text token
    short = pp.load_text("a handwritten three")
    assert short.shape == (77,) and int((short > 0).sum()) < 10


def test_depth_maps_png16_and_npy(tmp_path):
    depth = (np.linspace(0, 60000, 64 * 48).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(depth).save(tmp_path / "d.png")
    np.save(tmp_path / "d.npy", depth.astype(np.float32) / 65535.0)
    from_png = pp.load_map(tmp_path / "d.png")
    from_npy = pp.load_map(tmp_path / "d.npy")
    assert from_png.shape == from_npy.shape == (1, 224, 224)
    assert 0.0 <= float(from_png.min()) and float(from_png.max()) <= 1.0 + 1e-4
    assert torch.allclose(from_png, from_npy, atol=1e-3)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing.wav", "not found"),
        (lambda p: _write(p / "empty.wav", b""), "cannot decode"),
        (lambda p: _write(p / "junk.wav", b"RIFF....garbage" * 10), "cannot decode"),
    ],
)
def test_bad_audio_raises_media_error(tmp_path, make, match):
    with pytest.raises(MediaError, match=match):
        pp.load_audio(make(tmp_path))


def test_zero_sample_wav_is_an_error(tmp_path):
    soundfile.write(str(tmp_path / "zero.wav"), np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(MediaError, match="no samples"):
        pp.load_audio(tmp_path / "zero.wav")


def test_bad_image_raises_media_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(MediaError, match="cannot decode image"):
        pp.load_image(tmp_path / "bad.png")
