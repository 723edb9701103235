r"""Where `ibdc bind`'s time goes on fsdd-mnist, and what one-clip training saves.

Measured on the training rows of fsdd-mnist (`ibdc datasets fsdd-mnist`, built from `--source`), with the
imagebind_tiny preset, image anchor, audio bound (what `ibdc bind --modalities image,audio` does):

1. **preparation** (once per bind): decoding + Kaldi fbank of every recording, decoding + resizing of every
   image, and the frozen image tower's forward pass over all rows, each timed on its own;
2. **a training step** (batch `--batch-size`, AdamW, augmentation on): forward, backward and optimiser
   step timed apart, for (a) `3 clips`: ImageBind's audio input as preprocessed, three 2-s clips per
   recording, what bind trained on before; (b) `1 clip`: what bind trains on now when every recording's
   clips are equal (`data.pairs.one_clip_if_repeated`: recordings shorter than 2 s give three equal, padded
   clips, and ImageBind embeds a clip-split input as the mean of its clips' embeddings). Each at torch
   intra-op threads 1 and `--threads`. With `--precisions fp32,bf16` the 1-clip settings also run with
   `ibdc bind --precision bf16` (autocast of the tower's passes); `--frontend envelope` hands the tower
   the envelope frontend, as `ibdc bind` does today from random init. The settings run interleaved step by
   step (the CPU is shared), after `--warmup` steps each; seconds per epoch = steps per epoch x median step
   time.

Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bind_speed.py --source ../shared/data/fsdd-mnist \\
        --json benchmarks/results/bind_speed.json
    .venv/bin/python benchmarks/bind_speed.py --source ../shared/data/fsdd-mnist --quick     # smoke run
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bind_speed.py --source ../shared/data/fsdd-mnist \
        --batch-size 32 --temperature 0.2 --frontend envelope --precisions fp32,bf16 \
        --json benchmarks/results/bind_speed_bf16.json                                       # today's recipe
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ibdc_cli.data.fsdd_mnist import build_fsdd_mnist
from ibdc_cli.data.manifest import read_manifest
from ibdc_cli.data.pairs import one_clip_if_repeated
from ibdc_cli.data.preprocess import load
from ibdc_cli.encoders.imagebind import load_encoder
from ibdc_cli.encoders.training import bind_loss, make_optimizer, trainable_parameters
from ibdc_cli.runtime import cpu_info
from ibdc_cli.space import fit_space_map


def timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def preparation(manifest, encoder, rows: int) -> tuple[dict[str, float], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seconds per row of decoding each modality and of the anchor's forward pass; the inputs."""
    audio, audio_s = timed(
        lambda: torch.stack([load("audio", r["audio"], manifest.base_dir) for r in manifest.rows[:rows]])
    )
    image, image_s = timed(
        lambda: torch.stack([load("image", r["image"], manifest.base_dir) for r in manifest.rows[:rows]])
    )
    with torch.no_grad():
        raw, anchor_s = timed(lambda: torch.cat([encoder.forward_raw("image", x) for x in image.split(64)]))
    per_row = {"decode_fbank_audio": audio_s / rows, "decode_image": image_s / rows, "anchor_forward": anchor_s / rows}
    labels = torch.tensor(manifest.labels[:rows])
    return per_row, audio, raw, labels


def step_timer(
    encoder,
    audio: torch.Tensor,
    anchor: torch.Tensor,
    labels: torch.Tensor,
    batch: int,
    threads: int,
    temperature: float = 0.07,
    precision: str = "fp32",
):
    """A function that runs one timed training step; returns (forward, backward, optimiser) seconds."""
    params = trainable_parameters(encoder.model, ["audio"])
    optimizer = make_optimizer(params, 1e-3, 0.05)
    n = len(audio)
    data = {"inputs.audio": audio, "slot.audio": torch.arange(n)}
    generator = torch.Generator().manual_seed(0)

    def step() -> tuple[float, float, float]:
        torch.set_num_threads(threads)
        rows = torch.randperm(n, generator=generator)[:batch]
        encoder.model.train()
        start = time.perf_counter()
        loss = bind_loss(encoder, ["audio"], data, anchor, labels, rows, temperature, True, precision=precision)
        forward = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backward = time.perf_counter()
        optimizer.step()
        done = time.perf_counter()
        return forward - start, backward - forward, done - backward

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="fsdd-mnist source folder (see ibdc datasets fsdd-mnist)")
    parser.add_argument("--rows", type=int, default=1000, help="training rows to use (default: all 1000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="the larger thread count measured (and 1)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per setting first")
    parser.add_argument("--temperature", type=float, default=0.07, help="InfoNCE temperature")
    parser.add_argument("--frontend", choices=("logmel", "envelope"), default="logmel", help="the tower's input")
    parser.add_argument("--precisions", default="fp32", help="comma-separated: the 1-clip settings' precisions")
    parser.add_argument("--quick", action="store_true", help="smoke run: 48 rows, batch 16, 1 timed step")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.batch_size, args.steps, args.warmup = 48, 16, 1, 1

    with tempfile.TemporaryDirectory() as folder:
        build_fsdd_mnist(Path(folder) / "data", source=Path(args.source))
        manifest = read_manifest(Path(folder) / "data" / "train.csv", ["audio", "image"])
        rows = min(args.rows, len(manifest.rows))
        encoder = load_encoder("imagebind_tiny", seed=0)
        encoder.model.eval()
        torch.set_num_threads(args.threads)
        per_row, audio, raw, labels = preparation(manifest, encoder, rows)
    anchor = fit_space_map(raw, "whiten")(raw)
    one = one_clip_if_repeated(audio, "audio")
    settings = {}
    runs = [("3 clips", audio, "fp32")] + [("1 clip", one, p) for p in args.precisions.split(",")]
    for clips, x, precision in runs:
        for threads in sorted({1, args.threads}):
            name = f"{clips}, {threads} thread{'s' if threads > 1 else ''}" + (
                "" if precision == "fp32" else f", {precision}"
            )
            tower = load_encoder("imagebind_tiny", seed=0)
            if args.frontend != "logmel":
                tower.frontends["audio"] = args.frontend
            settings[name] = step_timer(tower, x, anchor, labels, args.batch_size, threads, args.temperature, precision)
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in settings}
    for round_ in range(args.warmup + args.steps):  # interleaved: the machine's load hits every setting alike
        for name, step in settings.items():
            timing = step()
            if round_ >= args.warmup:
                samples[name].append(timing)
    steps_per_epoch = rows // args.batch_size
    report = {
        "rows": rows,
        "batch_size": args.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "clips_equal": one.shape[1] == 1,
        "temperature": args.temperature,
        "frontend": args.frontend,
        "cpu_flags_bf16": sorted(f for f in cpu_info()["flags"] if "bf16" in f),
        "preparation_s_per_row": {k: round(v, 5) for k, v in per_row.items()},
        "preparation_s": round(sum(per_row.values()) * rows, 1),
        "step": {},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__},
        "platform": platform.platform(),
    }
    for name, timings in samples.items():
        forward, backward, optimizer = (statistics.median(t[i] for t in timings) for i in range(3))
        total = statistics.median(sum(t) for t in timings)
        report["step"][name] = {
            "forward_s": round(forward, 3),
            "backward_s": round(backward, 3),
            "optimizer_s": round(optimizer, 4),
            "step_s": round(total, 3),
            "epoch_s": round(total * steps_per_epoch, 1),
        }
    slowest = report["step"]["3 clips, 1 thread"]["epoch_s"]
    for entry in report["step"].values():
        entry["speedup_vs_3_clips_1_thread"] = round(slowest / entry["epoch_s"], 2) if entry["epoch_s"] else None
    print(f"{rows} rows, batch {args.batch_size}, {steps_per_epoch} steps per epoch")
    print("preparation, s per row: " + ", ".join(f"{k} {v:.4f}" for k, v in per_row.items()))
    print(f"{'setting':<22}{'forward':>9}{'backward':>10}{'step':>8}{'epoch':>9}{'speed-up':>10}")
    for name, e in report["step"].items():
        print(
            f"{name:<22}{e['forward_s']:>9.3f}{e['backward_s']:>10.3f}{e['step_s']:>8.3f}"
            f"{e['epoch_s']:>9.1f}{e['speedup_vs_3_clips_1_thread']:>9.2f}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
