"""Paired data without labels (audio-text, Clotho-style): the retrieval protocol.

- `evaluate_retrieval` (`ibdc evaluate --protocol retrieval`, SPEC §4): one projection head per modality
  onto a shared space, trained with symmetric InfoNCE on the synthetic pairs only, then Recall@1/5/10 in
  both directions on the real test store's pairs (row i of one modality belongs with row i of the
  other). The schedule (`RetrievalSchedule`) is fixed; the test split is read only to score the heads.

Example::

    result = evaluate_retrieval("syn.safetensors", "stores/test", seeds=3, train_store="stores/train")
    result["metrics"]["audio->text R@10"]["mean"]   # percent
    evaluate_retrieval(["k20-0.safetensors", "k20-1.safetensors"], "stores/test")  # over sets x seeds
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ibdc_cli.errors import IbdcError
from ibdc_cli.evaluate import _check_compatible, load_sets, spread_words, summarize_sets, whole_data_fields
from ibdc_cli.runtime import log
from ibdc_cli.space import SpaceMap, map_embeddings, space_maps_of_set
from ibdc_cli.store import open_store

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


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP's loss) on paired rows `a`, `b` `[B, d]`: row i's positive is row i."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


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


# ------------------------------------------------------------------------------------------ the recipe


def evaluate_retrieval(
    synthetic: str | Path | Sequence[str | Path],
    test_store: str | Path,
    *,
    seeds: int = 3,
    train_store: str | Path | None = None,
    schedule: RetrievalSchedule | None = None,
    modalities: list[str] | None = None,
) -> dict[str, Any]:
    """Recall@1/5/10 both ways of heads trained on the pairs of `synthetic`, on `test_store`'s pairs.

    `synthetic` is one set or several of one configuration (`evaluate.load_sets`). Returns
    `{"protocol": "retrieval", "sets", "seeds", ..., "metrics": {"audio->text R@1": {"mean", "std", "runs",
    "per_set", "set_std" [, "whole_mean", "whole_std", "whole_runs", "ratio"]}, ...}}`: mean ± std over sets
    x seeds (`evaluate.summarize_sets`); "ratio" is synthetic / whole.
    """
    schedule = schedule or RetrievalSchedule()
    if schedule.head not in HEADS:
        raise IbdcError(f"retrieval head {schedule.head!r} is not one of: {', '.join(HEADS)}")
    if seeds < 1:
        raise IbdcError("--seeds must be at least 1")
    if schedule.epochs < 1:
        raise IbdcError("--epochs must be at least 1")
    sets = load_sets(synthetic)
    first, first_tensors, meta = sets[0]
    modalities = modalities or list(meta["modalities"])
    if len(modalities) != 2:
        raise IbdcError(
            f"--protocol retrieval needs exactly two paired modalities; {first} has "
            f"{len(modalities)} ({', '.join(modalities)})"
        )
    test = open_store(test_store)
    for path, tensors, set_meta in sets:
        missing = [m for m in modalities if m not in tensors]
        if missing:
            raise IbdcError(f"synthetic set {path} has no {missing[0]!r} (it has: {', '.join(set_meta['modalities'])})")
        if any(set_meta.get("tensor_spaces", {}).get(m) == "input" for m in modalities):
            raise IbdcError(f"{path} holds model inputs (--space input); --protocol retrieval needs embeddings")
        _check_compatible(set_meta, test, modalities, path)

    runs: dict[str, list[dict[str, Any]]] = {}
    for path, tensors, _ in sets:
        test_pairs = _store_pairs(test, modalities, space_maps_of_set(tensors, modalities))
        for seed in range(seeds):
            heads = train_projection_heads({m: tensors[m] for m in modalities}, schedule, seed)
            for name, value in retrieval_scores(heads, test_pairs).items():
                runs.setdefault(name, []).append({"set": str(path), "seed": seed, "value": value})
    metrics = {name: summarize_sets(values) for name, values in runs.items()}
    result: dict[str, Any] = {
        "protocol": "retrieval",
        "metric": "recall@k (%)",
        "sets": [str(path) for path, _, _ in sets],
        "method": meta.get("method"),
        "dpc": meta.get("dpc"),
        "pairs": int(first_tensors[modalities[0]].shape[0]),
        "pseudo_labels": meta.get("pseudo_labels"),
        "modalities": modalities,
        "test_pairs": int(test_pairs[modalities[0]].shape[0]),
        "seeds": seeds,
        "schedule": asdict(schedule),
        "metrics": metrics,
    }
    if train_store is not None:
        # the sets share their space maps (load_sets checks), so the whole-data heads are trained once
        space_maps = space_maps_of_set(first_tensors, modalities)
        train = open_store(train_store)
        _check_compatible(meta, train, modalities, train_store)
        train_pairs = _store_pairs(train, modalities, space_maps)
        test_pairs = _store_pairs(test, modalities, space_maps)
        log(f"training the same heads on the whole store {train.path} ({len(train_pairs[modalities[0]])} pairs)")
        whole: dict[str, list[float]] = {}
        for seed in range(seeds):
            heads = train_projection_heads(train_pairs, schedule, seed)
            for name, value in retrieval_scores(heads, test_pairs).items():
                whole.setdefault(name, []).append(value)
        for name, values in whole.items():
            metrics[name].update(whole_data_fields(metrics[name]["mean"], values))
        result["train_pairs"] = int(train_pairs[modalities[0]].shape[0])
    return result


def _store_pairs(store, modalities: list[str], space_maps: dict[str, SpaceMap]) -> dict[str, torch.Tensor]:
    """A store's paired embeddings, mapped into the synthetic set's space (its `center.<m>`/`whiten.<m>`)."""
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
