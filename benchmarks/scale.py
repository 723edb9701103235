"""Scale of `ibdc condense` (and `ibdc evaluate --train`): wall time and peak memory on large stores.

Writes synthetic stores of a given shape through the store writer (`ibdc_cli.store.write_store`, in a
child process, so this process stays small): C classes x R rows per class x D dimensions per modality,
class-structured unit vectors (a class centre per modality plus isotropic noise; the modalities of a row
share its class, not its noise). Then runs `ibdc condense` on each store as a user would (a child
process, or `torchrun --nproc_per_node N` for N processes, `OMP_NUM_THREADS` = --threads each), at the
defaults unless --condense-options says otherwise, and records:

- wall time, and wall time per class;
- the peak resident memory (VmHWM) of every ibdc process of the run, polled every 0.2 s (torchrun's
  launcher, which holds no data, apart);
- the set's own `seconds_per_class` (the real side's frequency-bank CFs vs the optimisation steps);
- whether the sets of different process counts are identical, tensor for tensor.

With --evaluate, also `ibdc evaluate SET --test STORE --train STORE` (the store as its own test set: a
measure of cost, not of accuracy), with its peak memory.

    python benchmarks/scale.py --shape 16x648 --shape 309x648 --processes 1,2 --json scale.json
    python benchmarks/scale.py --quick        # a small smoke run (tests/test_benchmarks.py)

Read ratios within one run, not absolute seconds: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def write_store(path: Path, classes: int, rows: int, dim: int, modalities: list[str], seed: int) -> None:
    """The store `path` of `classes` x `rows` rows, written in this process (called as a child)."""
    import torch
    import torch.nn.functional as F

    from ibdc_cli.store import write_store as write

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(rows)
    labels = labels[torch.randperm(len(labels), generator=g)]  # classes interleaved across shards
    embeddings = {}
    for m in modalities:
        centres = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
        noise = torch.randn(len(labels), dim, generator=g) * (1.5 / dim**0.5)
        embeddings[m] = F.normalize(centres[labels] + noise, dim=-1)
    names = [f"class-{c:03d}" for c in range(classes)]
    write(path, embeddings, labels, class_names=names, encoder={"preset": "synthetic", "weights": "synthetic"})


def watch(command: list[str], env: dict[str, str], log: Path) -> dict:
    """Run `command`; its wall time and the peak RSS (VmHWM, GiB) of every process it started."""
    started = time.time()
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        peaks: dict[int, float] = {}
        launchers: set[int] = set()
        others: set[int] = set()  # short-lived helpers a library starts (not ibdc processes)
        parent = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                family = [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                family = []
            for p in family:
                try:
                    if p.pid not in peaks:
                        cmdline = " ".join(p.cmdline())
                        if "torch.distributed.run" in cmdline:
                            launchers.add(p.pid)
                        elif "ibdc_cli" not in cmdline:
                            others.add(p.pid)
                    with open(f"/proc/{p.pid}/status") as status:
                        hwm = next(line for line in status if line.startswith("VmHWM"))
                    peaks[p.pid] = max(peaks.get(p.pid, 0.0), int(hwm.split()[1]) / 2**20)
                except (OSError, StopIteration, psutil.Error):
                    pass
            time.sleep(0.2)
    wall = time.time() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    workers = [round(peak, 2) for pid, peak in sorted(peaks.items()) if pid not in launchers | others]
    launcher = [round(peaks[pid], 2) for pid in sorted(launchers)]
    return {"wall_s": round(wall, 1), "peak_rss_gib": workers, "launcher_peak_rss_gib": launcher}


def condense_command(store: Path, out: Path, processes: int, args) -> list[str]:
    options = [
        str(store),
        "--modalities",
        ",".join(args.modalities),
        "--dpc",
        str(args.dpc),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--overwrite",
        *args.condense_options.split(),
    ]
    if processes == 1:
        return [sys.executable, "-m", "ibdc_cli", "condense", *options]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    return [*launcher, "-m", "ibdc_cli", "condense", *options]


def same_set(a: Path, b: Path) -> bool:
    import torch

    from ibdc_cli.store import load_synthetic_set

    x, y = load_synthetic_set(a)[0], load_synthetic_set(b)[0]
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def run(args) -> list[dict]:
    work = Path(args.work or tempfile.mkdtemp(prefix="ibdc-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for shape in args.shape:
            classes, rows = (int(v) for v in shape.lower().split("x"))
            store = work / f"store-{classes}x{rows}x{args.dim}"
            if not store.exists():
                began = time.time()
                child = [sys.executable, __file__, "--write-store", str(store), "--shape", shape]
                child += ["--dim", str(args.dim), "--modalities", ",".join(args.modalities)]
                subprocess.run(child, check=True, cwd=ROOT)
                print(f"wrote {store} in {time.time() - began:.0f} s", file=sys.stderr)
            first = None
            for processes in args.processes:
                out = work / f"syn-{classes}x{rows}-p{processes}.safetensors"
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "IBDC_LOG_EVERY": "60"}
                env["PYTHONPATH"] = str(ROOT)
                measured = watch(condense_command(store, out, processes, args), env, work / f"{out.stem}.log")
                meta = json.loads(_metadata(out)["ibdc"])
                row = {
                    "classes": classes,
                    "rows": classes * rows,
                    "dim": args.dim,
                    "modalities": len(args.modalities),
                    "processes": processes,
                    "threads_per_process": args.threads,
                    "peak_memory_mib_per_process": meta.get("peak_memory_mib_per_process"),
                    **measured,
                    "wall_s_per_class": round(measured["wall_s"] / classes, 2),
                    "seconds_per_class": meta.get("seconds_per_class"),
                    "store_mib": round(sum(f.stat().st_size for f in store.iterdir()) / 2**20),
                }
                if first is None:
                    first = out
                else:
                    row["identical_to_1_process"] = same_set(first, out)
                if args.evaluate and processes == args.processes[0]:
                    command = [sys.executable, "-m", "ibdc_cli", "evaluate", str(out), "--test", str(store)]
                    command += ["--train", str(store), "--device", "cpu", "--json"]
                    evaluated = watch(command, env, work / f"eval-{classes}x{rows}.log")
                    row["evaluate_train"] = evaluated
                print(json.dumps(row), file=sys.stderr)
                results.append(row)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return results


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return handle.metadata()


def markdown(results: list[dict]) -> str:
    lines = [
        "| classes | rows | processes | wall s | s / class | bank s / class | steps s / class | peak RSS GiB "
        "(each process) | identical |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        timing = r.get("seconds_per_class") or {}
        peaks = ", ".join(f"{p:.2f}" for p in r["peak_rss_gib"])
        lines.append(
            f"| {r['classes']} | {r['rows']:,} | {r['processes']} | {r['wall_s']:.0f} | {r['wall_s_per_class']:.2f} | "
            f"{timing.get('bank', float('nan')):.2f} | {timing.get('steps', float('nan')):.2f} | {peaks} | "
            f"{r.get('identical_to_1_process', '—')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", action="append", help="CLASSESxROWS_PER_CLASS (repeatable)")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--modalities", type=lambda s: s.split(","), default=["audio", "image"])
    parser.add_argument("--dpc", type=int, default=10)
    parser.add_argument("--processes", type=lambda s: [int(v) for v in s.split(",")], default=[1])
    parser.add_argument(
        "--threads", type=int, default=1, help="threads per process (the same for every N: sets are compared)"
    )
    parser.add_argument("--condense-options", default="", help="extra `ibdc condense` options, e.g. '--iterations 5'")
    parser.add_argument("--evaluate", action="store_true", help="also `ibdc evaluate SET --test STORE --train STORE`")
    parser.add_argument("--work", help="folder for the stores and sets (kept); default: a temporary one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--write-store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_store:
        classes, rows = (int(v) for v in args.shape[0].lower().split("x"))
        write_store(Path(args.write_store), classes, rows, args.dim, args.modalities, seed=0)
        return
    if args.quick:
        args.shape, args.dim, args.processes = ["4x40"], 32, [1, 2]
        args.condense_options = "--iterations 3 --num-freqs 64 --freq-bank 2 " + args.condense_options
        args.evaluate = True
    args.shape = args.shape or ["16x648", "309x648"]
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
