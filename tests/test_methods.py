"""The method registry: every --method choice is found by name, of the kind the config says."""

from __future__ import annotations

import typing

import pytest
import torch

from ibdc_cli.config import SELECTION_METHODS, SYNTHESIS_METHODS, CondenseConfig, Method
from ibdc_cli.errors import IbdcError
from ibdc_cli.methods import REGISTRY, get_method


def test_registry_holds_exactly_the_methods_of_the_option():
    assert tuple(REGISTRY) == typing.get_args(Method)
    assert tuple(n for n, m in REGISTRY.items() if m.kind == "synthesis") == SYNTHESIS_METHODS
    assert tuple(n for n, m in REGISTRY.items() if m.kind == "selection") == SELECTION_METHODS


@pytest.mark.parametrize("name", SYNTHESIS_METHODS)
def test_every_synthesis_method_gives_a_differentiable_total(name):
    g = torch.Generator().manual_seed(0)
    real = {m: torch.randn(10, 8, generator=g) for m in ("image", "audio")}
    syn = {m: torch.randn(3, 8, generator=g, requires_grad=True) for m in ("image", "audio")}
    loss = get_method(name).loss.from_config(CondenseConfig(num_freqs=16))
    terms = loss(real, syn, generator=g)
    terms["total"].backward()
    assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in syn.values())


@pytest.mark.parametrize("name", SELECTION_METHODS)
def test_every_selection_picks_distinct_rows(name):
    g = torch.Generator().manual_seed(0)
    chosen = get_method(name).select({"image": torch.randn(9, 4, generator=g)}, 4, g)
    assert chosen.shape == (4,) and len(set(chosen.tolist())) == 4


def test_unknown_method_names_the_known_ones():
    with pytest.raises(IbdcError, match="choose one of imagebinddc, dm, avdd"):
        get_method("mtt")
