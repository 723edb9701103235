"""Whole-data linear accuracy split by modality: each modality's head alone, and the late fusion that
`ibdc evaluate` publishes (the mean of the heads' softmaxes), under each space map.

It answers where a whole-data figure comes from: in a bound encoder's space, how much is the anchor's
modality (which `ibdc bind` leaves as it was) and how much the bound one (docs/bind.md). Run from the
repository root on two stores of one encoder, e.g. fsdd-mnist train and val:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/whole_by_modality.py STORES/train STORES/val \
        --modalities image,audio --json benchmarks/results/whole_by_modality.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ibdc_cli.evaluation.heads import HeadSchedule, fused_accuracy, train_heads
from ibdc_cli.space import SPACE_MAPS, fit_space_map, map_embeddings
from ibdc_cli.store import open_store


def load_pair(train: Path, target: Path, modalities: list[str]) -> tuple[dict, dict, int]:
    """The embeddings and labels of two stores of one encoder (read once), and their number of classes."""
    train_store, target_store = open_store(train), open_store(target)
    if train_store.class_names != target_store.class_names:
        raise SystemExit(f"{train} and {target} have different classes")
    return train_store.load(modalities), target_store.load(modalities), len(train_store.class_names)


def by_modality(data: dict, held: dict, classes: int, modalities: list[str], space_map: str, seed: int = 0):
    """Accuracy (%) on `held` (`load_pair`) of linear heads trained on the whole of `data` (one per modality, the
    fixed schedule of `ibdc evaluate`), each alone and fused; the space map is fitted on `data`."""
    maps = {m: fit_space_map(data[m], space_map) for m in modalities}
    features = {m: map_embeddings(data[m], maps[m]) for m in modalities}
    targets = {m: map_embeddings(held[m], maps[m]) for m in modalities}
    heads = train_heads(features, data["labels"], classes, protocol="linear", schedule=HeadSchedule(), seed=seed)
    result = {m: 100 * fused_accuracy({m: heads[m]}, targets, held["labels"]) for m in modalities}
    result["fused"] = 100 * fused_accuracy(heads, targets, held["labels"])
    return {k: round(v, 1) for k, v in result.items()}


def short(path: Path) -> str:
    """A store's folder and name ("stores-random/train"): no path of this machine goes into the results."""
    return "/".join(path.resolve().parts[-2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train", type=Path, help="store the heads train on (the whole of it)")
    parser.add_argument("target", type=Path, help="store they are scored on (a val split, say)")
    parser.add_argument("--modalities", default="image,audio")
    parser.add_argument("--space-maps", default=",".join(SPACE_MAPS))
    parser.add_argument("--seed", type=int, default=0, help="head seed")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    modalities = [m for m in args.modalities.split(",") if m]
    data, held, classes = load_pair(args.train, args.target, modalities)
    rows = []
    print(f"| space map | {' | '.join(modalities)} | fused |")
    print(f"|---|{'---|' * (len(modalities) + 1)}")
    for space_map in [s for s in args.space_maps.split(",") if s]:
        result = by_modality(data, held, classes, modalities, space_map, args.seed)
        rows.append({"space_map": space_map, **result})
        print(f"| {space_map} | {' | '.join(f'{result[m]:.1f}' for m in [*modalities, 'fused'])} |", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"train": short(args.train), "target": short(args.target), "seed": args.seed, "rows": rows}
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
