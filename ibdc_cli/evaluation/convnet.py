"""The `convnet` protocol of `ibdc evaluate`: ConvNets trained from scratch on input-space synthetic data.

The paper's cross-architecture setting (Table 5, after DM and AVDD): one network per modality, the
architecture of the ConvNet guide (`ibdc_cli.encoders.convnet`: depth 3, width 128, instance norm) plus a
linear classifier, trained from scratch on the synthetic model inputs of a `--space input` set; late
fusion (mean of the softmaxes); top-1 accuracy on the REAL test rows. The test rows are exactly the rows
of the test store (so `linear` and `convnet` score the same examples), read from the manifest the store
was embedded from (`index.json` records its path and SHA-256; `--test-manifest` points elsewhere) and
preprocessed as ImageBind does (`ibdc_cli.data.preprocess.load`). Text has no ConvNet: it stays in
embedding space in input-space sets, so this protocol fuses the input-space modalities only.

Resolution. The networks see the set's own model-input tensors, average-pooled by an integer factor so
that their short side is `resolution` (32, DM's ConvNet setting: depth 3 at 32x32): images
`[3, 224, 224]` -> `[3, 32, 32]` (factor 7), fbanks `[3, 1, 128, 204]` -> `[3, 32, 51]` (the 3 clips as
channels, factor 4). Measured with one thread on the 2-core CPU this was written on: a training step
costs 0.46 s per image+audio example at full resolution (46 s per epoch at DPC 10 x 10 classes) and
about 9 ms at 32. `resolution=0` keeps the full resolution (for GPUs).

Schedule (`ConvnetSchedule`, fixed, never chosen on the test split): SGD with momentum 0.9, lr 0.01 and
weight decay 5e-4 as in DM's evaluation, lr x0.1 after half the epochs, cross-entropy, mini-batches of
`batch_size`, `epochs` passes, no augmentation. The test split is read only to score the trained
networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ibdc_cli.data.preprocess import INPUT_SHAPES
from ibdc_cli.data.sources import MediaRows, open_source
from ibdc_cli.encoders.convnet import ConvNet
from ibdc_cli.errors import IbdcError
from ibdc_cli.evaluation.protocol import Features, Protocol
from ibdc_cli.runtime import autocast, log, progress_bar
from ibdc_cli.store import Store
from ibdc_cli.synthetic_set import SyntheticSet


@dataclass
class ConvnetSchedule:
    """The fixed training schedule of the `convnet` protocol (see the module docstring)."""

    epochs: int = 20
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 10
    resolution: int = 32  # short side after average pooling; 0 = the model-input resolution


def network_input(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Model inputs `[N, C, H, W]` (or fbanks `[N, clips, 1, mel, frames]`) as the ConvNet sees them:
    clips as channels, average-pooled by `min(H, W) // resolution` (no pooling when that is 1 or
    `resolution` is 0). Example: `[N, 3, 224, 224]` -> `[N, 3, 32, 32]`."""
    x = x.float()
    if x.ndim == 5:
        x = x.flatten(1, 2)
    factor = min(x.shape[-2:]) // resolution if resolution else 1
    return F.avg_pool2d(x, factor) if factor > 1 else x


def train_convnets(
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    num_classes: int,
    *,
    schedule: ConvnetSchedule,
    seed: int,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> dict[str, ConvNet]:
    """One ConvNet + linear classifier per modality, trained from scratch on `inputs[m]` `[N, C, H, W]`
    (already `network_input`) and `labels` `[N]`."""
    nets = {}
    labels = labels.long().to(device)
    with progress_bar("convnet training", len(inputs) * schedule.epochs) as advance:
        for index, (modality, x) in enumerate(inputs.items()):
            generator = torch.Generator().manual_seed(seed * 1000 + index)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1000 + index)
                net = ConvNet(x.shape[1], num_classes=num_classes).to(device)
            optimizer = torch.optim.SGD(
                net.parameters(), lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay
            )
            decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[schedule.epochs // 2], gamma=0.1)
            x = x.to(device)
            net.train()
            for _ in range(schedule.epochs):
                order = torch.randperm(len(x), generator=generator).to(device)
                for start in range(0, len(x), schedule.batch_size):
                    batch = order[start : start + schedule.batch_size]
                    with autocast(torch.device(device), precision):
                        logits = net(x[batch])
                    loss = F.cross_entropy(logits.float(), labels[batch])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                decay.step()
                advance(1)
            nets[modality] = net.eval()
    return nets


@torch.no_grad()
def fused_accuracy(
    nets: dict[str, ConvNet], inputs: dict[str, torch.Tensor], labels: torch.Tensor, precision: str = "fp32"
) -> float:
    """Top-1 accuracy of late fusion (mean of the per-modality softmaxes) on `inputs[m]` `[N, C, H, W]`."""
    device = next(iter(nets.values())).classifier.weight.device
    probs = 0
    for m, net in nets.items():
        x = inputs[m]
        chunks = []
        for i in range(0, len(x), 256):
            with autocast(device, precision):
                logits = net(x[i : i + 256].to(device))
            chunks.append(F.softmax(logits.float(), dim=-1).cpu())
        probs = probs + torch.cat(chunks)
    return float((probs.argmax(-1) == labels).float().mean())


def convnet_modalities(synthetic: SyntheticSet, modalities: list[str]) -> list[str]:
    """The modalities of `modalities` that the set holds as model inputs; an embedding-space set is refused."""
    chosen = synthetic.input_modalities(modalities)
    if not chosen:
        raise IbdcError(
            f"{synthetic.path}: convnet needs an input-space set (--space input); this one holds embeddings"
        )
    skipped = [m for m in modalities if m not in chosen]
    if skipped:
        log(f"convnet: {', '.join(skipped)} stays in embedding space and has no ConvNet; fusing {', '.join(chosen)}")
    return chosen


class ConvnetProtocol(Protocol):
    """ConvNets per input-space modality of `modalities`, trained with `schedule` on `device` under
    `precision`, scored on the real rows read from the stores' manifests (`manifests`: `{"test": path or
    None, "train": ...}`, None = the path the store records)."""

    name = "convnet"
    metric = "top-1 accuracy (%)"
    models = "ConvNets"

    def __init__(
        self,
        schedule: ConvnetSchedule,
        first: SyntheticSet,
        modalities: list[str],
        *,
        manifests: dict[str, str | Path | None],
        device: torch.device | str = "cpu",
        precision: str = "fp32",
    ) -> None:
        if schedule.epochs < 1 or schedule.batch_size < 1 or schedule.resolution < 0:
            raise IbdcError("--epochs and the batch size must be at least 1")
        self.schedule, self.modalities = schedule, convnet_modalities(first, modalities)
        self.classes = len(first.class_names)
        self.manifests, self.device, self.precision = manifests, device, precision
        self.manifest_paths: dict[str, Path] = {}  # the manifests read, per split

    def check(self, synthetic: SyntheticSet, store: Store) -> None:
        for m in self.modalities:
            shape = tuple(synthetic.tensors[m].shape)
            if shape[1:] != INPUT_SHAPES[m]:
                raise IbdcError(f"{synthetic.path}: {m!r} has shape {shape}, not [n, {INPUT_SHAPES[m]}]")
        synthetic.check_against(store, self.modalities)

    def synthetic_features(self, synthetic: SyntheticSet) -> tuple[Features, torch.Tensor]:
        """The set's model inputs as the networks see them (`network_input`), and its labels `[M]`."""
        inputs = {m: network_input(synthetic.tensors[m], self.schedule.resolution) for m in self.modalities}
        return inputs, synthetic.labels.long()

    def store_features(self, store: Store, synthetic: SyntheticSet, split: str) -> tuple[Features, torch.Tensor]:
        inputs, labels, path = store_inputs(
            store,
            synthetic,
            self.modalities,
            self.manifests.get(split),
            f"--{split}-manifest",
            self.schedule.resolution,
        )
        self.manifest_paths[split] = path
        return inputs, labels

    def train(self, inputs: Features, labels: torch.Tensor, seed: int) -> dict[str, ConvNet]:
        return train_convnets(
            inputs,
            labels,
            self.classes,
            schedule=self.schedule,
            seed=seed,
            device=self.device,
            precision=self.precision,
        )

    def score(self, nets: dict[str, ConvNet], inputs: Features, labels: torch.Tensor) -> dict[str, float]:
        return {self.metric: 100.0 * fused_accuracy(nets, inputs, labels, self.precision)}

    def described(self) -> dict[str, Any]:
        return {"test_manifest": str(self.manifest_paths["test"])}


def store_inputs(
    store: Store,
    synthetic: SyntheticSet,
    modalities: list[str],
    manifest: str | Path | None,
    option: str,
    resolution: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, Path]:
    """Network inputs `{m: [N, C, h, w]}` of a store's rows, read from its manifest, with the store's
    labels `[N]` mapped to the synthetic set's class ids by name, and the manifest's path."""
    data = store.load([])
    labels, rows = synthetic.store_class_ids(store, data["labels"]), data["row"]
    source = open_source(store.index.get("manifest") or {}, list(modalities), manifest, str(store.path), option)
    return _network_inputs(source, tuple(modalities), tuple(rows.tolist()), resolution), labels, source.path


@lru_cache(maxsize=2)
def _network_inputs(source: MediaRows, modalities: tuple[str, ...], rows: tuple[int, ...], resolution: int):
    """Preprocessed, pooled inputs of the source's `rows`; cached so that repeated evaluations read media once
    (`open_source` returns one object per source)."""
    out: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    with progress_bar(f"reading {source.path.name}", len(rows)) as advance:
        for _, inputs in source.inputs(rows, list(modalities)):
            for m in modalities:
                out[m].append(network_input(inputs[m][None], resolution)[0])
            advance(1)
    return {m: torch.stack(v) for m, v in out.items()}
