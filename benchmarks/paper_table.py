"""The paper-style benchmark (SPEC §6, issue 11): fsdd-mnist with `imagebind_tiny`, choices made on val.

fsdd-mnist (`ibdc datasets fsdd-mnist`: real FSDD recordings + MNIST, speaker- and image-disjoint
train/val/test) is embedded with the random-init `imagebind_tiny` (`--encoders random`) and/or a tiny
encoder bound with `ibdc bind` (`--encoders bound --bound-checkpoint FILE`). Parts (`--parts`):

- `select` (**validation split only**; `select_part` is never given the test store): every method under
  every space map (none, center, whiten) at each DPC, `--select-seeds` condensation seeds, and the
  whole-data heads under each space map; `best` records, per method and DPC, the space map with the
  highest val mean. Then the imagebinddc ablation (loss terms and forms, σ, K, bank, iterations, lr) at
  `--ablation-dpcs`, also on val.
- `methods` (**test split, once**): random, herding, kcenter, dm, avdd, imagebinddc (defaults) and
  imagebinddc `--preset paper` (in embedding space with lr 0.1, `--paper-iterations` steps; run whenever
  `--methods` has imagebinddc) × DPC 1, 10, 20, each
  baseline under the space map `select` chose for it on val, mean ± std over `--seeds` condensation
  seeds (each set evaluated once with the linear protocol's fixed schedule), each cell with its share of
  the whole-data accuracy (whole data under its own best space map on val), wall time and peak memory
  (each condensation runs in a fresh forked process, so its peak RSS is its own).
- `input`: random real rows, imagebinddc and imagebinddc `--preset paper` in model-input space (pixels +
  fbanks through the frozen encoder, `--input-iterations` steps) at `--input-dpcs`, evaluated with the
  `linear` and the `convnet` protocol on test.
- `retrieval`: spoken-numbers (audio–text, no labels), synthetic pairs vs random real pairs vs the whole
  training set, Recall@1/5/10 both ways.

Every number in the JSON and the rendered tables says its split. Run from the repository root:

    R=benchmarks/results
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/paper_table.py --parts select --json $R/fsdd_select.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/paper_table.py --parts methods,input \
        --selection $R/fsdd_select.json --json $R/fsdd_test.json
    .venv/bin/python benchmarks/paper_table.py --render $R/fsdd_select.json $R/fsdd_test.json --write-docs

A part can run as two processes on two cores, each with its own `--methods` and `--json`; `--render` and
`--selection` merge such reports row by row.
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/paper_table.py --quick     # smoke run, a few minutes
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from ibdc_cli.condense import PRESETS, CondenseConfig, condense
from ibdc_cli.demo import cache_dir
from ibdc_cli.evaluation import HeadSchedule, evaluate
from ibdc_cli.evaluation.protocol import summarize_runs
from ibdc_cli.space import SPACE_MAPS
from ibdc_cli.store import INDEX_FILE

ROOT = Path(__file__).resolve().parents[1]
FSDD_SOURCE = ROOT.parent / "shared" / "data" / "fsdd-mnist"
METHODS = ["random", "herding", "kcenter", "dm", "avdd", "imagebinddc"]
PAPER = "imagebinddc --preset paper"
# The preset's lr (30, SGD) is for model inputs; in embedding space it overshoots (docs/method.md): 0.1 there.
PAPER_EMBEDDING_LR = 0.1
PAPER_SPACE_MAP = PRESETS["paper"]["space_map"]  # no map: the encoder's own space
MODALITIES = ["audio", "image"]
# (label, CondenseConfig overrides on top of the defaults), scored on val
ABLATION = [
    ("defaults", {}),
    ("uni only (joint none)", {"joint_form": "none"}),
    ("+ cross (paper)", {"cross_form": "paper"}),
    ("+ cross (hybrid)", {"cross_form": "hybrid"}),
    ("joint paper (dot)", {"joint_form": "paper"}),
    ("joint paper-cos", {"joint_form": "paper-cos"}),
    ("cross paper + joint paper: the paper's terms", {"cross_form": "paper", "joint_form": "paper"}),
    ("reduction ncfm (authors' code)", {"cf_reduction": "ncfm"}),
    ("σ = 0.5", {"sigma": 0.5}),
    ("σ = 2", {"sigma": 2.0}),
    ("K = 1024 frequencies", {"num_freqs": 1024}),
    ("K = 2048 frequencies", {"num_freqs": 2048}),
    ("fresh frequencies every step (bank 0)", {"freq_bank": 0}),
    ("bank of 8 draws", {"freq_bank": 8}),
    ("bank of 4 draws", {"freq_bank": 4}),
    ("300 iterations", {"iterations": 300}),
    ("lr 0.02", {"lr": 0.02}),
    ("lr 0.1", {"lr": 0.1}),
]
MARK_START, MARK_END = "<!-- paper_table:start -->", "<!-- paper_table:end -->"


# ----------------------------------------------------------------------------------------------------
# one condensation in a fresh process (its own peak memory)


def _child(conn, store, out, config) -> None:
    try:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        result = condense(store, out, config, device="cpu", overwrite=True)
        conn.send({"seconds": result.seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    except BaseException:  # noqa: BLE001 - report anything to the parent
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


def condense_in_child(store: Path, out: Path, config: CondenseConfig) -> dict[str, float]:
    """`condense(store, out, config)` in a child process; returns its wall time and peak RSS (MiB).

    The child comes from a fork server that imported torch but never ran it: forking a process whose
    OpenMP threads have run (pytest after an embedding, say) can leave the child deadlocked."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["ibdc_cli.condense"])
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child, str(store), str(out), config))
    process.start()
    child.close()
    while not parent.poll(1.0):
        if not process.is_alive():
            raise RuntimeError(f"condensation {out.name} died (exit code {process.exitcode}) without a report")
    report = parent.recv()
    process.join()
    if "error" in report:
        raise RuntimeError(f"condensation {out.name} failed:\n{report['error']}")
    return report


def cell(block: dict[str, Any] | None) -> str:
    return "—" if not block else f"{block['mean']:.1f} ± {block['std']:.1f}"


# ----------------------------------------------------------------------------------------------------
# stores


def fsdd_stores(args, encoder: str) -> tuple[dict[str, Path], dict[str, Any]]:
    """fsdd-mnist train/val/test embedded (audio, image) with `encoder`: "random" or "bound" (the
    --bound-checkpoint). `--per-class N` keeps the first N rows of each class in each split (smoke runs)."""
    from ibdc_cli.data.fsdd_mnist import build_fsdd_mnist
    from ibdc_cli.embed import embed_manifest
    from ibdc_cli.store import file_sha256

    root = cache_dir() / "fsdd-mnist"
    summary = build_fsdd_mnist(root / "data", source=Path(args.source) if args.source else FSDD_SOURCE)
    checkpoint = Path(args.bound_checkpoint) if encoder == "bound" else None
    if encoder == "bound" and (checkpoint is None or not checkpoint.is_file()):
        raise SystemExit("--encoders bound needs --bound-checkpoint FILE (an `ibdc bind` checkpoint)")
    name = "random" if checkpoint is None else f"bound-{file_sha256(checkpoint)[:12]}"
    suffix = "" if args.per_class is None else f"-{args.per_class}"
    stores = {}
    for split, manifest in summary["manifests"].items():
        manifest = Path(manifest)
        if args.per_class is not None:
            manifest = first_per_class(manifest, args.per_class)
        stores[split] = root / f"stores-{name}{suffix}" / split
        if not (stores[split] / INDEX_FILE).exists():
            print(f"embedding fsdd-mnist {split} with the {encoder} encoder -> {stores[split]}", flush=True)
            embed_manifest(manifest, MODALITIES, stores[split], checkpoint=checkpoint, resume=True)
    info = {"dataset": "fsdd-mnist", "speakers": summary["speakers"], "counts": summary["counts"]}
    if checkpoint is not None:
        info["checkpoint"] = checkpoint.name
    return stores, info


def first_per_class(manifest: Path, per_class: int) -> Path:
    """A manifest beside `manifest` with its first `per_class` rows of each label."""
    from ibdc_cli.data.benchmark import write_manifest

    out = manifest.with_name(f"{manifest.stem}-{per_class}.csv")
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        rows, seen = [], {}
        for row in reader:
            seen[row["label"]] = seen.get(row["label"], 0) + 1
            if seen[row["label"]] <= per_class:
                rows.append(row)
    write_manifest(out, rows, list(reader.fieldnames or []))
    return out


# ----------------------------------------------------------------------------------------------------
# parts


def table_config(args, **fields) -> CondenseConfig:
    """A CondenseConfig of the audio + image tables: the defaults, `--iterations` when given, and `fields`."""
    settings = {"iterations": args.iterations} if args.iterations else {}
    return CondenseConfig(modalities=MODALITIES, **{**settings, **fields})


def method_config(args, method: str, **fields) -> CondenseConfig:
    """`method`'s settings: `PAPER` is the paper preset (in embedding space, --paper-iterations steps)."""
    if method == PAPER:
        return CondenseConfig.from_preset(
            "paper",
            modalities=MODALITIES,
            space="embedding",
            lr=PAPER_EMBEDDING_LR,
            iterations=args.paper_iterations,
            **fields,
        )
    return table_config(args, method=method, **fields)


def run_sets(train: Path, target: Path, work: Path, name: str, config_of, seeds: int, schedule: HeadSchedule):
    """Condense one set per seed with `config_of(seed)` from `train`, score each on `target` (1 head seed);
    the accuracy summary over condensation seeds + cost."""
    accuracies, seconds, memory = [], [], []
    for seed in range(seeds):
        out = work / f"{name}-s{seed}.safetensors"
        cost = condense_in_child(train, out, config_of(seed))
        accuracies.append(evaluate(out, target, seeds=1, schedule=schedule)["mean"])
        seconds.append(cost["seconds"])
        memory.append(cost["peak_mib"])
        out.unlink()
    return {**summarize_runs(accuracies), "seconds": statistics.fmean(seconds), "peak_mib": max(memory)}


def whole_data(train: Path, target: Path, work: Path, seeds: int, schedule, space_map: str) -> dict[str, Any]:
    """The same heads trained on every training row, in the space of `space_map`, scored on `target`."""
    out = work / f"whole-ref-{space_map}.safetensors"  # any set gives the class names and the space
    condense_in_child(train, out, CondenseConfig(modalities=MODALITIES, dpc=1, method="random", space_map=space_map))
    whole = evaluate(out, target, seeds=seeds, schedule=schedule, train_store=train)
    out.unlink()
    return {"mean": whole["whole_mean"], "std": whole["whole_std"], "runs": whole["whole_runs"]}


def cell_of(part: dict[str, Any], keys: list[Any], compute, save) -> dict[str, Any]:
    """`part[k1][k2]…` (JSON keys are strings) when a previous run (--resume) measured it, else `compute()`,
    stored there and saved at once: a long run that stops loses at most the cell it was in."""
    node = part
    for key in keys[:-1]:
        node = node.setdefault(str(key), {})
    if str(keys[-1]) not in node:
        node[str(keys[-1])] = compute()
        save()
    return node[str(keys[-1])]


def select_part(train: Path, val: Path, work: Path, args, schedule, part: dict[str, Any], save) -> dict[str, Any]:
    """Every method under every space map, and the whole data, scored on `val` (never the test store);
    fills `part` ("rows", "whole", then "best" and "whole_best": the choices the test table uses)."""
    part.update(split="val", seeds=args.select_seeds)
    for space_map in SPACE_MAPS:
        whole = cell_of(
            part, ["whole", space_map], lambda m=space_map: whole_data(train, val, work, args.seeds, schedule, m), save
        )
        print(f"  [val] whole data, --space-map {space_map}: {cell(whole)}", flush=True)
    for method in args.methods:
        for space_map in SPACE_MAPS:
            for dpc in args.dpcs:

                def config_of(seed, method=method, dpc=dpc, space_map=space_map):
                    return table_config(args, method=method, dpc=dpc, seed=seed, space_map=space_map)

                def compute(method=method, dpc=dpc, space_map=space_map, config_of=config_of):
                    name = f"sel-{method}-{space_map}-{dpc}"
                    return run_sets(train, val, work, name, config_of, args.select_seeds, schedule)

                result = cell_of(part, ["rows", method, space_map, dpc], compute, save)
                print(f"  [val] {method:12s} --space-map {space_map:6s} DPC {dpc:2d}: {cell(result)}", flush=True)
    rows = part["rows"]
    part["best"] = {
        method: {str(d): max(SPACE_MAPS, key=lambda m: at(rows[method][m], d)["mean"]) for d in args.dpcs}
        for method in args.methods
    }
    part["whole_best"] = max(SPACE_MAPS, key=lambda m: part["whole"][m]["mean"])
    save()
    return part


def ablation_part(train: Path, val: Path, work: Path, args, schedule, part, save, best=None) -> dict[str, Any]:
    """imagebinddc with one setting changed from the defaults, on `val`, in the space map chosen for
    imagebinddc at that DPC by the select part (`best`; the default space map without it)."""
    variants = [(label, o) for label, o in ABLATION if not args.ablation_variants or label in args.ablation_variants]
    part.update(split="val", seeds=args.ablation_seeds, settings=dict(variants))
    for label, overrides in variants:
        for dpc in args.ablation_dpcs:
            space_map = at(best, dpc) if best and has(best, dpc) else CondenseConfig.space_map

            def config_of(seed, overrides=overrides, dpc=dpc, space_map=space_map):
                return table_config(args, dpc=dpc, seed=seed, space_map=space_map, **overrides)

            def compute(label=label, dpc=dpc, config_of=config_of):
                slug = "".join(ch if ch.isalnum() else "-" for ch in label)
                return run_sets(train, val, work, f"abl-{slug}-{dpc}", config_of, args.ablation_seeds, schedule)

            result = cell_of(part, ["rows", label, dpc], compute, save)
            print(f"  [val] ablation {label:44s} DPC {dpc:2d} ({space_map}): {cell(result)}", flush=True)
    return part


def methods_part(train: Path, test: Path, work: Path, args, schedule, selection, part, save) -> dict[str, Any]:
    """The published table, on test: each method under the space map chosen for it on val."""
    part.update(split="test", seeds=args.seeds)
    for method in [*args.methods, *([PAPER] if "imagebinddc" in args.methods else [])]:  # the preset with its method
        for dpc in args.dpcs:
            space_map = PAPER_SPACE_MAP if method == PAPER else at(selection["best"][method], dpc)

            def config_of(seed, method=method, dpc=dpc, space_map=space_map):
                return method_config(args, method, dpc=dpc, seed=seed, space_map=space_map)

            def compute(method=method, dpc=dpc, space_map=space_map, config_of=config_of):
                result = run_sets(train, test, work, f"{method.split()[0]}-{dpc}", config_of, args.seeds, schedule)
                return {**result, "space_map": space_map}

            result = cell_of(part, ["rows", method, dpc], compute, save)
            print(f"  [test] {method:28s} DPC {dpc:2d} ({space_map}): {cell(result)}  ({result['seconds']:.1f} s)")
    space_map = selection["whole_best"]

    def whole() -> dict[str, Any]:
        return {**whole_data(train, test, work, args.seeds, schedule, space_map), "space_map": space_map}

    print(f"  [test] whole data ({space_map}): {cell(cell_of(part, ['whole'], whole, save))}", flush=True)
    return part


def input_part(train: Path, test: Path, work: Path, args, schedule) -> dict[str, Any]:
    """Input-space sets (pixels + fbanks), evaluated with the linear and the convnet protocol on test."""
    rows: dict[str, dict[str, Any]] = {}
    for method in ("random", "imagebinddc", PAPER):
        for dpc in args.input_dpcs:
            key = f"{method} DPC {dpc}"
            linear, convnet, seconds = [], [], []
            for seed in range(args.seeds):
                out = work / f"input-{method.split()[0]}-{dpc}-s{seed}.safetensors"
                fields = {"dpc": dpc, "seed": seed, "iterations": args.input_iterations, "real_batch": 128}
                if method == PAPER:
                    config = CondenseConfig.from_preset("paper", modalities=MODALITIES, **fields)
                else:
                    config = CondenseConfig(modalities=MODALITIES, method=method, space="input", **fields)
                seconds.append(condense_in_child(train, out, config)["seconds"])
                linear.append(evaluate(out, test, seeds=1, schedule=schedule)["mean"])
                convnet.append(evaluate(out, test, seeds=1, protocol="convnet")["mean"])
                out.unlink()
            rows[key] = {
                "linear": summarize_runs(linear),
                "convnet": summarize_runs(convnet),
                "seconds": statistics.fmean(seconds),
            }
            print(f"  [test] input {key}: linear {cell(rows[key]['linear'])}, convnet {cell(rows[key]['convnet'])}")
    return {"split": "test", "rows": rows, "iterations": args.input_iterations}


def retrieval_part(work, args) -> dict[str, Any]:
    """spoken-numbers: 20 synthetic pairs vs 20 random real pairs vs all training pairs."""
    from ibdc_cli.data.benchmark import build_spoken_numbers
    from ibdc_cli.embed import embed_manifest

    count = 60 if args.quick else None
    root = cache_dir() / ("spoken-numbers" if count is None else f"spoken-numbers-{count}")
    manifests = build_spoken_numbers(root / "data", count=count)
    stores = {}
    for split in ("train", "test"):
        stores[split] = root / "stores" / f"spoken-numbers-{split}"
        if not (stores[split] / INDEX_FILE).exists():
            print(f"embedding spoken-numbers {split} -> {stores[split]}", flush=True)
            embed_manifest(manifests[split], ["audio", "text"], stores[split], model="imagebind_tiny", resume=True)
    # 20 random real pairs (one pseudo-class) vs imagebinddc with 20 k-means pseudo-classes x 1 pair: the
    # single-class variant did not beat random pairs on a validation split of train (docs/commands/evaluate.md)
    settings = {
        "random": {"method": "random", "dpc": args.pairs},
        "imagebinddc": {"method": "imagebinddc", "dpc": 1, "clusters": args.pairs},
    }
    rows: dict[str, dict[str, Any]] = {}
    for name, options in settings.items():
        runs: list[dict[str, Any]] = []
        for seed in range(args.seeds):
            out = work / f"retrieval-{name}-s{seed}.safetensors"
            condense_in_child(stores["train"], out, CondenseConfig(modalities=["audio", "text"], seed=seed, **options))
            runs.append(evaluate(out, stores["test"], protocol="retrieval", seeds=1)["metrics"])
            out.unlink()
        rows[name] = {k: summarize_runs([r[k]["mean"] for r in runs]) for k in runs[0]}
        print(f"  retrieval {name}: " + ", ".join(f"{k} {cell(v)}" for k, v in rows[name].items()), flush=True)
    reference = out_reference(work, stores)
    whole = evaluate(reference, stores["test"], protocol="retrieval", seeds=args.seeds, train_store=stores["train"])
    rows["whole"] = {k: {"mean": v["whole_mean"], "std": v["whole_std"]} for k, v in whole["metrics"].items()}
    return {"rows": rows, "pairs": args.pairs, "settings": settings}


def out_reference(work: Path, stores) -> Path:
    out = work / "retrieval-ref.safetensors"
    if not out.exists():
        condense_in_child(stores["train"], out, CondenseConfig(modalities=["audio", "text"], dpc=1, method="random"))
    return out


# ----------------------------------------------------------------------------------------------------
# report


def has(by_dpc: dict, dpc: int) -> bool:
    return dpc in by_dpc or str(dpc) in by_dpc


def at(by_dpc: dict, dpc: int) -> dict[str, Any]:
    """A row's entry for `dpc` (JSON turns the int keys into strings)."""
    return by_dpc[dpc] if dpc in by_dpc else by_dpc[str(dpc)]


def share(block: dict[str, Any], whole: dict[str, Any]) -> str:
    return f"{100 * block['mean'] / whole['mean']:.0f} %"


def encoder_title(encoder: str, parts: dict[str, Any]) -> str:
    if encoder == "random":
        return "random-init imagebind_tiny"
    return f"imagebind_tiny bound by `ibdc bind` ({parts.get('info', {}).get('checkpoint', '')})"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; started {report['started']}; "
        f"its parts took {report['minutes']:.0f} min in all.  ",
        f"Condensation defaults: {report['defaults']}.",
        "",
    ]
    for encoder, parts in report["encoders"].items():
        title = encoder_title(encoder, parts)
        if "select" in parts:
            select = parts["select"]
            dpcs = sorted({int(d) for by_map in select["rows"].values() for r in by_map.values() for d in r})
            lines += [
                f"### Selection on the val split, {title}",
                "",
                "Top-1 accuracy (%) on the **val** split (speaker theo), audio + image, linear protocol, mean ± std "
                f"over {select['seeds']} condensation seed(s). **Bold**: the space map chosen for the test table.",
                "",
                "| method | space map | " + " | ".join(f"DPC {d}" for d in dpcs) + " |",
                "|---|---" + "|---" * len(dpcs) + "|",
            ]
            for method, by_map in select["rows"].items():
                for space_map, by_dpc in by_map.items():
                    cells = []
                    for d in dpcs:
                        text = cell(at(by_dpc, d)) if has(by_dpc, d) else "—"
                        chosen = has(select["best"][method], d) and at(select["best"][method], d) == space_map
                        cells.append(f"**{text}**" if chosen else text)
                    lines.append(f"| {method} | {space_map} | " + " | ".join(cells) + " |")
            for space_map, whole in select["whole"].items():
                text = cell(whole) if space_map != select["whole_best"] else f"**{cell(whole)}**"
                lines.append(f"| whole data | {space_map} | " + " | ".join(text for _ in dpcs) + " |")
            lines.append("")
        if "ablation" in parts:
            ablation = parts["ablation"]["rows"]
            adpcs = sorted({int(d) for by_dpc in ablation.values() for d in by_dpc})
            lines += [
                f"### Ablation on the val split, {title}",
                "",
                "imagebinddc with one setting changed from the defaults; top-1 accuracy (%) on the **val** split, "
                f"{parts['ablation']['seeds']} condensation seed(s), in the space map chosen on val for imagebinddc.",
                "",
                "| variant | " + " | ".join(f"DPC {d}" for d in adpcs) + " |",
                "|---" * (1 + len(adpcs)) + "|",
            ]
            for label, by_dpc in ablation.items():
                cells = [cell(at(by_dpc, d)) if has(by_dpc, d) else "—" for d in adpcs]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
        if "methods" in parts:
            methods = parts["methods"]
            whole = methods["whole"]
            dpcs = sorted({int(d) for by_dpc in methods["rows"].values() for d in by_dpc})
            lines += [
                f"### Methods on the test split, {title}",
                "",
                "Top-1 accuracy (%) on the **test** split (speaker yweweler, unseen in training and selection), "
                f"audio + image, linear protocol, mean ± std over {report['seeds']} condensation seeds; in "
                "brackets the space map chosen on val and the share of whole-data accuracy.",
                "",
                "| method | " + " | ".join(f"DPC {d}" for d in dpcs) + " | s / MiB at DPC " + str(dpcs[-1]) + " |",
                "|---" * (2 + len(dpcs)) + "|",
            ]
            for method, by_dpc in methods["rows"].items():
                cells = [
                    f"{cell(at(by_dpc, d))} ({at(by_dpc, d)['space_map']}, {share(at(by_dpc, d), whole)})" for d in dpcs
                ]
                last = at(by_dpc, dpcs[-1])
                lines.append(
                    f"| {method} | " + " | ".join(cells) + f" | {last['seconds']:.0f} / {last['peak_mib']:.0f} |"
                )
            lines.append(f"| whole data ({whole['space_map']}) | " + " | ".join(cell(whole) for _ in dpcs) + " | |")
            lines.append("")
        if "input" in parts:
            lines += [
                f"### Input space, test split, {title}",
                "",
                f"Pixels + fbanks optimised through the frozen encoder ({parts['input']['iterations']} iterations), "
                "evaluated on **test** by embedding them (linear) and by training ConvNets from scratch (convnet).",
                "",
                "| set | linear | convnet | condensation s |",
                "|---|---|---|---|",
            ]
            for key, row in parts["input"]["rows"].items():
                lines.append(f"| {key} | {cell(row['linear'])} | {cell(row['convnet'])} | {row['seconds']:.0f} |")
            lines.append("")
    if "retrieval" in report:
        rows = report["retrieval"]["rows"]
        metrics = list(rows["random"])
        lines += [
            "### Retrieval on spoken-numbers (audio–text, random-init imagebind_tiny), test split",
            "",
            f"{report['retrieval']['pairs']} pairs; Recall@k (%) on the 200 test pairs.",
            "",
            "| set | " + " | ".join(metrics) + " |",
            "|---" * (1 + len(metrics)) + "|",
        ]
        for name, label in (
            ("random", f"{report['retrieval']['pairs']} random real pairs"),
            ("imagebinddc", f"imagebinddc, --clusters {report['retrieval']['pairs']} --dpc 1"),
            ("whole", "whole training set"),
        ):
            lines.append(f"| {label} | " + " | ".join(cell(rows[name].get(m)) for m in metrics) + " |")
        lines.append("")
    return "\n".join(lines)


def merge_into(target: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """`target` updated with `source`, nested dicts merged key by key (rows of one part measured by two runs,
    say for two sets of --methods, are kept side by side); returns `target`."""
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_into(target[key], value)
        else:
            target[key] = value
    return target


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several runs of this script (e.g. the select and the methods part, encoders, or one part
    run for two sets of --methods in two processes)."""
    merged = dict(reports[0])
    merged["encoders"] = {}
    for report in reports:
        for encoder, parts in report["encoders"].items():
            merge_into(merged["encoders"].setdefault(encoder, {}), copy.deepcopy(parts))
        if "retrieval" in report:
            merged["retrieval"] = report["retrieval"]
    encoders = merged["encoders"]  # the random-init encoder first, whatever the order of the files
    merged["encoders"] = {e: encoders[e] for e in sorted(encoders, key=lambda e: e != "random")}
    merged["command"] = "; ".join(dict.fromkeys(r["command"] for r in reports))
    merged["minutes"] = sum(r["minutes"] for r in reports)
    merged["seeds"] = max(r["seeds"] for r in reports)
    return merged


def write_docs(text: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    doc = path.read_text()
    block = f"{MARK_START}\n{text}\n{MARK_END}"
    if MARK_START in doc:
        doc = doc[: doc.index(MARK_START)] + block + doc[doc.index(MARK_END) + len(MARK_END) :]
    else:
        doc = doc.rstrip() + "\n\n## The paper table (`benchmarks/paper_table.py`)\n\n" + block + "\n"
    path.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="select,ablation,methods,input,retrieval")
    parser.add_argument("--encoders", default="random", help="random, bound, or both (comma-separated)")
    parser.add_argument("--bound-checkpoint", help="a checkpoint from `ibdc bind` for --encoders bound")
    parser.add_argument("--source", help="the fsdd-mnist source folder (default ../shared/data/fsdd-mnist)")
    parser.add_argument(
        "--selection", type=Path, nargs="+", help="JSON reports with the select part, merged (else it runs here)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="condensation seeds of the test tables")
    parser.add_argument("--select-seeds", type=int, default=2, help="condensation seeds of each val score")
    parser.add_argument("--ablation-seeds", type=int, default=1, help="condensation seeds of each ablation cell")
    parser.add_argument("--resume", action="store_true", help="keep the cells already measured in --json")
    parser.add_argument("--methods", default=",".join(METHODS), help="methods of the select and methods parts")
    parser.add_argument("--dpcs", default="1,10,20")
    parser.add_argument("--ablation-dpcs", default="1,10")
    parser.add_argument(
        "--ablation-variants", help="only these ablation rows, by label, separated by ';' (default: every row)"
    )
    parser.add_argument("--input-dpcs", default="1,10")
    parser.add_argument("--input-iterations", type=int, default=30)
    parser.add_argument("--paper-iterations", type=int, default=150, help="steps of the --preset paper rows")
    parser.add_argument("--iterations", type=int, help="condensation steps (default: CondenseConfig's)")
    parser.add_argument("--pairs", type=int, default=20, help="synthetic pairs in the retrieval part")
    parser.add_argument("--per-class", type=int, help="rows per class and split of fsdd-mnist (smaller: quicker)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, DPC 1 and 2, few iterations")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "paper_table.json")
    parser.add_argument("--write-docs", action="store_true", help="write the tables into docs/benchmarks.md")
    parser.add_argument(
        "--render", type=Path, nargs="+", help="only merge these JSON reports (parts run apart) and print them"
    )
    args = parser.parse_args()
    if args.quick:  # smaller defaults; options given explicitly still win
        parser.set_defaults(
            seeds=1,
            select_seeds=1,
            dpcs="1,2",
            ablation_dpcs="1",
            input_dpcs="1",
            iterations=5,
            input_iterations=2,
            paper_iterations=5,
            pairs=5,
            per_class=4,
        )
        args = parser.parse_args()
    if args.render:
        report = merge_reports([json.loads(path.read_text()) for path in args.render])
        text = markdown(report)
        print(text)
        if args.write_docs:
            write_docs(text)
        return
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown[0]!r}; choose from {', '.join(METHODS)}")
    args.dpcs = [int(d) for d in args.dpcs.split(",")]
    args.ablation_dpcs = [int(d) for d in args.ablation_dpcs.split(",") if d]
    labels = [label for label, _ in ABLATION]
    args.ablation_variants = [v.strip() for v in (args.ablation_variants or "").split(";") if v.strip()]
    unknown = [v for v in args.ablation_variants if v not in labels]
    if unknown:
        parser.error(f"--ablation-variants: unknown {unknown[0]!r}; choose from {'; '.join(labels)}")
    args.input_dpcs = [int(d) for d in args.input_dpcs.split(",")]
    parts = args.parts.split(",")
    schedule = HeadSchedule()
    started = time.time()
    report: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/paper_table.py", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"Python {platform.python_version()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "defaults": ", ".join(
            f"{k}={v}"
            for k, v in vars(CondenseConfig(modalities=MODALITIES)).items()
            if k
            in (
                "iterations",
                "num_freqs",
                "sigma",
                "cf_reduction",
                "cross_form",
                "joint_form",
                "freq_bank",
                "space_map",
            )
        ),
        "seeds": args.seeds,
        "schedule": vars(schedule),
        "encoders": {},
    }

    def save() -> None:  # after every part, so a long run's finished parts are never lost
        report["minutes"] = (time.time() - started) / 60
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))

    previous = json.loads(args.json.read_text()) if args.resume and args.json.exists() else {}
    with tempfile.TemporaryDirectory(prefix="ibdc-paper-") as tmp:
        work = Path(tmp)
        for encoder in [e for e in args.encoders.split(",") if e]:
            if encoder not in ("random", "bound"):
                parser.error(f"--encoders: {encoder!r} is not random or bound")
            print(f"[{encoder} encoder]", flush=True)
            stores, info = fsdd_stores(args, encoder)
            entry: dict[str, Any] = previous.get("encoders", {}).get(encoder, {}) if args.resume else {}
            entry["info"] = info
            report["encoders"][encoder] = entry
            train, val, test = stores["train"], stores["val"], stores["test"]
            if "select" in parts:
                select_part(train, val, work, args, schedule, entry.setdefault("select", {}), save)
            selection = entry.get("select")
            if selection is None and args.selection:
                reports = [json.loads(path.read_text()) for path in args.selection]
                selection = merge_reports(reports)["encoders"][encoder]["select"]
            if "ablation" in parts:
                best = selection["best"]["imagebinddc"] if selection else None
                ablation_part(train, val, work, args, schedule, entry.setdefault("ablation", {}), save, best)
            if "methods" in parts:
                if selection is None or "best" not in selection:
                    parser.error("--parts methods needs the select part: run it too, or pass --selection FILE")
                methods_part(train, test, work, args, schedule, selection, entry.setdefault("methods", {}), save)
            if "input" in parts and "input" not in entry:
                entry["input"] = input_part(train, test, work, args, schedule)
                save()
        if "retrieval" in parts:
            print("[retrieval]", flush=True)
            report["retrieval"] = retrieval_part(work, args)
    save()
    text = markdown(report)
    print(text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
