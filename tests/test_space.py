"""The space map (ibdc_cli/space.py): what whitening and centring do to a store's embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ibdc_cli.space import SpaceMap, fit_space_map, map_embeddings, space_maps_of_set


def _anisotropic(n: int = 2000, d: int = 16, seed: int = 0) -> torch.Tensor:
    """Unit vectors in a narrow cone with very unequal variances (like a random-init tower's outputs)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -1, d)  # variances over two orders of magnitude
    x = torch.randn(n, d, generator=g) * scales * 0.1 + torch.ones(d)
    return F.normalize(x, dim=-1)


def test_whitening_gives_the_store_an_identity_covariance_before_normalisation():
    x = _anisotropic()
    space_map = fit_space_map(x, "whiten")
    y = (x - space_map.center) @ space_map.whitening
    covariance = y.T @ y / len(y)
    # Ledoit-Wolf shrinks a little towards a multiple of the identity, so the result is close to, not exactly, I
    # (the smallest directions are shrunk most); the raw variances span two orders of magnitude
    raw = torch.cov(x.T).diag()
    assert raw.max() / raw.min() > 20
    assert covariance.diag().min() > 0.8 and covariance.diag().max() < 1.05
    assert (covariance - torch.diag(covariance.diag())).abs().max() < 0.05
    assert torch.allclose(y.mean(0), torch.zeros(x.shape[1]), atol=1e-4)


def test_whitening_spreads_a_narrow_cone_and_centring_alone_does_less():
    x = _anisotropic()

    def mean_cosine(v):
        v = F.normalize(v, dim=-1)
        s = v.sum(0)
        return float((s @ s - len(v)) / (len(v) * (len(v) - 1)))

    assert mean_cosine(x) > 0.99
    for kind in ("center", "whiten"):
        assert abs(mean_cosine(fit_space_map(x, kind)(x))) < 0.01
    # the share of variance on the top direction: centring keeps the anisotropy, whitening removes it
    top = {
        kind: float(
            torch.linalg.eigvalsh(torch.cov(fit_space_map(x, kind)(x).T))[-1]
            / torch.cov(fit_space_map(x, kind)(x).T).trace()
        )
        for kind in ("center", "whiten")
    }
    assert top["center"] > 0.2 and top["whiten"] < 0.12  # isotropic: 1/16


def test_none_leaves_unit_vectors_alone_and_maps_round_trip_through_set_tensors():
    x = _anisotropic(n=100)
    assert fit_space_map(x, "none") is None
    assert torch.equal(map_embeddings(x, None), F.normalize(x, dim=-1))
    fitted = fit_space_map(x, "whiten")
    tensors = {**fitted.tensors("audio"), **fit_space_map(x, "center").tensors("image")}
    assert set(tensors) == {"center.audio", "whiten.audio", "center.image"}
    maps = space_maps_of_set(tensors, ["audio", "image", "text"])
    assert set(maps) == {"audio", "image"} and maps["image"].whitening is None
    assert torch.allclose(maps["audio"](x), fitted(x))
    assert torch.allclose(map_embeddings(x, maps["audio"]).norm(dim=-1), torch.ones(len(x)))
    assert isinstance(maps["audio"], SpaceMap)


def test_the_streamed_fit_is_ledoit_wolf_on_every_row():
    from sklearn.covariance import LedoitWolf

    import ibdc_cli.space as space

    x = _anisotropic(n=3000)
    fitted = fit_space_map(x, "whiten")
    centred = x.double() - x.double().mean(0)
    covariance = torch.from_numpy(LedoitWolf(assume_centered=True).fit(centred.numpy()).covariance_)
    assert torch.allclose(fitted.center.double(), x.double().mean(0), atol=1e-7)
    # W = C^(-1/2): W C W = I
    product = fitted.whitening.double() @ covariance @ fitted.whitening.double()
    assert torch.allclose(product, torch.eye(x.shape[1], dtype=torch.float64), atol=1e-4)
    chunks = space.fit_space_map_streaming(lambda: x.split(7), "whiten")  # any chunking, the same map
    assert torch.allclose(chunks.whitening, fitted.whitening, rtol=1e-5, atol=1e-6)
    assert torch.allclose(chunks.center, fitted.center, atol=1e-7)
