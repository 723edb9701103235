"""The `retrieval` protocol of `ibdc evaluate`, for paired data without labels (audio-text, Clotho-style).

SPEC §4: one projection head per modality onto a shared space, trained with symmetric InfoNCE
(`losses.info_nce`) on the synthetic pairs only, then Recall@1/5/10 in both directions on the real test
store's pairs (row i of one modality belongs with row i of the other). The schedule
(`RetrievalSchedule`) is fixed; the test split is read only to score the heads.

Example (the runner, `ibdc_cli.evaluation.evaluate`)::

    result = evaluate("syn.safetensors", "stores/test", protocol="retrieval", seeds=3, train_store="stores/train")
    result["metrics"]["audio->text R@10"]["mean"]   # percent
    evaluate(["k20-0.safetensors", "k20-1.safetensors"], "stores/test", protocol="retrieval")  # sets x seeds
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ibdc_cli.errors import IbdcError
from ibdc_cli.evaluation.protocol import Features, Protocol, spread_words
from ibdc_cli.losses import info_nce
from ibdc_cli.space import SpaceMap, map_embeddings
from ibdc_cli.store import Store
from ibdc_cli.synthetic_set import SyntheticSet

RECALL_AT = (1, 5, 10)
HEADS = ("linear", "mlp")


@dataclass
class RetrievalSchedule:
    """The fixed training schedule of the projection heads, chosen a priori (see docs/commands/evaluate.md).

    Full-batch up to `batch_size` pairs (in-batch negatives), Adam. The same schedule trains on 20
    synthetic pairs and on the whole training store, so the ratio compares data, not schedules.
    """

    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    temperature: float = 0.07  # fixed, CLIP's initial value; not learned, so it can't drift per run
    shared_dim: int = 128
    head: str = "linear"  # or "mlp": Linear-ReLU-Linear with `hidden` units
    hidden: int = 256
    batch_size: int = 256


# ------------------------------------------------------------------------------------------- the math


def recall_at_k(query: torch.Tensor, gallery: torch.Tensor, ks: tuple[int, ...] = RECALL_AT) -> dict[int, float]:
    """Recall@k in percent: how often gallery row i is among the k nearest (cosine) of query row i.

    `query`, `gallery`: `[N, D]`, row i of each is one pair. Ties count against the match (its rank is
    the number of gallery rows at least as similar, itself excluded, plus one).
    """
    if query.shape[0] != gallery.shape[0]:
        raise ValueError(f"paired rows expected, got {query.shape[0]} queries and {gallery.shape[0]} gallery rows")
    sim = F.normalize(query.float(), dim=-1) @ F.normalize(gallery.float(), dim=-1).T
    match = sim.diagonal().unsqueeze(1)
    rank = (sim >= match).sum(1) - 1  # 0 = the match is the nearest
    return {k: 100.0 * float((rank < k).float().mean()) for k in ks}


def _head(schedule: RetrievalSchedule, dim: int) -> torch.nn.Module:
    if schedule.head == "linear":
        return torch.nn.Linear(dim, schedule.shared_dim)
    return torch.nn.Sequential(
        torch.nn.Linear(dim, schedule.hidden), torch.nn.ReLU(), torch.nn.Linear(schedule.hidden, schedule.shared_dim)
    )


def train_projection_heads(
    pairs: dict[str, torch.Tensor], schedule: RetrievalSchedule, seed: int
) -> dict[str, torch.nn.Module]:
    """Two heads, one per modality, trained with symmetric InfoNCE on `pairs` (`{m: [N, D_m]}`, rows paired).

    Each epoch visits the pairs once in a seeded random order, in batches of `schedule.batch_size`.
    """
    (ma, xa), (mb, xb) = pairs.items()
    xa, xb = F.normalize(xa.float(), dim=-1), F.normalize(xb.float(), dim=-1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = {ma: _head(schedule, xa.shape[1]), mb: _head(schedule, xb.shape[1])}
    params = [p for h in heads.values() for p in h.parameters()]
    optimizer = torch.optim.Adam(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(schedule.epochs):
        order = torch.randperm(len(xa), generator=generator)
        for start in range(0, len(xa), schedule.batch_size):
            batch = order[start : start + schedule.batch_size]
            if len(batch) < 2:  # a batch of one pair has no negatives
                continue
            loss = info_nce(heads[ma](xa[batch]), heads[mb](xb[batch]), schedule.temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return {m: h.eval() for m, h in heads.items()}


@torch.no_grad()
def retrieval_scores(heads: dict[str, torch.nn.Module], pairs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Recall@1/5/10 (%) in both directions, keyed "a->b R@k", of the heads on paired rows `pairs`."""
    (ma, xa), (mb, xb) = pairs.items()
    za = heads[ma](F.normalize(xa.float(), dim=-1))
    zb = heads[mb](F.normalize(xb.float(), dim=-1))
    scores = {}
    for (qm, q), (gm, g) in (((ma, za), (mb, zb)), ((mb, zb), (ma, za))):
        for k, value in recall_at_k(q, g).items():
            scores[f"{qm}->{gm} R@{k}"] = value
    return scores


# ---------------------------------------------------------------------------------------- the protocol


class RetrievalProtocol(Protocol):
    """Projection heads on the two paired `modalities`, trained with `schedule`; recall@k both ways."""

    name = "retrieval"
    metric = "recall@k (%)"
    rows = "pairs"

    def __init__(self, schedule: RetrievalSchedule, first: SyntheticSet, modalities: list[str]) -> None:
        if schedule.head not in HEADS:
            raise IbdcError(f"retrieval head {schedule.head!r} is not one of: {', '.join(HEADS)}")
        if schedule.epochs < 1:
            raise IbdcError("--epochs must be at least 1")
        if len(modalities) != 2:
            raise IbdcError(
                f"--protocol retrieval needs exactly two paired modalities; {first.path} has "
                f"{len(modalities)} ({', '.join(modalities)})"
            )
        self.schedule, self.modalities = schedule, modalities

    def check(self, synthetic: SyntheticSet, store: Store) -> None:
        if synthetic.input_modalities(self.modalities):
            raise IbdcError(
                f"{synthetic.path} holds model inputs (--space input); --protocol retrieval needs embeddings"
            )
        synthetic.check_against(store, self.modalities)

    def synthetic_features(self, synthetic: SyntheticSet) -> tuple[Features, None]:
        return {m: synthetic.tensors[m] for m in self.modalities}, None

    def store_features(self, store: Store, synthetic: SyntheticSet, split: str) -> tuple[Features, None]:
        return _store_pairs(store, self.modalities, synthetic.space_maps), None

    def train(self, pairs: Features, labels: None, seed: int) -> dict[str, torch.nn.Module]:
        return train_projection_heads(pairs, self.schedule, seed)

    def score(self, heads: dict[str, torch.nn.Module], pairs: Features, labels: None) -> dict[str, float]:
        return retrieval_scores(heads, pairs)

    def result(self, sets, seeds, test_rows, metrics, train_rows) -> dict[str, Any]:
        """`{"protocol": "retrieval", "sets", ..., "metrics": {"audio->text R@1": {"mean", "std", "runs",
        "per_set", "set_std" [, "whole_mean", "whole_std", "whole_runs", "ratio"]}, ...} [, "train_pairs"]}`."""
        first = sets[0]
        result: dict[str, Any] = {
            "protocol": "retrieval",
            "metric": self.metric,
            "sets": [str(s.path) for s in sets],
            "method": first.method,
            "dpc": first.dpc,
            "pairs": int(first.tensors[self.modalities[0]].shape[0]),
            "pseudo_labels": first.metadata.get("pseudo_labels"),
            "modalities": self.modalities,
            "test_pairs": test_rows,
            "seeds": seeds,
            "schedule": asdict(self.schedule),
            "metrics": metrics,
        }
        if train_rows is not None:
            result["train_pairs"] = train_rows
        return result


def _store_pairs(store: Store, modalities: list[str], space_maps: dict[str, SpaceMap]) -> dict[str, torch.Tensor]:
    """A store's paired embeddings `{m: [N, D]}`, mapped into the synthetic set's space (`center.<m>`, `whiten.<m>`)."""
    data = store.load(modalities)
    if data[modalities[0]].shape[0] < 2:
        raise IbdcError(f"store {store.path} has {data[modalities[0]].shape[0]} rows; retrieval needs at least 2")
    return {m: map_embeddings(data[m], space_maps.get(m)) for m in modalities}


def format_retrieval(result: dict[str, Any]) -> str:
    """The result as a small table for people: one row per direction, R@1/5/10 as mean ± std (over sets x
    seeds), the std between the sets' means when there are several, and the whole-data rows with `--train`."""
    metrics = result["metrics"]
    directions = list(dict.fromkeys(name.split(" ")[0] for name in metrics))
    spread = spread_words(len(result["sets"]), result["seeds"])
    lines = [
        f"{result['method']}, {result['pairs']} pairs: recall@k (%) on {result['test_pairs']} test pairs, {spread}"
    ]
    whole = "whole_mean" in next(iter(metrics.values()))
    header = f"{'':<14}" + "".join(f"{'R@' + str(k):>16}" for k in RECALL_AT)
    lines.append(header)
    for direction in directions:
        cells = [metrics[f"{direction} R@{k}"] for k in RECALL_AT]
        lines.append(f"{direction:<14}" + "".join(f"{c['mean']:>9.1f} ± {c['std']:<4.1f}" for c in cells))
        if len(result["sets"]) > 1:
            lines.append(
                f"{'  between sets':<14}" + "".join(f"{'± ' + format(c['set_std'], '.1f'):>16}" for c in cells)
            )
        if whole:
            lines.append(
                f"{'  whole data':<14}" + "".join(f"{c['whole_mean']:>9.1f} ± {c['whole_std']:<4.1f}" for c in cells)
            )
            ratios = "".join(f"{c['ratio']:>16.3f}" if c["ratio"] is not None else f"{'-':>16}" for c in cells)
            lines.append(f"{'  ratio':<14}" + ratios)
    return "\n".join(lines)
