"""The condensation methods, found by name in one registry (`ibdc condense --method NAME`).

Two kinds:

- **synthesis** methods (imagebinddc, dm, avdd) optimise synthetic rows against a loss; the registry
  gives the loss's class, configured once per run with `from_config(CondenseConfig)` and then called
  with one class's real and synthetic tensors (`ibdc_cli.losses`);
- **selection** methods (random, herding, kcenter) keep real rows; the registry gives the function
  `select(sets, k, generator) -> row indices` of one class (`ibdc_cli.methods.selection`).

Example::

    method = get_method("dm")
    loss = method.loss.from_config(config)          # a configured losses.DMLoss
    terms = loss(real, syn, generator=g)            # {"total": ...}
    get_method("herding").select({"image": x}, 10, g)   # LongTensor [10]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import Tensor

from ibdc_cli import losses
from ibdc_cli.errors import IbdcError
from ibdc_cli.methods.selection import select


@dataclass(frozen=True)
class CondensationMethod:
    """One entry of the registry: a synthesis method (its `loss` class) or a selection (`select`)."""

    name: str
    kind: Literal["synthesis", "selection"]
    summary: str
    loss: type | None = None
    """Synthesis: the loss class; `loss.from_config(config)` configures it."""
    select: Callable[[Mapping[str, Tensor], int, torch.Generator | None], Tensor] | None = None
    """Selection: `select(sets, k, generator)` -> `[k]` row indices of one class."""


REGISTRY: dict[str, CondensationMethod] = {
    "imagebinddc": CondensationMethod(
        "imagebinddc", "synthesis", "ImageBindDC: uni-, cross- and joint-modal CF matching", loss=losses.ImageBindDCLoss
    ),
    "dm": CondensationMethod("dm", "synthesis", "distribution matching of the means", loss=losses.DMLoss),
    "avdd": CondensationMethod("avdd", "synthesis", "DM plus AVDD's cross-modal terms", loss=losses.AVDDLoss),
    "random": CondensationMethod("random", "selection", "random real rows", select=partial(select, "random")),
    "herding": CondensationMethod(
        "herding", "selection", "herding in the joint embedding", select=partial(select, "herding")
    ),
    "kcenter": CondensationMethod(
        "kcenter", "selection", "k-center greedy in the joint embedding", select=partial(select, "kcenter")
    ),
}


def get_method(name: str) -> CondensationMethod:
    """The registry's entry `name`; an unknown name is an IbdcError listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise IbdcError(f"unknown --method {name!r}; choose one of {', '.join(REGISTRY)}") from None
