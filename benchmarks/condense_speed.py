"""Condensation speed of `ibdc condense`: how the real side's size and caching change the cost of a step.

What it measures, in one run (read the ratios, not the absolute seconds: the CPU is shared):

1. **scaling** (embedding space): one class of `n` paired real rows (random unit vectors, modalities
   audio + image, `--dim` D, default 1024) for each n in `--rows`, DPC `--dpc` synthetic rows, the
   ImageBindDC loss (`losses.imagebinddc_loss`: uni CFD at `--num-freqs` K frequencies + cross "paper" +
   joint "paper", what `condense.optimisation_step` computes
   with a configured `losses.ImageBindDCLoss`), backward and an Adam step. Modes:
   - `all`: every real row in every step, frequencies redrawn every step (`--real-batch 0`);
   - `batch256`: 256 random real rows per step, frequencies redrawn (`--real-batch 256`, the default);
   - `bank8`: 8 fixed frequency draws whose real-side CFs over all n rows are computed once
     (`losses.modality_cfs`, timed apart as "precompute") and passed as `real_cf=`, with the cross/joint
     terms on all n real rows (how `--freq-bank` first worked; kept for comparison);
   - `bank8+batch256`: the same bank, with the cross/joint terms on 256 random real rows per step: what
     `ibdc condense --freq-bank 8` does now (a `losses.FrequencyBank` with the default --real-batch).
   Each mode runs in a fresh process holding the data of every n; its steps are interleaved round-robin
   over n (one step at each n, then again), so the machine's load hits every n alike and the ratios
   across n stay fair on a shared CPU. Peak RSS (`ru_maxrss`) is read after each n's warm-up, in
   ascending n: the peak of that process so far (all n's data + the largest transient up to that n).
2. **accuracy** on av-digits (the demo stores, `ibdc_cli.demo.ensure_demo_stores`, imagebind_tiny):
   `condense` with audio + image, DPC 10, CondenseConfig's iterations and frequencies unless
   `--iterations`/`--accuracy-num-freqs` say otherwise, with the real side unbounded (`real_batch=0`),
   bounded (`real_batch=64`: classes have ~144 rows, so the default 256 would take them all) and through a
   frequency bank (`freq_bank=8`); then `evaluate` (linear protocol, `--eval-seeds` seeds): mean ± std
   top-1 accuracy, its ratio to the unbounded run, and each condensation's wall time.
3. **input space** (imagebind_tiny, image + audio, random inputs of `INPUT_SHAPES`): a step of optimising
   DPC synthetic inputs through the frozen encoder with the ImageBindDC loss against `--real-rows` real
   rows, (a) `cached`: real embeddings computed once (what `ibdc condense --space input` does), or
   (b) `recompute`: the real inputs re-embedded under `torch.no_grad` every step (the authors' code).
   The two are interleaved step by step.

Torch's intra-op threads are `--threads` (default 2) in every process. Every setting runs warm-up steps,
then up to `--steps` timed steps, and stops timing once `--max-seconds` of timed steps are spent (at least
one step counts).

Run from the repository root (the first run builds the demo stores, about 1-2 min, cached afterwards):

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/condense_speed.py
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/condense_speed.py --quick          # smoke run, < 1 min
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/condense_speed.py --parts 1 --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from ibdc_cli import losses

MODALITIES = ("audio", "image")
SCALING_MODES = ("all", "batch256", "bank8", "bank8+batch256")
BOUNDED_GROWTH_TARGET = 1.2  # bounded modes: time per step at the largest n / at the smallest n
ACCURACY_RATIO_TARGET = 0.95
INPUT_SPEEDUP_TARGETS = {1: 40.0, 10: 6.0}
MODEL = "imagebind_tiny"
MIB = 2**20
HEAD_EPOCHS = 300  # HeadSchedule's default


@dataclass
class Timing:
    """Seconds of the timed steps of one setting (warm-up excluded)."""

    steps: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.steps)

    @property
    def median(self) -> float:
        return statistics.median(self.steps)


def time_interleaved(
    steps: dict[object, Callable[[], object]],
    *,
    warmup: int,
    count: int,
    max_seconds: float,
    after_warmup: Callable[[object], None] = lambda key: None,
) -> dict[object, Timing]:
    """Time several step functions fairly on a noisy machine: warm each up, then round-robin.

    Each key gets `warmup` untimed calls (fewer when one alone takes longer than `max_seconds / count`:
    one-off costs no longer matter then) and `after_warmup(key)`; then rounds of one timed call per key,
    until a key has `count` timed calls or has spent `max_seconds` (it always gets at least one).
    """
    for key, step in steps.items():
        for _ in range(warmup):
            started = time.perf_counter()
            step()
            if time.perf_counter() - started > max_seconds / max(count, 1):
                break
        after_warmup(key)
    timings = {key: Timing() for key in steps}

    def wants_more(key) -> bool:
        done = timings[key].steps
        return not done or (len(done) < count and sum(done) < max_seconds)

    while any(wants_more(key) for key in steps):
        for key, step in steps.items():
            if wants_more(key):
                started = time.perf_counter()
                step()
                timings[key].steps.append(time.perf_counter() - started)
    return timings


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # ru_maxrss is in KiB on Linux


def cpu_pressure() -> str:
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0].removeprefix("some ")
    except OSError:
        return "n/a"


# ----------------------------------------------------------------------------------------------------
# 1. scaling of the real side, embedding space


@dataclass
class ScalingSetting:
    """What one process of the scaling grid measures: `modes` (one group) at every n of `rows`."""

    rows: list[int]
    modes: list[str]
    dim: int
    num_freqs: int
    dpc: int
    bank: int
    batch: int
    warmup: int
    steps: int
    max_seconds: float
    threads: int
    seed: int = 0


def paired_unit_vectors(n: int, dim: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`{audio, image}` -> `[n, dim]` unit rows; row i of both comes from one latent (the rows are paired)."""
    latent = torch.randn(n, dim, generator=generator)
    return {m: F.normalize(latent + torch.randn(n, dim, generator=generator), dim=-1) for m in MODALITIES}


def random_rows(real: dict[str, torch.Tensor], size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`size` random rows, the same for every modality (as `ibdc condense --real-batch` draws them); all if
    size is 0 or >= n."""
    n = next(iter(real.values())).shape[0]
    if size == 0 or n <= size:
        return real
    index = torch.randperm(n, generator=generator)[:size]
    return {m: v[index] for m, v in real.items()}


def frequency_bank(real: dict[str, torch.Tensor], setting: ScalingSetting, generator: torch.Generator):
    """`setting.bank` fixed draws and the real side's CFs over all rows: the `losses.FrequencyBank` of
    `ibdc condense --freq-bank` (one class, id 0)."""
    dims = {m: v.shape[1] for m, v in real.items()}
    bank = losses.FrequencyBank.draw(setting.bank, dims, setting.num_freqs, 1.0, joint=False, generator=generator)
    bank.add_class(0, real)
    return bank


def imagebinddc_step(real, params, optimizer, mode: str, setting: ScalingSetting, bank, generator) -> float:
    """One optimisation step of one class, as `condense.optimisation_step` runs `imagebinddc` in embedding space."""
    batch = random_rows(real, setting.batch if mode.endswith("batch256") else 0, generator)
    syn = {m: F.normalize(p, dim=-1) for m, p in params.items()}
    loss = losses.ImageBindDCLoss(num_freqs=setting.num_freqs, sigma=1.0, cross_form="paper", joint_form="paper")
    terms = loss(batch, syn, generator=generator, bank=bank if mode.startswith("bank") else None, class_id=0)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    return float(terms["total"].detach())


def run_scaling_group(setting: ScalingSetting) -> list[dict]:
    """Time `setting.modes` at every n, steps interleaved over (mode, n); meant for a fresh process."""
    torch.set_num_threads(setting.threads)
    generator = torch.Generator().manual_seed(setting.seed)
    data = {n: paired_unit_vectors(n, setting.dim, generator) for n in sorted(setting.rows)}
    banks, precompute = {}, {}
    if any(mode.startswith("bank") for mode in setting.modes):
        for n, real in data.items():
            started = time.perf_counter()
            banks[n] = frequency_bank(real, setting, generator)
            precompute[n] = time.perf_counter() - started
            print(f"  scaling n={n}: frequency bank of {setting.bank} in {precompute[n]:.1f} s", file=sys.stderr)
    steps = {}
    for mode in setting.modes:
        for n, real in data.items():
            params = {m: real[m][: setting.dpc].clone().requires_grad_(True) for m in MODALITIES}
            optimizer = torch.optim.Adam(list(params.values()), lr=0.05)
            steps[mode, n] = partial(imagebinddc_step, real, params, optimizer, mode, setting, banks.get(n), generator)
    peak = {}
    timings = time_interleaved(
        steps,
        warmup=setting.warmup,
        count=setting.steps,
        max_seconds=setting.max_seconds,
        after_warmup=lambda key: peak.__setitem__(key, peak_rss_mib()),
    )
    results = []
    for (mode, n), timing in timings.items():
        results.append(
            {
                "n": n,
                "mode": mode,
                "step_seconds": timing.steps,
                "mean_s": timing.mean,
                "median_s": timing.median,
                "precompute_s": precompute.get(n) if mode.startswith("bank") else None,
                "real_data_mib": 2 * n * setting.dim * 4 / MIB,
                "peak_rss_mib": peak[mode, n],
            }
        )
        print(f"  scaling n={n} {mode}: {timing.mean:.4f} s/step ({len(timing.steps)} steps)", file=sys.stderr)
    return results


def scaling_groups(modes: list[str]) -> list[list[str]]:
    """Modes that share a process: each unbanked mode alone, the bank modes together (one bank per n)."""
    banked = [m for m in modes if m.startswith("bank")]
    return [[m] for m in modes if not m.startswith("bank")] + ([banked] if banked else [])


def measure_scaling(args: argparse.Namespace) -> dict:
    results = []
    context = multiprocessing.get_context("spawn")
    for modes in scaling_groups(args.modes):
        setting = ScalingSetting(
            rows=args.rows,
            modes=modes,
            dim=args.dim,
            num_freqs=args.num_freqs,
            dpc=args.dpc,
            bank=args.bank,
            batch=args.real_batch,
            warmup=args.warmup,
            steps=args.steps,
            max_seconds=args.max_seconds,
            threads=args.threads,
        )
        if args.isolate:
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                results += pool.submit(run_scaling_group, setting).result()
        else:
            results += run_scaling_group(setting)
    order = {mode: i for i, mode in enumerate(SCALING_MODES)}
    results.sort(key=lambda r: (r["n"], order[r["mode"]]))
    smallest, largest = min(args.rows), max(args.rows)
    base = {r["mode"]: r for r in results if r["n"] == smallest}
    for r in results:
        r["ratio_mean"] = r["mean_s"] / base[r["mode"]]["mean_s"]
        r["ratio_median"] = r["median_s"] / base[r["mode"]]["median_s"]
    growth = {r["mode"]: r["ratio_mean"] for r in results if r["n"] == largest and r["mode"] != "all"}
    return {
        "settings": {
            "dim": args.dim,
            "num_freqs": args.num_freqs,
            "dpc": args.dpc,
            "bank": args.bank,
            "real_batch": args.real_batch,
            "isolated_processes": args.isolate,
        },
        "results": results,
        "bounded_growth": growth,
        "target": f"bounded modes: mean time per step at n={largest} <= {BOUNDED_GROWTH_TARGET}x n={smallest}",
        "met": {mode: g <= BOUNDED_GROWTH_TARGET for mode, g in growth.items()},
    }


# ----------------------------------------------------------------------------------------------------
# 2. accuracy of a bounded real side on av-digits


def measure_accuracy(args: argparse.Namespace) -> dict:
    from ibdc_cli.condense import CondenseConfig, condense
    from ibdc_cli.demo import ensure_demo_stores
    from ibdc_cli.evaluation import HeadSchedule, evaluate
    from ibdc_cli.runtime import set_quiet

    set_quiet(True)
    stores = ensure_demo_stores()
    variants = {
        # fresh frequencies every step unless the variant is the bank (the default now has a bank of 16)
        "unbounded (real_batch=0)": {"real_batch": 0, "freq_bank": 0},
        f"bounded (real_batch={args.accuracy_real_batch})": {"real_batch": args.accuracy_real_batch, "freq_bank": 0},
        f"frequency bank (freq_bank={args.bank})": {"freq_bank": args.bank},
    }
    overrides = {}
    if args.iterations is not None:
        overrides["iterations"] = args.iterations
    if args.accuracy_num_freqs is not None:
        overrides["num_freqs"] = args.accuracy_num_freqs
    results = []
    with tempfile.TemporaryDirectory(prefix="ibdc-condense-speed-") as tmp:
        for name, variant in variants.items():
            config = CondenseConfig(
                modalities=list(MODALITIES), dpc=10, seed=args.condense_seed, **overrides, **variant
            )
            out = Path(tmp) / f"syn-{len(results)}.safetensors"
            started = time.perf_counter()
            condense(stores["train"], out, config, device="cpu")
            seconds = time.perf_counter() - started
            scores = evaluate(
                out, stores["test"], seeds=args.eval_seeds, schedule=HeadSchedule(epochs=args.eval_epochs)
            )
            results.append(
                {
                    "variant": name,
                    "config": {
                        "iterations": config.iterations,
                        "num_freqs": config.num_freqs,
                        "real_batch": config.real_batch,
                        "freq_bank": config.freq_bank,
                        "seed": config.seed,
                    },
                    "condense_s": seconds,
                    "mean": scores["mean"],
                    "std": scores["std"],
                    "runs": scores["runs"],
                }
            )
            print(f"  accuracy {name}: {scores['mean']:.2f} % in {seconds:.1f} s", file=sys.stderr)
    for r in results:
        r["ratio_vs_unbounded"] = r["mean"] / results[0]["mean"]
        r["time_ratio_vs_unbounded"] = r["condense_s"] / results[0]["condense_s"]
    return {
        "train_store": str(stores["train"]),
        "test_store": str(stores["test"]),
        "results": results,
        "target": f"accuracy ratio to unbounded >= {ACCURACY_RATIO_TARGET}",
        "met": {r["variant"]: r["ratio_vs_unbounded"] >= ACCURACY_RATIO_TARGET for r in results[1:]},
    }


# ----------------------------------------------------------------------------------------------------
# 3. input space: cached real embeddings vs re-embedding the real inputs every step


def input_space_step(encoder, params, optimizer, real_inputs, real_embeddings, num_freqs, generator) -> float:
    """One step: embed the synthetic inputs `[dpc, ...]`, ImageBindDC loss, backward, Adam.

    `real_embeddings` None: re-embed `real_inputs` under no_grad first (the authors' per-step real pass).
    """
    if real_embeddings is None:
        with torch.no_grad():
            real_embeddings = {m: encoder.embed(m, x) for m, x in real_inputs.items()}
    syn = {m: encoder.embed(m, p) for m, p in params.items()}
    freqs = {m: losses.sample_frequencies(num_freqs, v.shape[1], generator=generator) for m, v in syn.items()}
    terms = losses.imagebinddc_loss(
        real_embeddings, syn, freqs=freqs, freqs_joint=None, cross_form="paper", joint_form="paper"
    )
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    return float(terms["total"].detach())


def measure_input_space(args: argparse.Namespace) -> dict:
    from ibdc_cli.data.preprocess import INPUT_SHAPES
    from ibdc_cli.encoders.imagebind import load_encoder

    modalities = ("image", "audio")
    encoder = load_encoder(MODEL, seed=0)
    generator = torch.Generator().manual_seed(0)
    real_inputs = {m: torch.randn((args.real_rows, *INPUT_SHAPES[m]), generator=generator) for m in modalities}
    started = time.perf_counter()
    with torch.no_grad():
        cached = {m: encoder.embed(m, x) for m, x in real_inputs.items()}
    embed_once = time.perf_counter() - started
    results = []
    for dpc in args.input_dpcs:
        steps = {}
        for name, real_embeddings in (("cached", cached), ("recompute", None)):
            params = {
                m: torch.randn((dpc, *INPUT_SHAPES[m]), generator=generator).requires_grad_(True) for m in modalities
            }
            optimizer = torch.optim.Adam(list(params.values()), lr=0.01)
            steps[name] = partial(
                input_space_step, encoder, params, optimizer, real_inputs, real_embeddings, args.num_freqs, generator
            )
        timings = time_interleaved(
            steps, warmup=args.input_warmup, count=args.input_steps, max_seconds=args.max_seconds
        )
        row = {"dpc": dpc, "real_rows": args.real_rows, "embed_real_once_s": embed_once}
        for name, timing in timings.items():
            row[f"{name}_s"] = timing.mean
            row[f"{name}_median_s"] = timing.median
            row[f"{name}_steps"] = timing.steps
        row["speedup"] = row["recompute_s"] / row["cached_s"]
        row["speedup_median"] = row["recompute_median_s"] / row["cached_median_s"]
        row["target"] = INPUT_SPEEDUP_TARGETS.get(dpc)
        row["met"] = None if row["target"] is None else row["speedup"] >= row["target"]
        results.append(row)
        print(
            f"  input space dpc={dpc}: cached {row['cached_s']:.3f} s, recompute {row['recompute_s']:.3f} s",
            file=sys.stderr,
        )
    return {
        "model": MODEL,
        "modalities": list(modalities),
        "loss": "imagebinddc (uni + cross paper + joint paper)",
        "num_freqs": args.num_freqs,
        "results": results,
    }


# ----------------------------------------------------------------------------------------------------
# output


def print_scaling(scaling: dict, args: argparse.Namespace) -> None:
    smallest = min(args.rows)
    print(
        f"\n### 1. Real side scaling, embedding space (D={args.dim}, K={args.num_freqs}, DPC {args.dpc}, "
        f"one class, audio+image)\n"
    )
    print(
        f"| n real rows | mode | steps timed | mean s/step | median s/step | mean × n={smallest} "
        f"| median × n={smallest} | precompute s | real data MiB | peak RSS MiB |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in scaling["results"]:
        precompute = "–" if r["precompute_s"] is None else f"{r['precompute_s']:.2f}"
        print(
            f"| {r['n']} | {r['mode']} | {len(r['step_seconds'])} | {r['mean_s']:.4f} | {r['median_s']:.4f} | "
            f"{r['ratio_mean']:.2f}× | {r['ratio_median']:.2f}× | {precompute} | {r['real_data_mib']:.0f} "
            f"| {r['peak_rss_mib']:.0f} |"
        )
    print(
        f"\nTarget ({scaling['target']}): "
        + ", ".join(
            f"{m} {g:.2f}× {'met' if scaling['met'][m] else 'NOT met'}" for m, g in scaling["bounded_growth"].items()
        )
    )


def print_accuracy(accuracy: dict) -> None:
    first = accuracy["results"][0]["config"]
    print(
        f"\n### 2. Accuracy on av-digits (imagebind_tiny, audio+image, DPC 10, iterations {first['iterations']}, "
        f"K={first['num_freqs']}, condense seed {first['seed']}, linear probe)\n"
    )
    print("| real side | accuracy % (mean ± std) | ratio to unbounded | condense s | time ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in accuracy["results"]:
        print(
            f"| {r['variant']} | {r['mean']:.2f} ± {r['std']:.2f} | {r['ratio_vs_unbounded']:.3f} | "
            f"{r['condense_s']:.1f} | {r['time_ratio_vs_unbounded']:.2f}× |"
        )
    print(
        f"\nTarget ({accuracy['target']}): "
        + ", ".join(f"{v}: {'met' if ok else 'NOT met'}" for v, ok in accuracy["met"].items())
    )


def print_input_space(inputs: dict) -> None:
    rows = inputs["results"][0]["real_rows"]
    print(
        f"\n### 3. Input space, {inputs['model']} (image+audio, {inputs['loss']}, K={inputs['num_freqs']}, "
        f"{rows} real rows)\n"
    )
    print(
        "| DPC | steps timed | cached s/step | recompute s/step | speed-up (mean) | speed-up (median) | target | met |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in inputs["results"]:
        target = "–" if r["target"] is None else f"≥ {r['target']:.0f}×"
        met = "–" if r["met"] is None else ("yes" if r["met"] else "no")
        print(
            f"| {r['dpc']} | {len(r['cached_steps'])}/{len(r['recompute_steps'])} | {r['cached_s']:.3f} "
            f"| {r['recompute_s']:.3f} | {r['speedup']:.1f}× | {r['speedup_median']:.1f}× | {target} | {met} |"
        )
    print(f"\nEmbedding the {rows} real rows once (both modalities): {inputs['results'][0]['embed_real_once_s']:.3f} s")


# ----------------------------------------------------------------------------------------------------
# command line


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", type=int_list, default=[1, 2, 3], help="which measurements (default 1,2,3)")
    parser.add_argument("--quick", action="store_true", help="small, fast smoke run of every part (< 1 min)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    parser.add_argument("--save", type=Path, default=None, help="also write the JSON results to this file")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument(
        "--no-isolate", dest="isolate", action="store_false", help="part 1 in this process (RSS then shared)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=30.0,
        help="stop timing a setting after this many seconds of timed steps (default 30)",
    )
    scaling = parser.add_argument_group("1. scaling")
    scaling.add_argument(
        "--rows",
        type=int_list,
        default=[1000, 10000, 100000],
        help="real rows of the class (default 1000,10000,100000)",
    )
    scaling.add_argument("--modes", default=",".join(SCALING_MODES), help=f"comma-separated of {SCALING_MODES}")
    scaling.add_argument("--dim", type=int, default=1024, help="embedding dimension D (default 1024)")
    scaling.add_argument("--num-freqs", type=int, default=4096, help="CF frequencies K (default 4096; part 3 too)")
    scaling.add_argument("--dpc", type=int, default=10, help="synthetic rows of the class (default 10)")
    scaling.add_argument("--real-batch", type=int, default=256, help="rows of the batch256 modes (default 256)")
    scaling.add_argument("--bank", type=int, default=8, help="frequency-bank size B (default 8; part 2 too)")
    scaling.add_argument("--warmup", type=int, default=2, help="untimed steps per setting (default 2)")
    scaling.add_argument("--steps", type=int, default=8, help="timed steps per setting, at most (default 8)")
    accuracy = parser.add_argument_group("2. accuracy")
    accuracy.add_argument(
        "--iterations", type=int, default=None, help="condense iterations (default: CondenseConfig's)"
    )
    accuracy.add_argument("--accuracy-num-freqs", type=int, default=None, help="K (default: CondenseConfig's)")
    accuracy.add_argument("--accuracy-real-batch", type=int, default=64, help="the bounded run's real_batch (64)")
    accuracy.add_argument("--condense-seed", type=int, default=0, help="condensation seed (default 0)")
    accuracy.add_argument("--eval-seeds", type=int, default=3, help="evaluation seeds (default 3)")
    accuracy.add_argument("--eval-epochs", type=int, default=HEAD_EPOCHS, help=f"head epochs (default {HEAD_EPOCHS})")
    inputs = parser.add_argument_group("3. input space")
    inputs.add_argument("--input-dpcs", type=int_list, default=[1, 10], help="DPCs (default 1,10)")
    inputs.add_argument("--real-rows", type=int, default=128, help="real rows per step (default 128)")
    inputs.add_argument("--input-warmup", type=int, default=1, help="untimed steps (default 1)")
    inputs.add_argument("--input-steps", type=int, default=4, help="timed steps, at most (default 4)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.dim, args.num_freqs, args.bank, args.isolate = [100, 1000], 64, 256, 2, False
        args.warmup, args.steps, args.max_seconds = 1, 2, 5.0
        args.iterations, args.accuracy_num_freqs, args.eval_seeds, args.eval_epochs = 2, 64, 1, 10
        args.input_dpcs, args.real_rows, args.input_warmup, args.input_steps = [1], 4, 0, 1
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in args.modes if m not in SCALING_MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {SCALING_MODES}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "torch_threads": args.threads,
            "quick": args.quick,
        },
        "cpu_pressure_before": cpu_pressure(),
    }
    if 1 in args.parts:
        report["scaling"] = measure_scaling(args)
    if 2 in args.parts:
        report["accuracy"] = measure_accuracy(args)
    if 3 in args.parts:
        report["input_space"] = measure_input_space(args)
    report["cpu_pressure_after"] = cpu_pressure()
    report["total_s"] = time.perf_counter() - started
    if args.save is not None:
        args.save.write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if "scaling" in report:
        print_scaling(report["scaling"], args)
    if "accuracy" in report:
        print_accuracy(report["accuracy"])
    if "input_space" in report:
        print_input_space(report["input_space"])
    print(
        f"\n{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads; "
        f"CPU pressure (some) before: {report['cpu_pressure_before']}; after: {report['cpu_pressure_after']}; "
        f"total {report['total_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
