"""Held-out metrics of a bound encoder: how well a modality's embeddings meet the anchor's.

Cross-modal retrieval (R@1 to and from the anchor, of the row's own pair or of its label) and the cosines
between embeddings and between class means, on rows the towers did not train on (`held_out_metrics`);
`epoch_metrics` keeps the ones logged every epoch and `describe_metrics` says them in one line.

Example::

    metrics = held_out_metrics(encoder, "audio", data, anchor_embeddings, labels, val_rows, batch_size=64)
    metrics["label_r1_to_anchor"]     # share of held-out audio rows whose nearest image has their label
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ibdc_cli.data.pairs import inputs_of, rows_of
from ibdc_cli.encoders.imagebind import Encoder


def embed_clips(encoder: Encoder, modality: str, x: torch.Tensor) -> torch.Tensor:
    """`encoder.embed(modality, x)` `[B, D]` on the CPU, where rows of `x` `[B, S, ...]` whose S clips are all
    equal are embedded from their first clip alone: the same embedding (the mean of equal clip embeddings),
    for a third of the work. A split whose recordings are mostly short but not all (fsdd-mnist val: 2 of
    500 are longer than 2 s) keeps all clips only where they differ (`one_clip_if_repeated` is all or none)."""
    if x.ndim < 5 or x.shape[1] < 2:
        return encoder.embed(modality, x).cpu()
    equal = (x == x[:, :1]).flatten(1).all(1)  # [B]
    parts = {}
    if bool(equal.any()):
        parts["equal"] = encoder.embed(modality, x[equal][:, :1]).cpu()
    if bool((~equal).any()):
        parts["other"] = encoder.embed(modality, x[~equal]).cpu()
    z = torch.empty(len(x), next(iter(parts.values())).shape[1])
    if "equal" in parts:
        z[equal.cpu()] = parts["equal"]
    if "other" in parts:
        z[~equal.cpu()] = parts["other"]
    return z


def mean_cosine(x: torch.Tensor) -> float:
    """Mean cosine between distinct rows of unit vectors `x` `[N, D]` (1 = all one direction)."""
    n = len(x)
    if n < 2:
        return float("nan")
    total = x.sum(0)
    return float((total @ total - n) / (n * (n - 1)))


@torch.no_grad()
def held_out_metrics(
    encoder: Encoder,
    modality: str,
    data: dict[str, Any],
    anchor_embeddings: torch.Tensor,
    labels: torch.Tensor,
    val_rows: list[int],
    batch_size: int,
) -> dict[str, float]:
    """Cross-modal retrieval between `modality` and the anchor on the held-out rows that have both.

    `r1_to_anchor`: share of rows whose nearest anchor embedding is their own pair (chance 1/rows);
    `r1_from_anchor` the other way; `label_r1_*`: the nearest one has the row's label; `cos_same_class` /
    `cos_other_class`: mean cosine between a row's embedding and the anchor embeddings of rows with the
    same / another label; `cos_class_means` / `cos_class_means_other`: cosine between a class's mean
    embedding and the same / another class's mean anchor embedding, averaged over classes (pairs of
    classes). Label metrics need labels.

    The two cosines answer different questions. The row-level one equals |mean z_c|·|mean a_c|·cos(means)
    averaged over classes, so it stays small whenever one side is spread within a class (the centred
    outputs of a random anchor tower are nearly orthogonal even within a class), however well the
    classes line up. The class-mean one asks only whether the classes line up.
    """
    rows = rows_of(data, modality, torch.tensor(val_rows, dtype=torch.int64))
    if len(rows) < 2:
        return {"rows": len(rows)}
    encoder.model.eval()
    z = torch.cat(
        [
            embed_clips(encoder, modality, inputs_of(data, modality, chunk).to(encoder.device))
            for chunk in rows.split(batch_size)
        ]
    )
    a = anchor_embeddings[rows]
    similarity = z @ a.T  # [n, n]: bound row i vs anchor row j
    own = torch.arange(len(rows))
    to_anchor, from_anchor = similarity.argmax(1), similarity.argmax(0)
    metrics = {
        "rows": len(rows),
        "chance_r1": 1 / len(rows),
        "r1_to_anchor": float((to_anchor == own).float().mean()),
        "r1_from_anchor": float((from_anchor == own).float().mean()),
    }
    y = labels[rows]
    if bool((y >= 0).all()):
        same = y[:, None] == y[None, :]
        metrics["label_r1_to_anchor"] = float((y[to_anchor] == y).float().mean())
        metrics["label_r1_from_anchor"] = float((y[from_anchor] == y).float().mean())
        metrics["cos_same_class"] = float(similarity[same].mean())
        metrics["cos_other_class"] = float(similarity[~same].mean()) if bool((~same).any()) else float("nan")
        metrics.update(class_mean_cosines(z, a, y))
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}


def class_mean_cosines(z: torch.Tensor, a: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Cosines between the class means of `z` `[n, D]` and of `a` `[n, D]` (rows paired, `labels` `[n]`).

    `cos_class_means`: mean over classes c of cos(mean z_c, mean a_c); `cos_class_means_other`: mean over
    ordered pairs c != c' of cos(mean z_c, mean a_c') (nan with one class).
    """
    classes = labels.unique()
    one_hot = (labels[None, :] == classes[:, None]).float()  # [C, n]
    z_means = F.normalize(one_hot @ z, dim=-1)  # [C, D]; the sum points where the mean does
    a_means = F.normalize(one_hot @ a, dim=-1)
    cosines = z_means @ a_means.T  # [C, C]
    diagonal = torch.eye(len(classes), dtype=torch.bool)
    other = float(cosines[~diagonal].mean()) if len(classes) > 1 else float("nan")
    return {"cos_class_means": float(cosines.diagonal().mean()), "cos_class_means_other": other}


def describe_metrics(metrics: dict[str, dict[str, float]]) -> str:
    """One line of `epoch_metrics`, e.g. "held-out audio: same-label R@1 52.8 %, class-mean cosine 0.369"."""
    parts = []
    for m, values in metrics.items():
        if "label_r1_to_anchor" in values:
            parts.append(
                f"held-out {m}: same-label R@1 {100 * values['label_r1_to_anchor']:.1f} %, "
                f"class-mean cosine {values['cos_class_means']:.3f}"
            )
        elif "r1_to_anchor" in values:
            parts.append(f"held-out {m}: R@1 {100 * values['r1_to_anchor']:.1f} %")
    return "; ".join(parts) or "no held-out rows"


def epoch_metrics(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The held-out metrics kept for every epoch: retrieval both ways (same-label when labelled) and the
    class-mean cosine, per bound modality."""
    keep = ("label_r1_to_anchor", "label_r1_from_anchor", "cos_class_means", "r1_to_anchor")
    return {m: {k: v for k, v in values.items() if k in keep} for m, values in metrics.items()}
