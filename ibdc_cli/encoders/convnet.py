"""The ConvNet guide of DM / AVDD (and the paper's Tables 1 and 5): a small randomly initialised CNN.

`ConvNet(in_channels)`: depth 3 blocks of conv 3x3 (width 128) -> instance norm -> ReLU -> 2x2 average
pool, then an adaptive average pool to 4x4, flattened: `[B, 128 * 16]` features. Instance norm is a
GroupNorm with one group per channel, as in the DM code. Images enter as `[B, 3, 224, 224]`, audio as
ImageBind's fbanks `[B, 3, 1, 128, 204]` with the 3 clips as channels, depth/thermal as `[B, 1, 224, 224]`.

The pooled 4x4 grid keeps the feature size of DM's 32x32 setting (2048) whatever the input size, so
characteristic functions over it stay affordable and every modality has the same dimension (the paired
cross-modal terms multiply features elementwise).
"""

from __future__ import annotations

import torch
from torch import nn

WIDTH = 128
DEPTH = 3
GRID = 4
IN_CHANNELS = {"image": 3, "audio": 3, "depth": 1, "thermal": 1}


class ConvNet(nn.Module):
    def __init__(self, in_channels: int, width: int = WIDTH, depth: int = DEPTH, num_classes: int | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            channels = width
        layers += [nn.AdaptiveAvgPool2d(GRID), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.out_dim = width * GRID * GRID
        self.classifier = nn.Linear(self.out_dim, num_classes) if num_classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:  # audio: [B, clips, 1, mel, frames] -> clips as channels
            x = x.flatten(1, 2)
        features = self.features(x)
        return self.classifier(features) if self.classifier is not None else features


def random_guides(modalities: list[str], generator: torch.Generator, device) -> dict[str, ConvNet]:
    """A freshly initialised ConvNet per modality, drawn from `generator` (one draw per iteration)."""
    guides = {}
    for m in modalities:
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            guides[m] = ConvNet(IN_CHANNELS[m]).to(device).requires_grad_(False)
    return guides
