"""Seconds per step and peak memory of input-space ImageBindDC with a random-init imagebind_huge.

A 10-class job shaped like VGGS-10K (audio + image, real batch 128 per class), DPC 1, 10 and 20, for the
paper's Table 6 comparison (57.46 s / 5.6 GB at DPC 1 on an A100). The real side is what a store holds:
cached unit-norm embeddings, never recomputed per step. Each step is one class's step of `ibdc condense`
(the same `condense.optimisation_step`): synthetic pixels and fbanks -> frozen encoder -> tri-level CF loss -> backward
-> Adam. One iteration over the 10 classes is 10 such steps.

    python benchmarks/gpu_imagebind_huge.py                 # on a GPU machine
    python benchmarks/gpu_imagebind_huge.py --tiny --steps 2   # imagebind_tiny on CPU (a smoke test)
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from ibdc_cli.condense import (
    ClassJob,
    Condensation,
    CondenseConfig,
    class_generator,
    optimisation_step,
    start_synthesis,
)
from ibdc_cli.data.preprocess import INPUT_SHAPES
from ibdc_cli.encoders.imagebind import load_encoder
from ibdc_cli.runtime import autocast

CLASSES = 10
REAL_ROWS_PER_CLASS = 1000  # VGGS-10K: ~1000 training pairs per class


def measure(encoder, dpc: int, steps: int, num_freqs: int, device: torch.device, precision: str = "fp32") -> dict:
    # The paper's objective with fresh frequencies every step (what the H200 numbers in docs/benchmarks.md
    # measured): Eq. 8-13 cross/joint terms, the authors' CFD reduction, no frequency bank.
    config = CondenseConfig(
        modalities=["audio", "image"],
        dpc=dpc,
        space="input",
        init="noise",
        real_batch=128,
        num_freqs=num_freqs,
        cf_reduction="ncfm",
        cross_form="paper",
        joint_form="paper",
        freq_bank=0,
        space_map="none",
        precision=precision,  # ibdc condense --precision: autocast of the encoder's passes, losses in float32
    )
    dim = encoder.out_dim
    generator = class_generator(0, 0)
    real = {
        m: torch.nn.functional.normalize(torch.randn(REAL_ROWS_PER_CLASS, dim, generator=generator), dim=-1).to(device)
        for m in config.modalities
    }
    space_maps = {m: None for m in config.modalities}  # random unit vectors: no space map
    run = Condensation.build(config, device, space_maps, encoder=encoder)
    job = ClassJob(class_id=0, real=real, target=real, rows=None, dpc=dpc, generator=generator)
    params, optimizer = start_synthesis(run, job)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    optimisation_step(run, job, params, optimizer)  # warm-up
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimisation_step(run, job, params, optimizer)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    per_step = sorted(times)[len(times) // 2]
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {
        "dpc": dpc,
        "seconds_per_class_step": round(per_step, 4),
        "seconds_per_iteration_10_classes": round(per_step * CLASSES, 3),
        "peak_memory_gib": round(peak, 2),
        "memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS",
    }


@torch.no_grad()
def measure_embed(encoder, modality: str, batch: int, steps: int, device: torch.device) -> dict:
    """Rows per second of `ibdc embed`'s forward pass (preprocessed inputs -> unit-norm embeddings)."""
    generator = torch.Generator().manual_seed(0)
    if modality == "text":
        x = torch.randint(0, 49408, (batch, *INPUT_SHAPES["text"]), generator=generator)
    else:
        x = torch.randn(batch, *INPUT_SHAPES[modality], generator=generator)
    x = x.to(device)
    encoder.embed(modality, x)  # warm-up
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        encoder.embed(modality, x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    per_batch = sorted(times)[len(times) // 2]
    return {"modality": modality, "batch": batch, "rows_per_second": round(batch / per_batch, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="imagebind_tiny on CPU instead of imagebind_huge")
    parser.add_argument("--dpc", default="1,10,20", help="comma-separated DPCs")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per DPC (after one warm-up)")
    parser.add_argument("--num-freqs", type=int, default=4096)
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="ibdc condense --precision (and embed's)"
    )
    parser.add_argument("--embed-batch", type=int, default=64, help="batch of the embedding-throughput part")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    preset = "imagebind_tiny" if args.tiny else "imagebind_huge"
    started = time.perf_counter()
    encoder = load_encoder(preset, random_init=True, seed=0).to(device)
    load_seconds = time.perf_counter() - started
    rows = []
    for dpc in [int(d) for d in args.dpc.split(",")]:  # the precision goes through CondenseConfig, as condense's
        rows.append(measure(encoder, dpc, args.steps, args.num_freqs, device, args.precision))
    embed_rows = []
    for modality in ("image", "audio", "text"):
        with autocast(device, args.precision):
            embed_rows.append(measure_embed(encoder, modality, args.embed_batch, args.steps, device))
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report = {
        "preset": preset,
        "device": card,
        "precision": args.precision,
        "encoder_load_s": round(load_seconds, 1),
        "real_batch": 128,
        "classes": CLASSES,
        "num_freqs": args.num_freqs,
        "rows": rows,
        "embed": embed_rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{preset} on {card} ({args.precision}), real batch 128, K={args.num_freqs}, load {load_seconds:.1f} s")
    print(f"{'DPC':>4} {'s/class-step':>13} {'s/iteration (10 classes)':>25} {'peak GiB':>9}")
    for row in rows:
        print(
            f"{row['dpc']:>4} {row['seconds_per_class_step']:>13.4f} {row['seconds_per_iteration_10_classes']:>25.3f} "
            f"{row['peak_memory_gib']:>9.2f}"
        )
    for row in embed_rows:
        print(f"embed {row['modality']:>6}: {row['rows_per_second']:>9.1f} rows/s (batch {row['batch']})")


if __name__ == "__main__":
    main()
