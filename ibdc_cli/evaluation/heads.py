"""The `linear` (default) and `mlp` protocols: one head per modality on frozen unit-norm embeddings.

The heads are trained on the synthetic rows only (input-space sets, `--space input`, are first embedded
by the encoder recorded in the file), with a fixed schedule (`HeadSchedule`); late fusion = the mean of
the heads' softmaxes; top-1 accuracy on the test store's rows, mapped into the set's space.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ibdc_cli.evaluation.protocol import Features, Protocol
from ibdc_cli.evaluation.rows_on_disk import RowsOnDisk, spill
from ibdc_cli.runtime import autocast
from ibdc_cli.space import map_embeddings
from ibdc_cli.store import Store
from ibdc_cli.synthetic_set import SyntheticSet


@dataclass
class HeadSchedule:
    """The fixed training schedule of the evaluation heads (Adam, mini-batches of 256).

    Chosen on validation data, never a test split: first by 5-fold cross-validation of whole-data training
    on the av-digits train store, then re-checked on the fsdd-mnist val split for whole data and for
    training sets of 10 to 200 rows (`benchmarks/head_schedule.py`, docs/benchmarks.md): among lr
    {0.1, 0.01, 0.001} x weight decay {0, 5e-4, 5e-3}, lr 0.01 with 5e-4 is best on whole data and within
    1.1 points of the best on every small set. 5e-4 is also the weight decay of DC/DM's evaluation.

    `max_steps` caps the optimiser steps of one head: a store of N rows trains
    `min(epochs, ceil(max_steps / ceil(N / batch_size)))` epochs. Every store and set measured so far
    (up to 16,896 rows) stays below it and trains the full 300 epochs; a 200,000-row whole-data run
    trains 26 epochs instead of 300 (12× less time; converged, docs/benchmarks.md "Condensation at
    scale")."""

    epochs: int = 300
    max_steps: int = 20_000
    lr: float = 0.01
    weight_decay: float = 5e-4
    hidden: int = 256  # mlp only
    batch_size: int = 256


IN_MEMORY_BYTES = 1 << 30
"""A store whose mapped embeddings take more than this (1 GiB; 200k rows x 1024-d x 2 modalities is
1.6 GiB) is read from a temporary file per modality instead of memory (`rows_on_disk`): the same heads
and scores, memory bounded by a shard, ~0.4 ms more per optimiser step on this machine's CPU."""


def epochs_of(rows: int, schedule: HeadSchedule) -> int:
    """The epochs a head trains on `rows` rows: `schedule.epochs`, fewer when that would pass `max_steps`."""
    batches = max(1, math.ceil(rows / schedule.batch_size))
    return min(schedule.epochs, max(1, math.ceil(schedule.max_steps / batches)))


def _head(protocol: str, dim: int, classes: int, hidden: int) -> torch.nn.Module:
    if protocol == "linear":
        return torch.nn.Linear(dim, classes)
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes))


def train_heads(
    features: dict[str, torch.Tensor],
    labels: torch.Tensor,
    num_classes: int,
    *,
    protocol: str,
    schedule: HeadSchedule,
    seed: int,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> dict[str, torch.nn.Module]:
    """One head per modality, trained with cross-entropy on `features[m]` `[N, D]` and `labels` `[N]`, on
    `device`, its forward passes under `precision`'s autocast (the loss in float32). `features[m]` may be
    `RowsOnDisk` (rows already normalised): each mini-batch is then read from its file."""
    heads = {}
    device = torch.device(device)
    labels = labels.to(device)
    for index, (modality, x) in enumerate(features.items()):
        generator = torch.Generator().manual_seed(seed * 1000 + index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + index)
            head = _head(protocol, x.shape[1], num_classes, schedule.hidden).to(device)
        optimizer = torch.optim.Adam(head.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
        if not isinstance(x, RowsOnDisk):
            x = F.normalize(x.float(), dim=-1).to(device)
        for _ in range(epochs_of(len(x), schedule)):
            order = torch.randperm(len(x), generator=generator)
            if not isinstance(x, RowsOnDisk):  # rows in memory are indexed where they are; files by CPU ids
                order = order.to(device)
            for start in range(0, len(x), schedule.batch_size):
                batch = order[start : start + schedule.batch_size]
                with autocast(device, precision):
                    logits = head(x[batch].to(device))
                loss = F.cross_entropy(logits.float(), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        heads[modality] = head.eval()
    return heads


@torch.no_grad()
def fused_accuracy(
    heads: dict[str, torch.nn.Module], features: dict[str, torch.Tensor], labels: torch.Tensor, precision: str = "fp32"
) -> float:
    """Top-1 accuracy of late fusion: the mean of the per-modality softmaxes (on the heads' device).
    `RowsOnDisk` features (normalised when written) are scored chunk by chunk."""
    if not isinstance(next(iter(features.values())), RowsOnDisk):
        predicted = _fused_predictions(heads, features, precision, normalize=True)
        return int(predicted.eq(labels.cpu()).sum()) / max(1, len(predicted))
    correct, start = 0, 0
    for parts in zip(*(features[m].chunks() for m in heads), strict=True):
        chunk = dict(zip(heads, parts, strict=True))
        predicted = _fused_predictions(heads, chunk, precision, normalize=False)
        correct += int(predicted.eq(labels[start : start + len(predicted)].cpu()).sum())
        start += len(predicted)
    return correct / max(1, start)


def _fused_predictions(
    heads: dict[str, torch.nn.Module], features: dict[str, torch.Tensor], precision: str, *, normalize: bool
) -> torch.Tensor:
    probs = []
    for m, head in heads.items():
        device = next(head.parameters()).device
        x = F.normalize(features[m].float(), dim=-1) if normalize else features[m]
        with autocast(device, precision):
            logits = head(x.to(device))
        probs.append(F.softmax(logits.float(), dim=-1).cpu())
    return torch.stack(probs).mean(0).argmax(-1)


class HeadsProtocol(Protocol):
    """`linear` or `mlp` (`name`): heads on the embeddings of `modalities`, trained with `schedule` on
    `device` under `precision`; `checkpoint` is the encoder of input-space sets whose recorded file moved."""

    metric = "top-1 accuracy (%)"

    def __init__(
        self,
        name: str,
        schedule: HeadSchedule,
        first: SyntheticSet,
        modalities: list[str],
        *,
        checkpoint: str | Path | None = None,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        in_memory_bytes: int | None = None,
    ) -> None:
        self.name, self.schedule, self.modalities = name, schedule, modalities
        self.classes = len(first.class_names)
        self.checkpoint, self.device, self.precision = checkpoint, device, precision
        self.in_memory_bytes = IN_MEMORY_BYTES if in_memory_bytes is None else in_memory_bytes

    def synthetic_features(self, synthetic: SyntheticSet) -> tuple[Features, torch.Tensor]:
        """`{m: [M, D]}` in the set's space (model inputs embedded by the recorded encoder), labels `[M]`."""
        features = synthetic.embeddings(
            self.modalities, checkpoint=self.checkpoint, device=self.device, precision=self.precision
        )
        return features, synthetic.labels.long()

    def store_features(self, store: Store, synthetic: SyntheticSet, split: str) -> tuple[Features, torch.Tensor]:
        """A store's embeddings `{m: [N, D]}`, mapped into the set's space (ibdc_cli/space.py), and its labels
        `[N]` as the set's class ids (matched by class name). Above `in_memory_bytes` the mapped rows go to
        temporary files (`RowsOnDisk`), normalised as the heads read them."""
        space_maps = synthetic.space_maps
        # mapped shard by shard as they are read: the store's rows are held once
        transforms = {m: functools.partial(map_embeddings, space_map=space_maps.get(m)) for m in self.modalities}
        if store.num_rows * sum(store.modalities[m] for m in self.modalities) * 4 > self.in_memory_bytes:

            def prepare(m: str, x: torch.Tensor) -> torch.Tensor:
                return F.normalize(transforms[m](x).float(), dim=-1)

            dims = {m: store.modalities[m] for m in self.modalities}
            files, store_labels = spill(store.shards(self.modalities), self.modalities, dims, prepare)
            return files, synthetic.store_class_ids(store, store_labels)
        data = store.load(self.modalities, transforms=transforms)
        labels = synthetic.store_class_ids(store, data["labels"])
        return {m: data[m] for m in self.modalities}, labels

    def train(self, features: Features, labels: torch.Tensor, seed: int) -> dict[str, torch.nn.Module]:
        return train_heads(
            features,
            labels,
            self.classes,
            protocol=self.name,
            schedule=self.schedule,
            seed=seed,
            device=self.device,
            precision=self.precision,
        )

    def score(self, heads: dict[str, torch.nn.Module], features: Features, labels: torch.Tensor) -> dict[str, float]:
        return {self.metric: 100.0 * fused_accuracy(heads, features, labels, self.precision)}
