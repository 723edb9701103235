"""Building blocks for training encoder towers against a frozen anchor (`ibdc bind`'s loop).

- which parameters train (`trainable_parameters`: one modality's preprocessor, trunk and head);
- AdamW without decay on biases and norms (`make_optimizer`), linear warm-up then cosine decay
  (`learning_rate`), a moving average of the weights (`update_average`, `averaged_weights`);
- audio augmentation on log-mel inputs (`augment_audio`);
- the losses: symmetric InfoNCE (`losses.info_nce`), InfoNCE against the anchor's class means
  (`class_mean_nce`), and their sum over the bound modalities on a batch of rows (`bind_loss`).

Example::

    params = trainable_parameters(encoder.model, ["audio"])
    optimizer = make_optimizer(params, lr=1e-3, weight_decay=0.05)
    loss = bind_loss(encoder, ["audio"], data, anchor_embeddings, None, rows, temperature=0.07)
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F

from ibdc_cli.data.pairs import inputs_of, rows_of
from ibdc_cli.encoders.imagebind import MODALITY_KEYS, Encoder
from ibdc_cli.losses import info_nce
from ibdc_cli.runtime import autocast

# ----------------------------------------------------------------------------------------------------
# the parameters that train, the optimiser, its schedule, the weight average

# The parts of ImageBindModel that make up one modality's tower; the postprocessors (normalise, fixed
# logit scale) have nothing to train once outputs are re-normalised.
TOWER_PARTS = ("modality_preprocessors", "modality_trunks", "modality_heads")


def trainable_parameters(model: torch.nn.Module, modalities: list[str]) -> dict[str, torch.nn.Parameter]:
    """Unfreeze the towers of `modalities` (everything else stays frozen) and return their parameters."""
    model.requires_grad_(False)
    for m in modalities:
        for part in TOWER_PARTS:
            getattr(model, part)[MODALITY_KEYS[m]].requires_grad_(True)
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def make_optimizer(params: dict[str, torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; as in CLIP/ViT training, no weight decay on biases, norms, position embeddings, class tokens."""
    no_decay = [n for n, p in params.items() if p.ndim < 2 or "pos_embed" in n or "cls_token" in n]
    decay = [n for n in params if n not in no_decay]
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def copy_weights(params: dict[str, torch.nn.Parameter], values: dict[str, torch.Tensor]) -> None:
    """Copy `values` (by name) into the parameters, outside autograd."""
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(values[name])


def update_average(average: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter], decay: float) -> None:
    """One step of the exponential moving average of the weights (`--ema`): average <- decay * average +
    (1 - decay) * weights."""
    with torch.no_grad():
        for name, p in params.items():
            average[name].lerp_(p.detach(), 1.0 - decay)


@contextlib.contextmanager
def averaged_weights(params: dict[str, torch.nn.Parameter], average: dict[str, torch.Tensor] | None):
    """Within the block the parameters hold the moving average (nothing changes when `average` is None)."""
    if average is None:
        yield
        return
    current = {n: p.detach().clone() for n, p in params.items()}
    copy_weights(params, average)
    try:
        yield
    finally:
        copy_weights(params, current)


def learning_rate(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up from 0 to `peak` over `warmup` steps, then cosine decay to 0 at step `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------------
# the losses


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Unit-length class means `[C, D]` of unit vectors `embeddings` `[N, D]` with `labels` `[N]` in 0..C-1
    (a class without rows gets a zero row, which no bound row is ever pulled towards)."""
    one_hot = F.one_hot(labels, classes).float()  # [N, C]
    return F.normalize(one_hot.T @ embeddings, dim=-1)


def class_mean_nce(z: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of unit vectors `z` `[B, D]` against the anchor's class means `targets` `[C, D]`: the positive
    of row i is its class's mean, the negatives the other classes' means (`--targets class-means`).

    It is cross-entropy over C classes with the classifier's weights fixed to the anchor's class means,
    so every step sees every class, whatever the batch holds.
    """
    return F.cross_entropy(z @ targets.T / temperature, labels)


# What a bound row is pulled towards (`--targets`): the anchor embeddings of the batch's rows (CLIP,
# ImageBind), or the anchor's class means over all training rows.
TARGETS = ("rows", "class-means")


# ----------------------------------------------------------------------------------------------------
# augmentation, and the loss of a batch

# Audio augmentation (`--augment`), on the normalised log-mel inputs `[B, S, 1, 128, 204]` (frames 10 ms):
# what differs between speakers and recordings more than between takes of one speaker. Chosen on
# fsdd-mnist's val speaker (docs/bind.md): this mild set bound; adding a spectral tilt, noise and
# SpecAugment masks kept the loss at chance for as long as it was run.
AUDIO_MAX_DELAY = 30  # frames: the onset moves right by up to 0.3 s (the clip's tail wraps to its head)
AUDIO_MEL_SHIFT = 3  # mel bins up or down: a longer or shorter vocal tract (VTLP-like)
AUDIO_GAIN = 0.4  # +-15 dB: log-mel energies shift by up to 0.4 fbank std


def augment_audio(x: torch.Tensor) -> torch.Tensor:
    """A random variant of each audio input `x` `[B, S, 1, F, T]`: a delay, a mel shift and a gain. Draws
    from torch's global stream (seeded, and checkpointed with the training state)."""
    batch, bins, frames = x.shape[0], x.shape[-2], x.shape[-1]
    delay = torch.randint(0, AUDIO_MAX_DELAY + 1, (batch, 1))
    index = (torch.arange(frames)[None, :] - delay) % frames  # [B, T]
    x = x.gather(-1, index.to(x.device).view(batch, 1, 1, 1, frames).expand_as(x))
    shift = torch.randint(-AUDIO_MEL_SHIFT, AUDIO_MEL_SHIFT + 1, (batch, 1))
    index = (torch.arange(bins)[None, :] - shift).clamp(0, bins - 1)  # [B, F]; edge bins repeat
    x = x.gather(-2, index.to(x.device).view(batch, 1, 1, bins, 1).expand_as(x))
    return x + AUDIO_GAIN * (2 * torch.rand(batch, 1, 1, 1, 1) - 1).to(x.device)


AUGMENTATIONS = {"audio": augment_audio}


def bind_loss(
    encoder: Encoder,
    bound: list[str],
    data: dict[str, Any],
    anchor_embeddings: torch.Tensor,
    labels: torch.Tensor | None,
    rows: torch.Tensor,
    temperature: float,
    augment: bool = False,
    class_targets: torch.Tensor | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Sum over the bound modalities of InfoNCE between their embeddings and the anchor's, on batch `rows`:
    against the batch's anchor embeddings, or with `class_targets` `[C, D]` against the anchor's class
    means (`labels` then required). With `augment`, the inputs of modalities in `AUGMENTATIONS` (audio) are
    randomly varied first. `precision` (`--precision`) autocasts the towers' passes; the embeddings are
    normalised and the loss computed in float32."""
    device = encoder.device
    total = torch.zeros((), device=device)
    for m in bound:
        present = rows_of(data, m, rows)
        if len(present) < 2:  # a single pair has no negatives
            continue
        x = inputs_of(data, m, present).to(device)
        if augment and m in AUGMENTATIONS:
            x = AUGMENTATIONS[m](x)
        with autocast(device, precision):
            z = encoder.embed(m, x)  # float32: embed normalises the tower's output in float32
        if class_targets is not None:
            total = total + class_mean_nce(z, class_targets.to(device), labels[present].to(device), temperature)
            continue
        a = anchor_embeddings[present].to(device)
        total = total + info_nce(z, a, temperature, None if labels is None else labels[present].to(device))
    return total
