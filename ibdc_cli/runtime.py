"""Processes, devices, logging and progress bars shared by the recipes.

Distributed runs use Accelerate: one `PartialState` per process, set up by `torchrun` or
`accelerate launch`; a plain `ibdc ...` is a world of one. Logs and progress go to stderr, and only
the main process prints them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr = Console(stderr=True, highlight=False)
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def distributed_env() -> bool:
    """Whether this process was started by torchrun / accelerate launch with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state(device: str = "auto"):
    """Accelerate's `PartialState` for `device` ("auto", "cpu", "cuda", "cuda:1", ...)."""
    from accelerate import PartialState

    from ibdc_cli.errors import IbdcError

    if device != "auto":
        try:
            torch.device(device)
        except RuntimeError:
            raise IbdcError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise IbdcError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    return PartialState(cpu=cpu)


def resolve_device(state, device: str) -> torch.device:
    if device in ("auto", "cpu", "cuda") or state.num_processes > 1:
        return state.device
    return torch.device(device)


def is_main(state=None) -> bool:
    return state is None or state.is_main_process


def log(message: str, state=None) -> None:
    """A line on stderr from the main process, unless --quiet."""
    if not _quiet and is_main(state):
        stderr.print(message)


def progress_enabled(state=None) -> bool:
    return not _quiet and is_main(state) and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(description: str, total: int, state=None, *, fields: str = "") -> Iterator:
    """A rich progress bar on stderr (off when stderr is not a TTY, with --quiet, or off the main process).

    Yields `advance(n=1, **fields)`; `fields` (e.g. "loss={task.fields[loss]}") shows live values.
    """
    if not progress_enabled(state):
        yield lambda n=1, **kw: None
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    if fields:
        columns.append(TextColumn(fields))
    with Progress(*columns, console=stderr, transient=False) as progress:
        task = progress.add_task(description, total=total, **_field_defaults(fields))

        def advance(n: int = 1, **values) -> None:
            progress.update(task, advance=n, **values)

        yield advance


def _field_defaults(fields: str) -> dict[str, str]:
    import re

    return {name: "" for name in re.findall(r"task\.fields\[(\w+)\]", fields)}


def autocast(device: torch.device, precision: str):
    """An autocast context for --precision {fp32,bf16,fp16}."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def shared_error(state, error: Exception | None) -> Exception | None:
    """The first error of any process (lowest process index), the same on every process; None when none
    failed. `error` is this process's IbdcError or None. It is also a barrier.

    One process that meets bad input (a row in its share of the data, the output lock on the main process)
    must stop the others too: left alone they would wait at the next barrier until gloo or NCCL gives up
    with a traceback. In a world of one it returns `error`.
    """
    from ibdc_cli.errors import IbdcError

    if state is None or state.num_processes == 1:
        return error
    messages: list[str | None] = [None] * state.num_processes
    torch.distributed.all_gather_object(messages, None if error is None else str(error))
    first = next((m for m in messages if m is not None), None)
    if first is None:
        return None
    return error if error is not None and str(error) == first else IbdcError(first)
