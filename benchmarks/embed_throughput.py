"""Embedding throughput of `ibdc embed`: DataLoader workers + batching vs. a one-row-at-a-time loop.

What it measures, in one process and one run (read the ratios, not the absolute numbers):

1. builds the av-digits benchmark (`ibdc_cli.data.benchmark.build_av_digits`) with enough rows per class
   and writes a sub-manifest of its first `--rows` train rows beside `train.csv`, so paths still resolve;
2. `batched`: `ibdc_cli.embed.embed_manifest` on that sub-manifest (DataLoader workers decode, the encoder
   runs on batches of `--batch-size`), end to end: encoder build, manifest checks, store write; with
   `--workers 2,0` once per worker count;
3. `loop`: the naive way over the same rows: build the encoder, then for each row and modality
   `preprocess.load(...)` and `encoder.embed(modality, x[None])` under `torch.inference_mode`;
4. checks that both give the same embeddings (max abs difference) so the comparison is fair;
5. prints method, rows, seconds, rows/s, the speed-up over the loop, CPU time and peak RSS (main process +
   DataLoader workers), plus the machine's CPU pressure before and after. Each method runs `--repeats`
   times, interleaved, and its fastest repeat counts: on a shared machine other jobs only ever add time.

The encoder is the small random-init preset `imagebind_tiny` on the CPU; torch's intra-op threads are set
to the CPU count explicitly (workers use 1 thread each, as `ibdc embed` sets them). Imports and one
forward pass per modality are warmed up before anything is timed.

Run from the repository root:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/embed_throughput.py
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/embed_throughput.py --workers 2,0 --json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ibdc_cli.data.benchmark import build_av_digits
from ibdc_cli.data.manifest import parse_modalities, read_manifest
from ibdc_cli.data.preprocess import load
from ibdc_cli.embed import embed_manifest
from ibdc_cli.encoders.imagebind import load_encoder
from ibdc_cli.runtime import set_quiet
from ibdc_cli.store import open_store

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO / ".ibdc-cache" / "bench" / "av-digits"
MODEL = "imagebind_tiny"
SEED = 0
MAX_ABS_DIFF = 1e-4  # batched and single-row forward passes differ only by float summation order
SAMPLE_SECONDS = 0.05  # RSS polling period: often enough to catch worker peaks, cheap on 2 cores
MIB = 1024 * 1024

try:
    import psutil
except ImportError:  # fall back to getrusage, which cannot separate the two methods' peaks
    psutil = None


@dataclass
class Measurement:
    """One method's repeats. Its time is the fastest repeat: on a shared machine, noise only adds time."""

    method: str
    rows: int
    repeat_seconds: list[float] = field(default_factory=list)
    repeat_cpu_seconds: list[float] = field(default_factory=list)  # user + system, this process + workers
    peak_rss_mib: float | None = None  # this process + its DataLoader workers, max over repeats
    peak_rss_main_mib: float | None = None  # this process alone, max over repeats

    @property
    def seconds(self) -> float:
        return min(self.repeat_seconds)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def cpu_seconds(self) -> float:
        """CPU time of the fastest repeat."""
        return self.repeat_cpu_seconds[self.repeat_seconds.index(self.seconds)]

    def as_dict(self) -> dict:
        extra = {"seconds": self.seconds, "rows_per_s": self.rows_per_s, "cpu_seconds": self.cpu_seconds}
        return {**asdict(self), **extra}


# ------------------------------------------------------------------------------------------------- data


def prepare_manifest(data_dir: Path, rows: int) -> Path:
    """Build av-digits under `data_dir` and write `train-first{rows}.csv` holding its first `rows` train rows."""
    per_class = math.ceil(rows / 10)  # ten classes; the train split holds per_class rows of each
    train = build_av_digits(data_dir, per_class=per_class)["train"]
    with open(train, newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    if len(records) < rows:
        raise SystemExit(f"av-digits has only {len(records)} train rows; ask for --rows {len(records)} or fewer")
    subset = train.with_name(f"train-first{rows}.csv")
    with open(subset, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records[:rows])
    return subset


# ----------------------------------------------------------------------------------------------- memory


@contextmanager
def peak_rss() -> Iterator[dict[str, float | None]]:
    """Peak RSS in MiB while the block runs: of this process (`main_mib`) and of it plus its children,
    the DataLoader workers (`total_mib`).

    With psutil, a thread polls every SAMPLE_SECONDS. Pages a worker shares with the main process (the
    torch libraries, copy-on-write memory from fork) count once per process in the total, so the total
    is an upper bound. Without psutil both are None; see `rusage_peaks` for what getrusage can say.
    """
    result: dict[str, float | None] = {"main_mib": None, "total_mib": None}
    if psutil is None:
        yield result
        return
    me = psutil.Process()
    peak_main = peak_total = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_main, peak_total
        main = me.memory_info().rss
        total = main
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:  # a worker that exited between listing and reading
                pass
        peak_main, peak_total = max(peak_main, main), max(peak_total, total)

    def poll() -> None:
        while not done.is_set():
            sample()
            done.wait(SAMPLE_SECONDS)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield result
    finally:
        done.set()
        poller.join()
        sample()
        result["main_mib"], result["total_mib"] = peak_main / MIB, peak_total / MIB


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (workers are joined by then)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def cpu_pressure() -> str:
    """Linux PSI: % of time some runnable task here waited for a CPU ("avg10=.. avg60=.. ..."), or "n/a"."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0].removeprefix("some ")
    except (OSError, IndexError):
        return "n/a"


def rusage_peaks() -> dict[str, float]:
    """getrusage ru_maxrss in MiB (Linux reports KiB): this process's lifetime peak, and the largest
    peak of any single finished child (DataLoader workers, but also the espeak-ng calls of a build)."""
    return {
        "self_lifetime_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "largest_child_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


# ---------------------------------------------------------------------------------------------- methods


def time_once(measurement: Measurement, run: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Run one repeat of a method, add its time and memory to `measurement`, return its embeddings."""
    with peak_rss() as memory:
        cpu_started = cpu_seconds()
        started = time.perf_counter()
        embeddings = run()
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_started
    measurement.repeat_seconds.append(seconds)
    measurement.repeat_cpu_seconds.append(cpu)
    if memory["total_mib"] is not None:
        measurement.peak_rss_mib = max(measurement.peak_rss_mib or 0.0, memory["total_mib"])
        measurement.peak_rss_main_mib = max(measurement.peak_rss_main_mib or 0.0, memory["main_mib"])
    return embeddings


def embed_batched(manifest: Path, modalities: list[str], batch_size: int, workers: int) -> dict[str, torch.Tensor]:
    """`ibdc embed` as a library call; the store goes to a temporary directory and is read back."""
    scratch = Path(tempfile.mkdtemp(prefix="ibdc-bench-"))
    try:
        embed_manifest(
            manifest,
            modalities,
            scratch / "store",
            model=MODEL,
            seed=SEED,
            batch_size=batch_size,
            workers=workers,
            device="cpu",
        )
        data = open_store(scratch / "store").load(modalities)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    order = data["row"].argsort()
    return {m: data[m][order] for m in modalities}


def embed_loop(manifest_path: Path, modalities: list[str]) -> dict[str, torch.Tensor]:
    """The naive way: one row at a time, preprocess then forward, no workers, no batching."""
    manifest = read_manifest(manifest_path, modalities, require_label=False)
    encoder = load_encoder(MODEL, seed=SEED)
    outputs: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    with torch.inference_mode():
        for row in manifest.rows:
            for modality in modalities:
                x = load(modality, row[modality], manifest.base_dir)
                outputs[modality].append(encoder.embed(modality, x[None]))
    return {m: torch.cat(v) for m, v in outputs.items()}


def warm_up(manifest_path: Path, modalities: list[str]) -> None:
    """Import ImageBind and run one forward per modality, so neither timed method pays one-time costs."""
    manifest = read_manifest(manifest_path, modalities, require_label=False)
    encoder = load_encoder(MODEL, seed=SEED)
    with torch.inference_mode():
        for modality in modalities:
            encoder.embed(modality, load(modality, manifest.rows[0][modality], manifest.base_dir)[None])


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[m] - b[m]).abs().max()) for m in a)


# ----------------------------------------------------------------------------------------------- report


def print_table(results: list[Measurement], info: dict) -> None:
    header = (
        f"{'method':<34} {'rows':>5} {'seconds':>8} {'rows/s':>8} {'speed-up':>9} {'CPU s':>6} "
        f"{'peak RSS MiB (main+workers)':>28} {'(main only)':>12}   all repeats (wall s/CPU s)"
    )
    print(header)
    print("-" * len(header))
    loop = results[-1]
    for r in results:
        total = f"{r.peak_rss_mib:.0f}" if r.peak_rss_mib is not None else "n/a"
        main = f"{r.peak_rss_main_mib:.0f}" if r.peak_rss_main_mib is not None else "n/a"
        speedup = f"{r.rows_per_s / loop.rows_per_s:.2f}x"
        repeats = " ".join(f"{t:.1f}/{c:.1f}" for t, c in zip(r.repeat_seconds, r.repeat_cpu_seconds, strict=True))
        print(
            f"{r.method:<34} {r.rows:>5} {r.seconds:>8.2f} {r.rows_per_s:>8.1f} {speedup:>9} {r.cpu_seconds:>6.1f} "
            f"{total:>28} {main:>12}   {repeats}"
        )
    print()
    print(
        f"seconds: fastest of {info['repeats']} interleaved repeats; speed-up: rows/s of the method / rows/s "
        "of the loop; CPU s: user+system CPU time of that repeat, this process + workers"
    )
    print(f"max |batched - loop| over all embeddings: {info['max_abs_diff']:.2e} (limit {MAX_ABS_DIFF:.0e})")
    print(
        f"modalities {','.join(info['modalities'])}; model {MODEL} (random init, seed {SEED}), CPU; "
        f"torch threads set to the CPU count: {info['torch_threads']} (os.cpu_count() = {info['cpu_count']}); "
        f"OMP_NUM_THREADS={info['omp_num_threads']}; torch {info['torch']}, Python {info['python']}"
    )
    print(f"peak RSS: {info['memory_method']}")
    print(f"CPU pressure (/proc/pressure/cpu, some) before: {info['cpu_pressure_before']}")
    print(f"                                        after:  {info['cpu_pressure_after']}")
    rusage = info["rusage"]
    print(
        f"getrusage ru_maxrss: this process's lifetime peak {rusage['self_lifetime_mib']:.0f} MiB, "
        f"largest single child {rusage['largest_child_mib']:.0f} MiB"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300, help="train rows of av-digits to embed (default 300)")
    parser.add_argument("--modalities", default="image,audio", help="comma-separated (default image,audio)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of the batched method (default 32)")
    parser.add_argument(
        "--workers",
        default="2",
        help="DataLoader workers of the batched method; a comma list (e.g. 2,0) measures each (default 2)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats per method; the fastest counts (default 3)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"where av-digits is built and cached (default {DEFAULT_DATA_DIR.relative_to(REPO)})",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rows < 1 or args.repeats < 1:
        raise SystemExit("--rows and --repeats must be at least 1")
    try:
        worker_counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        raise SystemExit(f"--workers takes integers separated by commas, not {args.workers!r}") from None
    modalities = parse_modalities(args.modalities)
    cpu_count = os.cpu_count() or 1
    torch.set_num_threads(cpu_count)
    set_quiet(True)

    manifest = prepare_manifest(args.data_dir, args.rows)
    warm_up(manifest, modalities)
    pressure_before = cpu_pressure()
    methods: list[tuple[Measurement, Callable[[], dict[str, torch.Tensor]]]] = [
        (
            Measurement(f"batched (batch {args.batch_size}, {w} workers)", args.rows),
            lambda w=w: embed_batched(manifest, modalities, args.batch_size, w),
        )
        for w in worker_counts
    ]
    methods.append(
        (Measurement("loop (1 row at a time, no workers)", args.rows), lambda: embed_loop(manifest, modalities))
    )
    # Interleave the repeats (A B C A B C ...) so that a burst of load from other jobs hits every method.
    outputs = {}
    for _ in range(args.repeats):
        for measurement, run in methods:
            outputs[measurement.method] = time_once(measurement, run)
    results = [measurement for measurement, _ in methods]
    loop_out = outputs[results[-1].method]

    diff = max(max_abs_diff(outputs[r.method], loop_out) for r in results[:-1])
    info = {
        "manifest": str(manifest),
        "modalities": modalities,
        "repeats": args.repeats,
        "speedup": {r.method: r.rows_per_s / results[-1].rows_per_s for r in results[:-1]},
        "max_abs_diff": diff,
        "same_embeddings": diff < MAX_ABS_DIFF,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": cpu_count,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "memory_method": (
            f"psutil {psutil.__version__}, polled every {SAMPLE_SECONDS * 1000:.0f} ms; main+workers is the "
            "sum of their RSS, counting pages shared by fork once per process (an upper bound)"
            if psutil
            else "psutil not installed: per-method peaks unavailable, see getrusage"
        ),
        "rusage": rusage_peaks(),
        "cpu_pressure_before": pressure_before,
        "cpu_pressure_after": cpu_pressure(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if args.json:
        print(json.dumps({"results": [r.as_dict() for r in results], **info}, indent=2))
    else:
        print_table(results, info)
    if not info["same_embeddings"]:
        print(f"batched and loop embeddings differ by {diff:.2e} >= {MAX_ABS_DIFF:.0e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
