"""How the evaluation heads' fixed schedule is chosen: on the fsdd-mnist VAL split, never on test.

`ibdc evaluate` trains its linear/mlp heads with one fixed schedule (`evaluate.HeadSchedule`); no protocol
may pick a hyper-parameter by test accuracy. This script trains linear heads (late fusion of audio and
image, the linear protocol) on fsdd-mnist train, in the space of `--space-map`, and scores them on the val
split (speaker theo; the test store is never opened), for every candidate learning rate × weight decay ×
epochs and for training sets of several sizes: random real rows at DPC 1, 10, 20 (`--draws` draws each)
and the whole train split. A schedule chosen on whole data alone could be wrong for the 10 to 200 rows a
synthetic set has: the table shows whether it is.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/head_schedule.py --json benchmarks/results/head_schedule.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

import torch

from ibdc_cli.evaluation.heads import HeadSchedule, fused_accuracy, train_heads
from ibdc_cli.space import fit_space_map, map_embeddings
from ibdc_cli.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_table import MODALITIES, fsdd_stores  # noqa: E402  (the same stores as the tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", default="0.1,0.01,0.001")
    parser.add_argument("--weight-decays", default="0,5e-4,5e-3")
    parser.add_argument("--epochs", default="100,300,1000")
    parser.add_argument("--dpcs", default="1,10,20")
    parser.add_argument("--draws", type=int, default=3, help="random draws of the DPC-k training sets")
    parser.add_argument("--space-map", default="whiten")
    parser.add_argument("--source", help="the fsdd-mnist source folder (default ../shared/data/fsdd-mnist)")
    parser.add_argument("--per-class", type=int, help="rows per class and split (smoke runs)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    stores, _ = fsdd_stores(args, "random")
    train, val = open_store(stores["train"]), open_store(stores["val"])
    data, held_out = train.load(MODALITIES), val.load(MODALITIES)
    maps = {m: fit_space_map(data[m], args.space_map) for m in MODALITIES}  # fitted on train only
    x = {m: map_embeddings(data[m], maps[m]) for m in MODALITIES}
    v = {m: map_embeddings(held_out[m], maps[m]) for m in MODALITIES}
    labels, classes = data["labels"], len(train.class_names)
    sets = {"whole": [torch.arange(len(labels))]}
    for dpc in map(int, args.dpcs.split(",")):
        draws = []
        for draw in range(args.draws):
            generator = torch.Generator().manual_seed(draw)
            rows = [torch.nonzero(labels == c).flatten() for c in range(classes)]
            draws.append(torch.cat([r[torch.randperm(len(r), generator=generator)[:dpc]] for r in rows]))
        sets[f"random DPC {dpc}"] = draws
    print(f"linear heads on fsdd-mnist train ({len(labels)} rows, space map {args.space_map}), scored on VAL")
    print(f"{'lr':>6} {'wd':>7} {'epochs':>6} " + " ".join(f"{name:>14}" for name in sets))
    results = []
    grid = itertools.product(
        map(float, args.lrs.split(",")), map(float, args.weight_decays.split(",")), map(int, args.epochs.split(","))
    )
    for lr, wd, epochs in grid:
        schedule = HeadSchedule(lr=lr, weight_decay=wd, epochs=epochs)
        row = {"lr": lr, "weight_decay": wd, "epochs": epochs, "val": {}}
        for name, draws in sets.items():
            scores = []
            for rows in draws:
                fit = {m: x[m][rows] for m in MODALITIES}
                heads = train_heads(fit, labels[rows], classes, protocol="linear", schedule=schedule, seed=0)
                scores.append(100 * fused_accuracy(heads, v, held_out["labels"]))
            row["val"][name] = statistics.fmean(scores)
        results.append(row)
        print(f"{lr:>6} {wd:>7} {epochs:>6} " + " ".join(f"{row['val'][n]:>14.1f}" for n in sets), flush=True)
    current = HeadSchedule()
    for name in sets:
        best = max(results, key=lambda r: r["val"][name])
        print(f"best for {name} (val): lr {best['lr']}, weight decay {best['weight_decay']}, {best['epochs']} epochs")
    print(f"current default: lr {current.lr}, weight decay {current.weight_decay}, {current.epochs} epochs")
    if args.json:
        report = {"split": "val", "space_map": args.space_map, "sets": list(sets), "results": results}
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
