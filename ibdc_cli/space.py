"""The space ibdc condenses and evaluates in: a fixed map of each modality's store embeddings.

`--space-map` (condense) chooses it; the synthetic set records it as tensors, and every reader of the set
(evaluate, inspect) maps real embeddings the same way:

    none     x -> x                                   (the encoder's unit-norm embeddings as they are)
    center   x -> normalize(x - mu_m)                 (`center.<m>` [D])
    whiten   x -> normalize((x - mu_m) @ W_m)          (`center.<m>` [D] and `whiten.<m>` [D, D])

mu_m is the store's mean of modality m and W_m = C_m^(-1/2), with C_m the store's covariance shrunk
towards a multiple of the identity by the Ledoit–Wolf estimate (no knob to tune).

The maps forget a row's norm, so they are inverted only up to it: `SpaceMap.invert` gives the row of a
known norm (1 for unit-norm encoders) that maps to a given one (`inspect --export --format hf`'s
`<m>_encoder` columns).

Why: a randomly initialised ImageBind tower maps every input close to one direction (on av-digits with
imagebind_tiny the mean cosine between image embeddings is 0.996), and even after centring the classes
differ along low-variance directions (the nearest class mean scores ~20 %). Characteristic functions
with isotropic frequencies, like the mean matching of DM, weigh every direction by its variance, so they
spend their effort on the directions that carry no class information. Whitening gives every direction the
same weight: matching CFs after whitening is matching them in the original space with frequencies drawn
from N(0, σ²·W Wᵀ), a data-adapted frequency distribution (NCFM learns one adversarially; this one is
fixed). Measured on av-digits (docs/method.md, "The space"): class means as a 1-per-class training set
score 23 % (centred) vs 88 % (whitened); a linear probe on all rows 86.7 % vs 93.1 %.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SPACE_MAPS = ("whiten", "center", "none")
FIT_CHUNK_ROWS = 8192
"""Rows per chunk of a fit: its working memory is one chunk in float64 plus [D, D] sums, whatever N."""


@dataclass
class SpaceMap:
    """One modality's map `x -> normalize((x - center) @ whitening)`; `whitening` None = identity."""

    center: torch.Tensor  # [D]
    whitening: torch.Tensor | None = None  # [D, D]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = x - self.center.to(x.device, x.dtype)
        if self.whitening is not None:
            y = y @ self.whitening.to(x.device, x.dtype)
        return F.normalize(y, dim=-1)

    def invert(self, y: torch.Tensor, norm: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder-space rows `x` `[M, D]` of norm `norm` that this map sends to the unit rows `y` `[M, D]`,
        and `[M]` bool: which rows have one (the others are NaN).

        `normalize` forgets the norm of `(x - c) W`, so `x` is only known up to a ray: `(x - c) W = t y`
        for some t > 0, i.e. `x = c + t v` with `v = y W^-1` (`W` is invertible: C^(-1/2) with C's
        eigenvalues clamped above 0). Real embeddings have a known norm r (1 for ibdc's encoders, which
        unit-normalise), and `||c + t v||^2 = r^2` is the quadratic
        `||v||^2 t^2 + 2 (c.v) t + (||c||^2 - r^2) = 0`. When `||c|| < r` (always for unit rows: c is a
        mean of them) its roots have opposite signs and the positive one is the answer; when `||c|| >= r`
        there are two positive roots or none (the larger is taken; none: the row is NaN and not found).
        Computed in float64; `self(x)` gives `y` back to float32 precision (tests/test_export_hf.py).
        """
        y64 = y.double()
        c = self.center.double().to(y.device)
        v = y64 if self.whitening is None else torch.linalg.solve(self.whitening.double().to(y.device).T, y64.T).T
        a = v.pow(2).sum(-1)
        b = v @ c  # c.v per row
        gap = norm**2 - float(c @ c)  # r^2 - ||c||^2
        discriminant = b.pow(2) + a * gap
        root = discriminant.clamp_min(0).sqrt()
        # the larger root (-b + root) / a; where b > 0 and gap > 0 the same value without cancellation
        t = torch.where((b > 0) & (gap > 0), gap / (b + root), (root - b) / a)
        found = (discriminant >= 0) & (t > 0) & (a > 0)
        x = c + t[:, None] * v
        x[~found] = float("nan")
        return x.to(y.dtype), found

    def encoder_norm(self) -> float:
        """The root-mean-square norm of the rows this map was fitted on, where the map records it: with a
        whitening W = C^(-1/2), E||x||^2 = ||c||^2 + tr C, and Ledoit–Wolf shrinkage keeps tr C (the
        trace of the sample covariance). Without one (`center`), nothing records the norm: 1."""
        if self.whitening is None:
            return 1.0
        eigenvalues = torch.linalg.eigvalsh(self.whitening.double())
        return float(self.center.double().pow(2).sum() + eigenvalues.pow(-2).sum()) ** 0.5

    def to(self, device: torch.device | str) -> SpaceMap:
        whitening = None if self.whitening is None else self.whitening.to(device)
        return SpaceMap(self.center.to(device), whitening)

    def tensors(self, modality: str) -> dict[str, torch.Tensor]:
        """The tensors a synthetic set stores for this map (`center.<m>`, `whiten.<m>`)."""
        out = {f"center.{modality}": self.center.detach().cpu().contiguous()}
        if self.whitening is not None:
            out[f"whiten.{modality}"] = self.whitening.detach().cpu().contiguous()
        return out


def fit_space_map(x: torch.Tensor, kind: str) -> SpaceMap | None:
    """The map of `kind` fitted to a store's embeddings `x` `[N, D]`; None for "none"."""
    return fit_space_map_streaming(lambda: x.split(FIT_CHUNK_ROWS), kind)


def fit_space_map_streaming(chunks: Callable[[], Iterable[torch.Tensor]], kind: str) -> SpaceMap | None:
    """The map of `kind` fitted to all rows of the chunks that `chunks()` yields (`[n_i, D]` each), in at
    most two passes (the mean, then the centred second moments), with bounded memory: a store's shards
    can be streamed from disk, one at a time.

    The whitening is the Ledoit–Wolf estimate (Ledoit & Wolf, 2004; what `sklearn.covariance.LedoitWolf
    (assume_centered=True)` computes on the centred rows, from the same sums): with centred rows y_i,
    S = (1/N) sum_i y_i y_i^T, mu = tr(S) / D, delta = ||S - mu I||_F^2 / D and
    beta = min(delta, (sum_i ||y_i||^4 / N - ||S||_F^2) / (D N)), the covariance is
    (1 - beta/delta) S + (beta/delta) mu I, and W = C^(-1/2).
    """
    if kind == "none":
        return None
    total, count = None, 0
    for chunk in chunks():
        chunk_sum = chunk.sum(0, dtype=torch.float64)
        total = chunk_sum if total is None else total + chunk_sum
        count += chunk.shape[0]
    if count == 0:
        raise ValueError("cannot fit a space map to no rows")
    center = total / count
    if kind == "center":
        return SpaceMap(center.float())
    dim = center.shape[0]
    second = torch.zeros(dim, dim, dtype=torch.float64)
    fourth = 0.0
    for chunk in chunks():
        y = chunk.double() - center
        second += y.T @ y
        fourth += float(y.pow(2).sum(1).pow(2).sum())
    covariance = second / count
    mu = float(covariance.trace()) / dim
    frobenius = float(covariance.pow(2).sum())
    delta = (frobenius - 2 * mu * float(covariance.trace()) + dim * mu**2) / dim
    beta = min(delta, (fourth / count - frobenius) / (dim * count))
    shrinkage = 0.0 if beta == 0 else beta / delta
    covariance = (1 - shrinkage) * covariance + shrinkage * mu * torch.eye(dim, dtype=torch.float64)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    whitening = eigenvectors @ torch.diag(eigenvalues.clamp_min(1e-12).rsqrt()) @ eigenvectors.T
    return SpaceMap(center.float(), whitening.float())


def space_maps_of_set(tensors: dict[str, torch.Tensor], modalities: list[str]) -> dict[str, SpaceMap]:
    """The maps a synthetic set recorded (modalities without a `center.<m>` tensor are used as they are)."""
    return {
        m: SpaceMap(tensors[f"center.{m}"], tensors.get(f"whiten.{m}")) for m in modalities if f"center.{m}" in tensors
    }


def map_embeddings(x: torch.Tensor, space_map: SpaceMap | None) -> torch.Tensor:
    """`x` in the condensation space: `space_map(x)`, or unit-normalised `x` when there is no map."""
    return F.normalize(x, dim=-1) if space_map is None else space_map(x)


def invert_embeddings(
    y: torch.Tensor, space_map: SpaceMap | None, norm: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows `x` `[M, D]` of norm `norm` with `map_embeddings(x, space_map) == y` for unit rows `y` `[M, D]`,
    and `[M]` bool: which have one (`SpaceMap.invert`). Without a map, `x = norm * y` (all found)."""
    if space_map is None:
        return norm * y, torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
    return space_map.invert(y, norm)
