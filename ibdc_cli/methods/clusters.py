"""Pseudo-classes for a store without labels (paired data, Clotho-style; `ibdc condense --clusters`).

Condensation is class-conditional, so unlabeled rows become one class (the default), or K classes by
k-means on the joint embedding (`methods.selection.joint_embedding`).

Example::

    labels, class_names, record = pseudo_classes({"audio": a, "text": t}, ["audio", "text"], clusters=20, seed=0)
    labels.shape, class_names[:2], record   # [N], ['cluster-00', 'cluster-01'], {'pseudo_labels': 'kmeans', ...}
"""

from __future__ import annotations

from typing import Any

import torch

from ibdc_cli.errors import IbdcError
from ibdc_cli.methods.selection import joint_embedding


def pseudo_classes(
    data: dict[str, torch.Tensor], modalities: list[str], clusters: int, seed: int
) -> tuple[torch.Tensor, list[str], dict[str, Any]]:
    """Class ids `[N]`, class names and the metadata record for a store without labels.

    `data[m]`: `[N, D_m]`, rows paired across `modalities`. `clusters = 0`: every row is one class "all"
    (DPC = the number of synthetic pairs); the default, because it keeps the real pairs' distribution
    whole and needs no choice of K. `clusters = K`: K classes by k-means (scikit-learn, `n_init=10`,
    seeded) on `joint_embedding` of the mapped rows (`--space-map`), so the set holds DPC x K pairs
    spread over the regions of the joint space.
    """
    n = next(iter(data[m] for m in modalities)).shape[0]
    if clusters < 0:
        raise IbdcError(f"--clusters must not be negative, not {clusters}")
    if clusters == 0:
        return torch.zeros(n, dtype=torch.int64), ["all"], {"pseudo_labels": "none", "clusters": 1}
    if clusters > n:
        raise IbdcError(f"--clusters {clusters} is more than the store's {n} rows")
    from sklearn.cluster import KMeans

    x = joint_embedding({m: data[m] for m in modalities}).numpy()
    ids = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit_predict(x)
    width = len(str(clusters - 1))
    names = [f"cluster-{c:0{width}d}" for c in range(clusters)]
    return torch.as_tensor(ids, dtype=torch.int64), names, {"pseudo_labels": "kmeans", "clusters": clusters}
