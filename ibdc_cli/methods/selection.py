"""Coreset selection baselines: random, herding and k-center, in the joint embedding space (SPEC §3).

Pure tensor functions for ONE class: the caller loops over classes and asks each for ``k`` (its dpc)
examples, so every selection is class-balanced. A selection returns row indices into the class's real
examples; row i of every modality is the same example, so one index picks a whole multimodal example.

Example::

    g = torch.Generator().manual_seed(0)
    idx = select("herding", {"image": img_emb, "audio": aud_emb}, k=10, generator=g)  # LongTensor [10]
    synthetic = {m: emb[idx] for m, emb in class_embeddings.items()}
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

SELECTION_METHODS: tuple[str, ...] = ("random", "herding", "kcenter")


def joint_embedding(sets: Mapping[str, Tensor]) -> Tensor:
    """The joint embedding space the selections work in: one unit-norm row per multimodal example.

    Each modality is L2-normalised (as the store's embeddings and every loss are, SPEC §3) so no
    modality dominates by its scale, then the blocks are concatenated and scaled by ``1/sqrt(M)``: a
    row's squared norm is then ``M * (1/M) = 1``, and its dot product with another row is the mean of
    the per-modality cosine similarities.

    Args:
        sets: ``modality -> [N, D_m]``, rows paired across modalities. Blocks follow the dict's order.

    Returns:
        ``[N, sum_m D_m]`` float tensor with unit-norm rows.
    """
    if not sets:
        raise ValueError("no modalities given")
    sizes = {m: x.shape[0] for m, x in sets.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"modalities must have the same number of rows (paired examples), got {sizes}")
    scale = 1.0 / math.sqrt(len(sets))
    return torch.cat([F.normalize(x.float(), dim=1) * scale for x in sets.values()], dim=1)


def _check_k(k: int, n: int) -> None:
    if k < 1:
        raise ValueError(f"need to select at least 1 example, got k={k}")
    if k > n:
        raise ValueError(f"cannot select k={k} examples from a class that has only {n} rows")


def select_random(n: int, k: int, generator: torch.Generator | None) -> Tensor:
    """A uniformly random subset of ``k`` of ``n`` rows, without replacement.

    Returns:
        LongTensor ``[k]`` on the generator's device (the global RNG's when ``generator`` is None).
    """
    _check_k(k, n)
    device = generator.device if generator is not None else "cpu"
    return torch.randperm(n, generator=generator, device=device)[:k]


def select_herding(x: Tensor, k: int) -> Tensor:
    """Greedy herding: each step adds the point that brings the selected mean closest to the full mean.

    Welling, "Herding dynamical weights to learn", ICML 2009, as used for exemplar selection by
    Rebuffi et al., "iCaRL", CVPR 2017 (Alg. 4). Deterministic (ties go to the lowest index).

    Args:
        x: ``[N, D]`` points (normally :func:`joint_embedding` rows).
        k: how many to select, ``1 <= k <= N``.

    Returns:
        LongTensor ``[k]`` of distinct indices in selection order; with ``k = N`` a permutation.
    """
    n = x.shape[0]
    _check_k(k, n)
    x = x.float()
    mean = x.mean(dim=0)
    chosen_sum = torch.zeros_like(mean)
    available = torch.ones(n, dtype=torch.bool, device=x.device)
    picks = torch.empty(k, dtype=torch.long, device=x.device)
    for t in range(k):
        # ||mean - (chosen_sum + x_i)/(t+1)|| is proportional to ||(t+1)*mean - chosen_sum - x_i||.
        target = (t + 1) * mean - chosen_sum
        dist = (x - target).pow(2).sum(dim=1).masked_fill(~available, math.inf)
        i = int(dist.argmin())
        picks[t] = i
        available[i] = False
        chosen_sum += x[i]
    return picks


def select_kcenter(x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Greedy k-center: each step adds the point farthest from its nearest selected center.

    Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set Approach",
    ICLR 2018 (Alg. 1); a 2-approximation of the minimal coverage radius. The first center is the
    point closest to the mean, so the result is deterministic; pass ``generator`` to start from a
    random point instead. A running min-distance vector keeps the cost at O(N·k·D).

    Args:
        x: ``[N, D]`` points (normally :func:`joint_embedding` rows).
        k: how many to select, ``1 <= k <= N``.
        generator: if given, draws the first center uniformly at random.

    Returns:
        LongTensor ``[k]`` of distinct indices in selection order.
    """
    n = x.shape[0]
    _check_k(k, n)
    x = x.float()
    if generator is None:
        first = int((x - x.mean(dim=0)).pow(2).sum(dim=1).argmin())
    else:
        first = int(torch.randint(n, (1,), generator=generator, device=generator.device))
    picks = torch.empty(k, dtype=torch.long, device=x.device)
    picks[0] = first
    min_dist = (x - x[first]).pow(2).sum(dim=1)
    # -1 marks a selected point: torch.minimum with distances >= 0 keeps it, so it is never picked
    # again, not even when duplicate points leave every distance at zero.
    min_dist[first] = -1.0
    for t in range(1, k):
        i = int(min_dist.argmax())
        picks[t] = i
        min_dist = torch.minimum(min_dist, (x - x[i]).pow(2).sum(dim=1))
        min_dist[i] = -1.0
    return picks


def select(method: str, sets: Mapping[str, Tensor], k: int, generator: torch.Generator | None = None) -> Tensor:
    """Select ``k`` examples of one class with ``method``, in the joint embedding space.

    Args:
        method: one of :data:`SELECTION_METHODS`.
        sets: ``modality -> [N, D_m]`` real embeddings of one class, rows paired across modalities.
        k: how many examples to keep (the dpc), ``1 <= k <= N``.
        generator: drives ``random``; herding and k-center are deterministic and ignore it.

    Returns:
        LongTensor ``[k]`` of distinct row indices.
    """
    if method not in SELECTION_METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {SELECTION_METHODS}")
    x = joint_embedding(sets)  # also checks the modalities are paired, for every method alike
    if method == "random":
        return select_random(x.shape[0], k, generator)
    if method == "herding":
        return select_herding(x, k)
    return select_kcenter(x, k)
