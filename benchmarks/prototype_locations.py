"""Where should the one row of a class go? The optima of mean matching and of CF matching, measured directly.

With one synthetic row per class (DPC 1) the optimum of DM is the class's mean direction, and the optimum
of the Eq. 3 CFD (expected over t ~ N(0, sigma^2 I)) is a mode of the Gaussian kernel density of the
class, exp(-sigma^2 |x - s|^2 / 2) = exp(sigma^2 (x.s - 1)) on the unit sphere: the fixed point of the
mean-shift iteration s <- normalize(sum_i w_i x_i), w = softmax(sigma^2 X s), started at the mean
(tests/test_losses.py checks that Eq. 3 finds it). This script computes both per class, in each space
map, and scores them as 1-per-class training sets with the linear protocol (fixed schedule, fused
accuracy on the test store, mean over head seeds). No condensation runs, so optimisation noise is out
of the picture: what is left is which location trains the better head (docs/benchmarks.md, "Reading it").

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prototype_locations.py                    # random-init demo stores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prototype_locations.py --train T --test S  # e.g. bound stores
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from ibdc_cli.demo import ensure_demo_stores
from ibdc_cli.evaluation.heads import HeadSchedule, fused_accuracy, train_heads
from ibdc_cli.space import SPACE_MAPS, fit_space_map, map_embeddings
from ibdc_cli.store import open_store


def kernel_mode(x: torch.Tensor, sigma: float, start: torch.Tensor, iterations: int = 300) -> torch.Tensor:
    """The mode of sum_i exp(sigma^2 x_i.s) on the unit sphere nearest `start` (rows of `x` unit-norm)."""
    s = start
    for _ in range(iterations):
        w = torch.softmax(sigma**2 * (x @ s), 0)
        s = F.normalize((w[:, None] * x).sum(0), dim=0)
    return s


def score(prototypes: dict[str, torch.Tensor], test: dict[str, torch.Tensor], labels: torch.Tensor, seeds: int):
    classes = next(iter(prototypes.values())).shape[0]
    runs = []
    for seed in range(seeds):
        heads = train_heads(
            prototypes, torch.arange(classes), classes, protocol="linear", schedule=HeadSchedule(), seed=seed
        )
        runs.append(100.0 * fused_accuracy(heads, test, labels))
    return statistics.fmean(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, help="train store (default: the demo's av-digits, random-init tiny)")
    parser.add_argument("--test", type=Path, help="test store (default: the demo's)")
    parser.add_argument("--modalities", default="audio,image")
    parser.add_argument("--space-maps", default=",".join(SPACE_MAPS))
    parser.add_argument("--sigmas", default="0.25,0.5,1,2")
    parser.add_argument("--seeds", type=int, default=3, help="head seeds")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if (args.train is None) != (args.test is None):
        parser.error("give both --train and --test, or neither")
    if args.train is None:
        demo = ensure_demo_stores()
        args.train, args.test = demo["train"], demo["test"]
    modalities = args.modalities.split(",")
    sigmas = [float(s) for s in args.sigmas.split(",")]
    train, test = open_store(args.train).load(modalities), open_store(args.test).load(modalities)
    labels, test_labels = train["labels"].long(), test["labels"].long()
    per_class = [labels == c for c in range(int(labels.max()) + 1)]
    rows = []
    for kind in args.space_maps.split(","):
        maps = {m: fit_space_map(train[m], kind) for m in modalities}
        x = {m: map_embeddings(train[m], maps[m]) for m in modalities}
        x_test = {m: map_embeddings(test[m], maps[m]) for m in modalities}
        means = {m: torch.stack([F.normalize(x[m][mask].mean(0), dim=0) for mask in per_class]) for m in modalities}
        row = {"space_map": kind, "mean (dm)": score(means, x_test, test_labels, args.seeds)}
        for sigma in sigmas:
            modes = {
                m: torch.stack([kernel_mode(x[m][mask], sigma, means[m][c]) for c, mask in enumerate(per_class)])
                for m in modalities
            }
            row[f"mode σ={sigma:g}"] = score(modes, x_test, test_labels, args.seeds)
        rows.append(row)
        print("  ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    columns = list(rows[0])
    print("\n| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.1f}" if isinstance(row[c], float) else row[c] for c in columns) + " |")
    if args.json:
        args.json.write_text(json.dumps({"train": str(args.train), "test": str(args.test), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
