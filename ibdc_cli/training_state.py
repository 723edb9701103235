"""The resumable state of a training loop, in one safetensors file (never pickle, SPEC §1).

`condense` checkpoints each class's synthetic rows this way, `bind` each epoch's towers. A run resumed
from the file continues bit for bit: it restores the parameters, the optimiser's state, every random
stream the loop draws from, and the loop's own records (`metadata`: the epoch, loss histories).

Layout, by parameter name (so a file does not depend on the optimiser's ordering of its parameters):

    param.NAME               a parameter
    average.NAME             its moving average (`averages`, bind's --ema), when one is kept
    optimizer.NAME.KEY       the optimiser's state of that parameter (AdamW: step, exp_avg, exp_avg_sq)
    rng.NAME                 the state of the generator NAME (uint8)
    metadata, per key        JSON, with "format" and "format_version" (`STATE_FORMAT`, `STATE_VERSION`)

Example::

    generators = {"shuffle": shuffle, "torch": torch.default_generator}
    save_training_state(path, params, optimizer, generators, {"epoch": 3, "history": history})
    metadata = load_training_state(path, params, optimizer, generators)   # {"epoch": 3, "history": [...]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ibdc_cli.errors import IbdcError
from ibdc_cli.store import atomic_save_tensors, read_tensors

# A file without this format (one written before this layout) is refused rather than half restored: its
# optimiser state and random streams would not be found under these names.
STATE_FORMAT = "ibdc-training-state"
STATE_VERSION = 1


def _stepped(params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
    """`(name, parameter)` of the optimiser's parameters in its own order (the indices of its state dict)."""
    name_of = {id(p): name for name, p in params.items()}
    return [(name_of[id(p)], p) for group in optimizer.param_groups for p in group["params"]]


def save_training_state(
    path: Path,
    params: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    metadata: dict[str, Any],
    *,
    averages: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write `params` (every parameter the optimiser steps, by name), the optimiser's state, the state of
    each of `generators` and `metadata` (JSON values) to `path` atomically."""
    tensors = {f"param.{n}": p.detach().cpu() for n, p in params.items()}
    tensors.update({f"average.{n}": v.detach().cpu() for n, v in (averages or {}).items()})
    for name, p in _stepped(params, optimizer):
        for key, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{name}.{key}"] = value.detach().cpu()
    tensors.update({f"rng.{name}": generator.get_state() for name, generator in generators.items()})
    header = {"format": STATE_FORMAT, "format_version": STATE_VERSION}
    assert not header.keys() & metadata.keys(), "format and format_version are the file's own"
    values = {key: json.dumps(value) for key, value in {**header, **metadata}.items()}
    atomic_save_tensors(path, tensors, metadata=values)


def load_training_state(
    path: Path,
    params: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    *,
    averages: dict[str, torch.Tensor] | None = None,
    what: str = "training checkpoint",
) -> dict[str, Any]:
    """Restore what `save_training_state` wrote to `path` into `params`, `averages`, `optimizer` and
    `generators` (in place), and return its metadata. A generator whose state the file lacks keeps its
    own (a run saved on the CPU resumed on a GPU has no CUDA stream to restore). `what` names the file in
    errors: an unreadable file, or one of another layout, raises IbdcError."""
    tensors, raw = read_tensors(path, what)
    if raw.get("format") != json.dumps(STATE_FORMAT) or raw.get("format_version") != json.dumps(STATE_VERSION):
        raise IbdcError(
            f"--resume: {path} is a {what} of another ibdc version, which this one cannot continue; "
            "rerun without --resume to start over"
        )
    metadata = {key: json.loads(value) for key, value in raw.items() if key not in ("format", "format_version")}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param.{n}"])
        for n, v in (averages or {}).items():
            v.copy_(tensors[f"average.{n}"])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for i, (name, _) in enumerate(_stepped(params, optimizer)):
        prefix = f"optimizer.{name}."
        entries = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if entries:
            state[i] = entries
    # load_state_dict moves each state tensor to its parameter's device (AdamW's step stays on the CPU)
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    for name, generator in generators.items():
        if f"rng.{name}" in tensors:
            generator.set_state(tensors[f"rng.{name}"])
    return metadata
