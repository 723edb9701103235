"""The `envelope` audio frontend: what it keeps (the spectral envelope in utterance time) and what it drops
(onset, gain, tempo, pitch harmonics, padding); its gradient; how a bound checkpoint carries it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ibdc_cli.data.preprocess import AUDIO_MEAN, AUDIO_STD, waveform_input
from ibdc_cli.encoders import frontends
from ibdc_cli.encoders.frontends import dct_matrix, envelope, lifter_matrix

RATE = 16_000


def _speech_like(seconds: float = 0.6, seed: int = 0) -> np.ndarray:
    """A vowel-like sound whose spectrum changes over time: a pulse train through two moving resonances."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 120.0
    wave = np.zeros_like(t)
    for k in range(1, 40):
        formant = 500 + 1500 * t / seconds  # a rising second formant: the "word" changes over time
        weight = np.exp(-(((k * f0 - 700) / 250) ** 2)) + np.exp(-(((k * f0 - formant) / 300) ** 2))
        wave += weight * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
    wave *= np.hanning(len(t)) ** 0.2
    return (0.2 * wave / np.abs(wave).max()).astype(np.float32)


def _input(wave: np.ndarray) -> torch.Tensor:
    return waveform_input(wave, RATE)[:1]  # [1, 1, 128, 204]: the first clip


def test_the_frontend_undoes_the_input_normalisation_of_the_preprocessing():
    assert (frontends.AUDIO_MEAN, frontends.AUDIO_STD) == (AUDIO_MEAN, AUDIO_STD)


def test_lifter_is_a_projection_that_drops_loudness_and_fine_structure():
    d = dct_matrix(128)
    assert torch.allclose(d @ d.T, torch.eye(128, dtype=torch.float64), atol=1e-10)  # orthonormal
    lifter = lifter_matrix(128)
    assert torch.allclose(lifter @ lifter, lifter, atol=1e-5)  # a projection
    bins = torch.arange(128, dtype=torch.float32)
    ripple = torch.cos(math.pi * 40 * (bins + 0.5) / 128)  # cepstral coefficient 40: pitch harmonics
    slope = torch.cos(math.pi * 3 * (bins + 0.5) / 128)  # coefficient 3: the envelope
    assert torch.allclose(lifter @ (slope + ripple + 7.0), slope, atol=1e-4)  # loudness (c0) and ripple go


def test_envelope_ignores_onset_gain_and_padding():
    wave = _speech_like()
    x = _input(wave)
    base = envelope(x)
    silence = torch.full_like(x[..., :20], (-15.9 - AUDIO_MEAN) / AUDIO_STD)  # 0.2 s of constant (silent) frames
    delayed = envelope(torch.cat([silence, x[..., :-20]], -1))
    louder = envelope(x + math.log(4.0) / AUDIO_STD)  # +6 dB: every log-mel energy up by ln 4
    assert base.shape == (1, 1, 128, 204)
    assert torch.allclose(delayed, base, atol=1e-4)
    assert torch.allclose(louder, base, atol=1e-4)
    assert abs(float(base.mean())) < 1e-5 and abs(float(base.std()) - 1) < 1e-3


def test_envelope_ignores_tempo_but_not_what_is_said():
    wave = _speech_like()
    x = _input(wave)
    frames = x[..., : int((x.std(-2) > 1e-7).sum())]  # the clip's own frames, not its padding
    slow = torch.repeat_interleave(frames, 2, dim=-1)[..., :204]  # every frame twice: half the tempo
    slow = torch.cat([slow, x[..., -1:].expand(*x.shape[:-1], 204 - slow.shape[-1])], -1)
    other = envelope(_input(_speech_like(seed=0)[::-1].copy()))  # the same sounds in reverse order
    base, stretched = envelope(x), envelope(slow)
    cosine = lambda a, b: float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))  # noqa: E731
    assert cosine(base, stretched) > 0.99
    assert cosine(base, other) < cosine(base, stretched) - 0.2


def test_envelope_of_silence_is_finite_and_gradients_flow():
    silence = torch.full((2, 1, 1, 128, 204), (0.0 - AUDIO_MEAN) / AUDIO_STD)  # padding only
    assert torch.isfinite(envelope(silence)).all()
    x = _input(_speech_like()).clone().requires_grad_(True)
    (envelope(x) * torch.randn(1, 1, 128, 204, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_envelope_keeps_batch_shape_and_dtype(dtype):
    x = torch.stack([_input(_speech_like(seed=s)) for s in range(3)]).to(dtype)  # [3, 1, 1, 128, 204]
    out = envelope(x)
    assert out.shape == x.shape and out.dtype == dtype
    for i in range(3):  # each clip on its own
        assert torch.allclose(out[i], envelope(x[i]), atol=1e-5)
