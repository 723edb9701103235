"""Coreset selection baselines: random, herding, k-center (ibdc_cli.methods.selection)."""

from __future__ import annotations

import math

import pytest
import torch

from ibdc_cli.methods.selection import (
    SELECTION_METHODS,
    joint_embedding,
    select,
    select_herding,
    select_kcenter,
    select_random,
)


def paired_sets(n: int = 60, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 16, generator=g) * 3, "audio": torch.randn(n, 8, generator=g)}


def coverage_radius(x: torch.Tensor, idx: torch.Tensor) -> float:
    """Largest distance from any point to its nearest selected point."""
    return float(torch.cdist(x, x[idx]).min(dim=1).values.max())


@pytest.mark.parametrize("method", SELECTION_METHODS)
@pytest.mark.parametrize("k", [1, 7, 60])
def test_indices_are_unique_in_range_and_k_long(method, k):
    idx = select(method, paired_sets(), k, torch.Generator().manual_seed(1))
    assert idx.dtype == torch.long and idx.shape == (k,)
    assert len(set(idx.tolist())) == k
    assert 0 <= int(idx.min()) and int(idx.max()) < 60


def test_kcenter_never_repeats_among_duplicate_points():
    x = torch.zeros(5, 3)  # all distances are zero: a naive argmax would pick index 0 again
    assert sorted(select_kcenter(x, 5).tolist()) == [0, 1, 2, 3, 4]


def test_random_is_reproducible_per_seed():
    a = select_random(100, 10, torch.Generator().manual_seed(3))
    b = select_random(100, 10, torch.Generator().manual_seed(3))
    c = select_random(100, 10, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_herding_mean_is_closer_than_random_subsets():
    x = joint_embedding(paired_sets(200))
    mean = x.mean(dim=0)
    k = 10
    herding_gap = float((x[select_herding(x, k)].mean(dim=0) - mean).norm())
    g = torch.Generator().manual_seed(0)
    random_gaps = [float((x[select_random(200, k, g)].mean(dim=0) - mean).norm()) for _ in range(20)]
    assert herding_gap < sorted(random_gaps)[len(random_gaps) // 2]


def test_herding_is_deterministic_and_full_k_is_a_permutation():
    x = joint_embedding(paired_sets(30))
    idx = select_herding(x, 30)
    assert sorted(idx.tolist()) == list(range(30))
    assert torch.equal(idx, select_herding(x, 30))


def clusters(num: int = 5, per: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` tight clusters far apart: points [num*per, 8] and their cluster labels [num*per]."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num, 8, generator=g) * 10
    labels = torch.arange(num).repeat_interleave(per)
    return centers[labels] + 0.01 * torch.randn(num * per, 8, generator=g), labels


def test_kcenter_picks_one_point_per_cluster_first():
    x, labels = clusters()
    assert sorted(labels[select_kcenter(x, 5)].tolist()) == [0, 1, 2, 3, 4]
    # a random first center changes where it starts, not that it covers every cluster
    start = select_kcenter(x, 5, generator=torch.Generator().manual_seed(2))
    assert sorted(labels[start].tolist()) == [0, 1, 2, 3, 4]


def test_kcenter_coverage_radius_beats_random_subsets():
    x = joint_embedding(paired_sets(200))
    k = 10
    radius = coverage_radius(x, select_kcenter(x, k))
    g = torch.Generator().manual_seed(0)
    assert all(radius <= coverage_radius(x, select_random(200, k, g)) for _ in range(20))


def test_joint_embedding_rows_are_unit_norm_with_scaled_blocks():
    sets = paired_sets(12)
    joint = joint_embedding(sets)
    assert joint.shape == (12, 16 + 8)
    torch.testing.assert_close(joint.norm(dim=1), torch.ones(12))
    for block in (joint[:, :16], joint[:, 16:]):
        torch.testing.assert_close(block.norm(dim=1), torch.full((12,), 1 / math.sqrt(2)))
    torch.testing.assert_close(joint[:, 16:] * math.sqrt(2), torch.nn.functional.normalize(sets["audio"], dim=1))


def test_joint_embedding_rejects_unpaired_rows():
    with pytest.raises(ValueError, match="same number of rows"):
        joint_embedding({"image": torch.randn(4, 3), "audio": torch.randn(5, 3)})


@pytest.mark.parametrize("method", SELECTION_METHODS)
def test_k_larger_than_the_class_is_an_error(method):
    with pytest.raises(ValueError, match="only 60 rows"):
        select(method, paired_sets(), 61, torch.Generator().manual_seed(0))


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="unknown selection method 'kmeans'"):
        select("kmeans", paired_sets(), 3, torch.Generator())
