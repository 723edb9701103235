"""Experiment tracking (`--log-with csv|tensorboard|wandb`) through Accelerate's tracker classes.

Off by default. A command opens a run with `tracking.run(...)` around its work; the code inside calls
`tracking.log(values, step)`, which does nothing when no run is open, so the recipes need no tracker
argument. `csv` is ibdc's own `GeneralTracker` (no extra package, nothing leaves the machine);
`tensorboard` and `wandb` are Accelerate's, and need their packages installed.

The CSV file is long-form, one value per line, so runs with different keys read the same way:

    step,name,value
    0,class/zero/total,0.4125
    0,class/zero/seconds,0.0213

In a run of N processes each process logs its own share (condense: its classes) to its own run,
named `RUN-rank{r}`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker

from ibdc_cli.errors import IbdcError

TRACKERS = ("csv", "tensorboard", "wandb")


class CSVTracker(GeneralTracker):
    """`LOGGING_DIR/RUN.csv` (step, name, value) and the run's settings in `LOGGING_DIR/RUN.config.json`."""

    name = "csv"
    requires_logging_directory = True
    main_process_only = False  # each process writes its own file (see the module docstring)

    def __init__(self, run_name: str, logging_dir: str | Path):
        super().__init__()
        self.path = Path(logging_dir) / f"{run_name}.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w", newline="")  # noqa: SIM115 (closed in finish)
        self.writer = csv.writer(self.handle)
        self.writer.writerow(["step", "name", "value"])

    @property
    def tracker(self):
        return self.handle

    def store_init_configuration(self, values: dict) -> None:
        config = self.path.with_suffix(".config.json")
        config.write_text(json.dumps(values, indent=2, default=str) + "\n")

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        for name, value in values.items():
            self.writer.writerow(["" if step is None else step, name, value])
        self.handle.flush()

    def finish(self) -> None:
        self.handle.close()


def read_csv_log(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """A CSV log as `{name: [(step, value), ...]}` in file order."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            series.setdefault(row["name"], []).append((int(row["step"]), float(row["value"])))
    return series


_active: list[GeneralTracker] = []


def _make(name: str, run_name: str, logging_dir: Path) -> GeneralTracker:
    if name == "csv":
        return CSVTracker(run_name, logging_dir)
    try:
        if name == "tensorboard":
            from accelerate.tracking import TensorBoardTracker

            tracker = TensorBoardTracker(run_name, logging_dir)
        else:
            from accelerate.tracking import WandBTracker

            tracker = WandBTracker(run_name, dir=str(logging_dir))
        tracker.start()
    except ImportError as exc:
        raise IbdcError(f"--log-with {name} needs the {name} package: pip install {name} ({exc})") from None
    return tracker


def _plain(value: Any) -> Any:
    """A setting as trackers accept it: bool, str, int, float or None (lists and dicts as JSON text)."""
    if value is None or isinstance(value, bool | str | int | float):
        return value
    return json.dumps(value, default=str)


@contextlib.contextmanager
def run(names: list[str], run_name: str, logging_dir: str | Path, config: dict[str, Any], state=None) -> Iterator[None]:
    """Open a tracking run on each tracker of `names` for the code inside; nothing when `names` is empty."""
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise IbdcError(f"--log-with {unknown[0]!r} is not one of: {', '.join(TRACKERS)}")
    if not names:
        yield
        return
    if state is not None and state.num_processes > 1:
        run_name = f"{run_name}-rank{state.process_index}"
    opened = [_make(name, run_name, Path(logging_dir)) for name in names]
    for tracker in opened:
        tracker.store_init_configuration({k: _plain(v) for k, v in config.items()})
    _active.extend(opened)
    try:
        yield
    finally:
        for tracker in opened:
            _active.remove(tracker)
            tracker.finish()


def log(values: dict[str, float], step: int | None = None) -> None:
    """Log `values` to every open run (finite numbers only); does nothing when none is open."""
    if not _active:
        return
    values = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v)}
    for tracker in _active:
        tracker.log(values, step=step)


def parse_log_with(text: str | None) -> list[str]:
    """`"csv,tensorboard"` -> `["csv", "tensorboard"]`; None or "" -> `[]`."""
    return [name.strip().lower() for name in (text or "").split(",") if name.strip()]
