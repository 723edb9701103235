"""Processes, devices, logging and progress bars shared by the recipes.

Distributed runs use Accelerate: one `PartialState` per process, set up by `torchrun` or
`accelerate launch`; a plain `ibdc ...` is a world of one. Logs and progress go to stderr, and only
the main process prints them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ibdc_cli.console import is_quiet, set_quiet, stderr  # noqa: F401 (set_quiet: re-exported)


def distributed_env() -> bool:
    """Whether this process was started by torchrun / accelerate launch with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state(device: str = "auto"):
    """Accelerate's `PartialState` for `device` ("auto", "cpu", "cuda", "cuda:1", ...)."""
    from accelerate import PartialState

    single_device(device)  # a name torch knows, and CUDA only where there is some
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def resolve_device(state, device: str) -> torch.device:
    if device in ("auto", "cpu", "cuda") or state.num_processes > 1:
        return state.device
    return torch.device(device)


def is_main(state=None) -> bool:
    return state is None or state.is_main_process


def log(message: str, state=None) -> None:
    """A line on stderr from the main process, unless --quiet."""
    if not is_quiet() and is_main(state):
        stderr.print(message, markup=False, soft_wrap=True)  # soft_wrap: a log file gets whole lines


# Off a terminal (SLURM, nohup, CI) progress is a plain line every this many seconds, or every tenth of
# the work, whichever comes first; `IBDC_LOG_EVERY` sets the seconds.
LOG_EVERY_SECONDS = 60.0


def log_every_seconds() -> float:
    try:
        return max(float(os.environ.get("IBDC_LOG_EVERY", LOG_EVERY_SECONDS)), 0.0)
    except ValueError:
        return LOG_EVERY_SECONDS


def announce(command: str, state=None, **facts) -> None:
    """The first line of a long command: what runs where, e.g. `ibdc condense: device cpu, 1 process,
    encoder imagebind_tiny (random-init), precision fp32, out syn.safetensors`."""
    processes = 1 if state is None else state.num_processes
    device = facts.pop("device", None) or (state.device if state is not None else "cpu")
    parts = [f"device {device}", f"{processes} process{'es' if processes != 1 else ''}"]
    parts += [f"{key.replace('_', ' ')} {value}" for key, value in facts.items() if value is not None]
    log(f"ibdc {command}: {', '.join(parts)}", state)


def encoder_words(encoder: dict) -> str:
    """`imagebind_tiny (random-init, seed 0)` or `imagebind_huge (checkpoint 0bf4a523f717)` (a bound
    checkpoint adds its frontends: `, audio envelope`), from the encoder record that stores and sets keep."""
    weights = encoder.get("weights") or "random-init"
    frontends = "".join(f", {m} {name}" for m, name in (encoder.get("frontends") or {}).items())
    if weights == "random-init":
        return f"{encoder.get('preset')} (random-init, seed {encoder.get('seed')}{frontends})"
    return f"{encoder.get('preset')} (checkpoint {str(weights)[:12]}{frontends})"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PlainProgress:
    """Progress as plain lines on stderr for logs that are not a terminal: done/total, rate, elapsed,
    ETA and the live `fields` (the loss), every `every` seconds or tenth of the work, and at the end."""

    def __init__(self, description: str, total: int, every: float, clock=time.monotonic):
        self.description, self.total, self.every, self.clock = description, max(total, 0), every, clock
        self.done, self.values = 0, {}
        self.started = self.last_time = clock()
        self.last_tenth = 0

    def advance(self, n: int = 1, **values) -> None:
        self.done += n
        self.values.update(values)
        now = self.clock()
        tenth = 10 * self.done // self.total if self.total else 10
        if tenth > self.last_tenth or now - self.last_time >= self.every:
            self.last_tenth = tenth
            self.report(now)

    def report(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.last_time = now
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
        line = f"{self.description}: {self.done}/{self.total}{share}, {rate:.2f}/s, {_clock(elapsed)} elapsed"
        if 0 < self.done < self.total and rate > 0:
            line += f", ETA {_clock((self.total - self.done) / rate)}"
        line += "".join(f", {key} {value}" for key, value in self.values.items() if value not in ("", None))
        stderr.print(line, markup=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int, state=None, *, fields: str = "") -> Iterator:
    """A rich progress bar on stderr; off a terminal, plain progress lines (`PlainProgress`); nothing with
    --quiet or off the main process.

    Yields `advance(n=1, **fields)`; `fields` (e.g. "loss={task.fields[loss]}") shows live values.
    """
    if is_quiet() or not is_main(state):
        yield lambda n=1, **kw: None
        return
    if not sys.stderr.isatty():
        plain = PlainProgress(description, total, log_every_seconds())
        yield plain.advance
        if plain.done and plain.last_tenth < 10:  # stopped short of the total (a resumed run's last line)
            plain.report()
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


PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        from ibdc_cli.errors import IbdcError

        raise IbdcError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def single_device(device: str = "auto") -> torch.device:
    """The device of a one-process command (evaluate): `auto` is CUDA when available, else the CPU."""
    from ibdc_cli.errors import IbdcError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise IbdcError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise IbdcError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    return chosen


def autocast(device: torch.device, precision: str):
    """An autocast context for --precision {fp32,bf16,fp16}."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def start_output_job(stack: contextlib.ExitStack, state, out, work, job: dict, resume: bool) -> None:
    """Start the resumable job `job` writing `out`, in its partial directory `work` (`store.partial_dir`).

    The main process takes the output lock of `out` (held until `stack` closes) and prepares `work` for
    `job` (with `resume`, continues it after checking its settings are the same); an IbdcError there
    (another run holds `out`, a resume with other settings) is raised on every process (`shared_error`),
    so no process starts the work. `state` None is a world of one (bind, which trains on the main
    process alone). A job ends its work with `raise_job_error`, and removes `work` once `out` is
    written.
    """
    from ibdc_cli.errors import IbdcError
    from ibdc_cli.store import output_lock, prepare_partial_dir

    error = None
    if is_main(state):
        try:
            stack.enter_context(output_lock(out))  # a second run on this --out exits 2 here
            prepare_partial_dir(work, job, resume)
        except IbdcError as exc:
            error = exc
    error = shared_error(state, error)
    if error is not None:
        raise error


def raise_job_error(state, work, error: Exception | None, *, keep: bool) -> None:
    """The end of a job's work: when any process failed (`error` is this process's IbdcError or None), the
    main process removes the partial directory `work` unless `keep` (finished work that a --resume
    continues; bad input must leave nothing behind), and every process raises the first error
    (`shared_error`, also a barrier). Returns when no process failed."""
    import shutil

    error = shared_error(state, error)
    if error is None:
        return
    if is_main(state) and not keep:
        shutil.rmtree(work, ignore_errors=True)
    raise error


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


def cpu_info() -> dict[str, object]:
    """This CPU's kind (vendor, family and model) and its feature flags, from /proc/cpuinfo on Linux;
    elsewhere the kind is `platform.processor()` and the flags are unknown (empty)."""
    import platform

    fields: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if all(k in fields for k in ("vendor_id", "cpu family", "model")):
        kind = f"{fields['vendor_id']} family {fields['cpu family']} model {fields['model']}"
    else:
        kind = platform.processor() or platform.machine()
    return {"kind": kind, "flags": set(fields.get("flags", "").split())}


def environment() -> dict[str, object]:
    """What `ibdc env` reports: the text to paste into a bug report."""
    import platform
    from importlib import metadata

    from ibdc_cli.version import __version__

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    cuda = torch.cuda.is_available()
    return {
        "ibdc": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "torchaudio": version("torchaudio"),
        "accelerate": version("accelerate"),
        "safetensors": version("safetensors"),
        "imagebind code": f"imagebind-unofficial {version('imagebind-unofficial')}",
        "cuda available": cuda,
        "cuda version": torch.version.cuda or "none (CPU build)",
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cpu cores": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "world size": int(os.environ.get("WORLD_SIZE", "1")),
        "rank": int(os.environ.get("RANK", "0")),
    }
