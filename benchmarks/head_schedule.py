"""How the evaluation heads' fixed schedule was chosen: k-fold cross-validation on the TRAINING store only.

`ibdc evaluate` trains its linear/mlp heads with one fixed schedule (`evaluate.HeadSchedule`); no protocol
may pick a hyper-parameter by test accuracy. This script scores candidate learning rates and weight decays
by stratified k-fold cross-validation of whole-data training on the av-digits train store (the test store
is never read) and prints the table; the default is the best mean over folds.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/head_schedule.py
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch
from sklearn.model_selection import StratifiedKFold

from ibdc_cli.demo import ensure_demo_stores
from ibdc_cli.evaluate import HeadSchedule, fused_accuracy, train_heads
from ibdc_cli.space import fit_space_map
from ibdc_cli.store import open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--lrs", default="0.1,0.01")
    parser.add_argument("--weight-decays", default="0,5e-4,5e-3")
    parser.add_argument("--space-map", default="whiten")
    args = parser.parse_args()
    store = open_store(ensure_demo_stores()["train"])
    modalities = ["audio", "image"]
    data = store.load(modalities)
    labels = data["labels"]
    folds = StratifiedKFold(args.folds, shuffle=True, random_state=0).split(labels.numpy(), labels.numpy())
    folds = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in folds]
    print(f"{args.folds}-fold CV on {store.path} ({len(labels)} rows), space map {args.space_map}, audio + image")
    print(f"{'lr':>6} {'weight decay':>13} {'CV accuracy (%)':>16}")
    results = {}
    for lr, wd in itertools.product(map(float, args.lrs.split(",")), map(float, args.weight_decays.split(","))):
        scores = []
        for fit_rows, val_rows in folds:
            # the space map is fitted on the fold's training rows only
            maps = {m: fit_space_map(data[m][fit_rows], args.space_map) for m in modalities}
            fit = {m: maps[m](data[m][fit_rows]) if maps[m] else data[m][fit_rows] for m in modalities}
            val = {m: maps[m](data[m][val_rows]) if maps[m] else data[m][val_rows] for m in modalities}
            schedule = HeadSchedule(lr=lr, weight_decay=wd)
            heads = train_heads(
                fit, labels[fit_rows], len(store.class_names), protocol="linear", schedule=schedule, seed=0
            )
            scores.append(100 * fused_accuracy(heads, val, labels[val_rows]))
        results[(lr, wd)] = statistics.fmean(scores)
        print(f"{lr:>6} {wd:>13} {results[(lr, wd)]:>10.1f} ± {statistics.pstdev(scores):.1f}", flush=True)
    best = max(results, key=results.get)
    print(f"best: lr {best[0]}, weight decay {best[1]}")


if __name__ == "__main__":
    main()
