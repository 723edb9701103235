"""Fixed input transforms that a bound encoder applies before a tower (`ibdc bind --audio-frontend`).

ImageBind's audio tower reads a 2 s window of 128-bin log-mel at fixed time and frequency positions
(`data.preprocess.load_audio`). From a few thousand recordings of two speakers such a tower learns the
speakers more than the words. Two things carry a spoken digit to a new speaker (docs/bind.md, "What
there is to bind to"): the **spectral envelope** (the low cepstral coefficients, without the frame's
loudness and without the pitch harmonics of the fine spectrum) and **time relative to the utterance**
(where in the word a sound is, not where in the 2 s window). The `envelope` frontend gives the tower
exactly that, in the tower's own input shape `[..., 1, 128, 204]`:

1. undo the input normalisation (back to Kaldi log-mel, nats);
2. keep the voiced frames: not padding (padding frames are constant over the mel bins) and within
   `VOICED_RANGE` nats of the clip's loudest frame (mean over the bins);
3. stretch them, in time order, over all 204 frames (linear interpolation): utterance-relative time;
4. smooth each frame's spectrum with a cepstral lifter: DCT over the mel bins, keep coefficients
   `LIFTER_LOW` to `LIFTER_HIGH - 1`, inverse DCT (`lifter_matrix`, a fixed 128 x 128 map);
5. standardise each clip (mean 0, std 1).

The result does not depend on the onset, the gain or the tempo of the recording (tested). A bound
encoder records its frontends in its checkpoint (`"frontends": {"audio": "envelope"}` in the `ibdc`
metadata) and `Encoder.forward_raw` applies them, so `ibdc embed`, `condense` and `evaluate` with
that `--checkpoint` see what training saw.

Example::

    x = load_audio("one.wav")[None]         # [1, 3, 1, 128, 204]
    envelope(x).shape                       # the same shape
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

# ImageBind's fbank normalisation, `data.preprocess.AUDIO_MEAN` / `AUDIO_STD` (repeated, not imported: the
# preprocessing imports the encoder for its tokenizer; tests/test_frontends.py checks that they agree).
AUDIO_MEAN, AUDIO_STD = -4.268, 9.138
VOICED_RANGE = 6.0  # nats below the loudest frame: quieter frames are silence, breath or the recording's noise
LIFTER_LOW, LIFTER_HIGH = 1, 20  # cepstral coefficients kept: 0 is the frame's loudness, above 19 the pitch
PADDING_STD = 1e-6  # a frame whose log-mel varies less than this over the bins is padding


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II `[n, n]` (float64): `c = D @ x` for a column `x` of `n` values."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi / n * (i + 0.5) * k) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


@lru_cache(maxsize=4)
def lifter_matrix(bins: int, low: int = LIFTER_LOW, high: int = LIFTER_HIGH) -> torch.Tensor:
    """`[bins, bins]` float32: a log-mel frame (a column) to its smooth envelope, cepstral coefficients
    `low` to `high - 1` only (`D.T @ diag(mask) @ D`)."""
    d = dct_matrix(bins)
    mask = torch.zeros(bins, dtype=torch.float64)
    mask[low:high] = 1.0
    return (d.T @ torch.diag(mask) @ d).float()


def envelope(x: torch.Tensor) -> torch.Tensor:
    """The `envelope` frontend (module docstring) of normalised log-mel inputs `x` `[..., 128, T]`, same shape.

    Differentiable in `x` (the voiced frames are chosen without gradient), so `condense --space input`
    can optimise audio inputs through it.
    """
    bins, frames = x.shape[-2], x.shape[-1]
    logmel = x.reshape(-1, bins, frames) * AUDIO_STD + AUDIO_MEAN  # [N, F, T], nats
    with torch.no_grad():
        spoken = logmel.std(1) > PADDING_STD  # [N, T]
        energy = logmel.mean(1)
        loudest = energy.masked_fill(~spoken, -math.inf).amax(1, keepdim=True)
        voiced = spoken & (energy > loudest - VOICED_RANGE)
        voiced = torch.where(voiced.any(1, keepdim=True), voiced, torch.ones_like(voiced))  # silence: every frame
        count = voiced.sum(1, keepdim=True)  # [N, 1]
        order = torch.argsort((~voiced).to(torch.uint8), dim=1, stable=True)  # voiced frames first, in time order
        position = torch.linspace(0, 1, frames, device=x.device, dtype=torch.float64)[None] * (count - 1)
        left = position.floor().long()
        right = torch.minimum(left + 1, count - 1)
        weight = (position - left).to(x.dtype)[:, None, :]  # [N, 1, T]
        left, right = order.gather(1, left), order.gather(1, right)  # [N, T] source frames
    take = lambda index: logmel.gather(2, index[:, None, :].expand(-1, bins, -1))  # noqa: E731
    stretched = take(left) * (1 - weight) + take(right) * weight
    smooth = lifter_matrix(bins).to(device=x.device, dtype=x.dtype) @ stretched
    mean = smooth.mean((1, 2), keepdim=True)
    std = smooth.std((1, 2), keepdim=True)
    return ((smooth - mean) / (std + 1e-6)).reshape(x.shape)


# modality -> frontend name -> transform; "logmel" (ImageBind's own input, nothing applied) is the absence
FRONTENDS = {"audio": {"envelope": envelope}}


def apply_frontend(modality: str, name: str, x: torch.Tensor) -> torch.Tensor:
    """`x` through the frontend `name` of `modality`."""
    return FRONTENDS[modality][name](x)
