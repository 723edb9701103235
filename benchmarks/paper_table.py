"""The paper-style benchmark (SPEC §6, issue 5): av-digits with `imagebind_tiny`, linear protocol, 3 seeds.

Parts (`--parts`, all by default):

- `methods`: random, herding, kcenter, dm, avdd, imagebinddc × DPC 1, 10, 20 (`--dpcs`), mean ± std over
  `--seeds` condensation seeds (seed s condenses with --seed s; each set is evaluated once with the linear
  protocol's fixed schedule), the whole-data row (the same heads on every training row, `--seeds` head
  seeds), and each condensation's wall time and peak memory (every condensation runs in a fresh forked
  process, so its peak RSS is its own: torch's baseline included).
- `ablation`: imagebinddc with the loss terms switched (uni, uni+cross, uni+joint, all) and the variants
  (CFD reduction, cross/joint forms, frequency bank, the space map) at `--ablation-dpcs`.
- `spaces`: random, dm, avdd and imagebinddc under each `--space-map` (none, center, whiten) at
  `--space-dpcs`: the space decides which single point per class a linear head learns best from, so the
  DPC 1 comparison of CF matching with mean matching depends on it (docs/benchmarks.md).
- `input`: imagebinddc and random real rows in model-input space (`--space input`, pixels + fbanks through
  the frozen encoder) at DPC 1 and 10, evaluated with the `linear` and the `convnet` protocol.
- `retrieval`: spoken-numbers (audio–text, no labels), 20 synthetic pairs vs 20 random real pairs vs the
  whole training set, Recall@1/5/10 both ways.

The `methods`, `ablation` and `spaces` parts run once per encoder in `--encoders`: `random` (the random-init
imagebind_tiny of the demo stores) and `bound` (imagebind_tiny whose audio tower was bound to its frozen
image tower on the av-digits train split by `ibdc bind`; `--bound-checkpoint` names it, else it is bound
here with `--bind-epochs`). Only the bound encoder has an aligned space for the cross/joint terms.

Run from the repository root; it writes a JSON file and, with `--write-docs`, the tables into
docs/benchmarks.md between the `paper_table` markers:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/paper_table.py --write-docs
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/paper_table.py --quick       # smoke run, a few minutes
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
import traceback
from pathlib import Path
from typing import Any

import torch

from ibdc_cli.condense import CondenseConfig, condense
from ibdc_cli.demo import cache_dir, ensure_demo_stores
from ibdc_cli.evaluate import HeadSchedule, evaluate, summarize_runs
from ibdc_cli.space import SPACE_MAPS
from ibdc_cli.store import INDEX_FILE, file_sha256

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["random", "herding", "kcenter", "dm", "avdd", "imagebinddc"]
MODALITIES = ["audio", "image"]
# (label, CondenseConfig overrides on top of the defaults)
ABLATION = [
    ("uni", {"joint_form": "none"}),
    ("uni + cross (paper)", {"joint_form": "none", "cross_form": "paper"}),
    ("uni + joint (cf): default", {}),
    ("uni + cross (paper) + joint (cf)", {"cross_form": "paper"}),
    ("uni + cross (paper) + joint (paper): the paper", {"cross_form": "paper", "joint_form": "paper"}),
    ("joint paper-cos", {"joint_form": "paper-cos"}),
    ("cross hybrid", {"cross_form": "hybrid"}),
    ("reduction ncfm (authors' code)", {"cf_reduction": "ncfm"}),
    ("fresh frequencies every step", {"freq_bank": 0}),
    ("σ = 0.5", {"sigma": 0.5}),
    ("space map center", {"space_map": "center"}),
    ("space map none", {"space_map": "none"}),
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
    """`condense(store, out, config)` in a forked process; returns its wall time and peak RSS (MiB)."""
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child, str(store), str(out), config))
    process.start()
    child.close()
    report = parent.recv()
    process.join()
    if "error" in report:
        raise RuntimeError(f"condensation {out.name} failed:\n{report['error']}")
    return report


def cell(block: dict[str, Any] | None) -> str:
    return "—" if not block else f"{block['mean']:.1f} ± {block['std']:.1f}"


# ----------------------------------------------------------------------------------------------------
# stores


def random_init_stores(per_class: int | None) -> dict[str, Path]:
    return ensure_demo_stores(per_class=per_class)


def bound_stores(args, demo: dict[str, Path]) -> tuple[dict[str, Path], Path]:
    """av-digits embedded with the bound encoder (bound here when --bound-checkpoint is not given)."""
    from ibdc_cli.embed import embed_manifest

    checkpoint = Path(args.bound_checkpoint) if args.bound_checkpoint else None
    if checkpoint is None:
        from ibdc_cli.bind import bind_encoder

        checkpoint = cache_dir() / "bound" / f"paper-table-{args.bind_epochs}ep.safetensors"
        if not checkpoint.exists():
            print(f"binding audio to image on av-digits train ({args.bind_epochs} epochs) -> {checkpoint}", flush=True)
            bind_encoder(
                demo["data"] / "train.csv",
                ["image", "audio"],
                "image",
                checkpoint,
                model="imagebind_tiny",
                random_init=True,
                epochs=args.bind_epochs,
                label_positives=True,
            )
    root = (
        cache_dir()
        / "bound"
        / f"stores-{file_sha256(checkpoint)[:12]}{'' if args.per_class is None else f'-{args.per_class}'}"
    )
    stores = {}
    for split in ("train", "test"):
        store = root / f"av-digits-{split}"
        if not (store / INDEX_FILE).exists():
            print(f"embedding av-digits {split} with the bound encoder -> {store}", flush=True)
            embed_manifest(
                demo["data"] / f"{split}.csv", ["image", "audio", "text"], store, checkpoint=checkpoint, resume=True
            )
        stores[split] = store
    return stores, checkpoint


# ----------------------------------------------------------------------------------------------------
# parts


def table_config(args, **fields) -> CondenseConfig:
    """A CondenseConfig of the audio + image tables: the defaults, `--iterations` when given, and `fields`."""
    settings = {"iterations": args.iterations} if args.iterations else {}
    return CondenseConfig(modalities=MODALITIES, **settings, **fields)


def run_sets(stores, work: Path, name: str, config_of, seeds: int, schedule: HeadSchedule, **eval_options):
    """Condense one set per seed with `config_of(seed)`, evaluate each; accuracy summary + cost."""
    accuracies, seconds, memory = [], [], []
    for seed in range(seeds):
        out = work / f"{name}-s{seed}.safetensors"
        cost = condense_in_child(stores["train"], out, config_of(seed))
        result = evaluate(out, stores["test"], seeds=1, schedule=schedule, **eval_options)
        accuracies.append(result["mean"])
        seconds.append(cost["seconds"])
        memory.append(cost["peak_mib"])
        out.unlink()
    return {**summarize_runs(accuracies), "seconds": statistics.fmean(seconds), "peak_mib": max(memory)}


def methods_part(stores, work, args, schedule) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        rows[method] = {}
        for dpc in args.dpcs:

            def config_of(seed, method=method, dpc=dpc):
                return table_config(args, dpc=dpc, method=method, seed=seed)

            rows[method][dpc] = run_sets(stores, work, f"{method}-{dpc}", config_of, args.seeds, schedule)
            print(
                f"  {method:12s} DPC {dpc:2d}: {cell(rows[method][dpc])}  ({rows[method][dpc]['seconds']:.1f} s)",
                flush=True,
            )
    return {"rows": rows, "whole": whole_row(stores, work, args, schedule)}


def whole_row(stores, work, args, schedule, space_map: str = CondenseConfig.space_map) -> dict[str, Any]:
    """The same heads trained on every training row, in the space of `space_map`."""
    # any set gives the class names and the space; use a quick random selection
    out = work / "whole-ref.safetensors"
    config = CondenseConfig(modalities=MODALITIES, dpc=1, method="random", space_map=space_map)
    condense_in_child(stores["train"], out, config)
    whole = evaluate(out, stores["test"], seeds=args.seeds, schedule=schedule, train_store=stores["train"])
    out.unlink()
    print(f"  whole data, --space-map {space_map}: {whole['whole_mean']:.1f} ± {whole['whole_std']:.1f}", flush=True)
    return {"mean": whole["whole_mean"], "std": whole["whole_std"], "runs": whole["whole_runs"]}


def ablation_part(stores, work, args, schedule) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for label, overrides in ABLATION:
        rows[label] = {}
        for dpc in args.ablation_dpcs:

            def config_of(seed, overrides=overrides, dpc=dpc):
                return table_config(args, dpc=dpc, seed=seed, **overrides)

            slug = "".join(ch if ch.isalnum() else "-" for ch in label)
            rows[label][dpc] = run_sets(stores, work, f"abl-{slug}-{dpc}", config_of, args.seeds, schedule)
            print(f"  {label:32s} DPC {dpc:2d}: {cell(rows[label][dpc])}", flush=True)
    return {"rows": rows, "settings": {label: overrides for label, overrides in ABLATION}}


SPACE_METHODS = ["random", "dm", "avdd", "imagebinddc"]


def space_label(method: str, space_map: str) -> str:
    return f"{method}, --space-map {space_map}"


def spaces_part(stores, work, args, schedule) -> dict[str, Any]:
    """The methods that match distributions, under each space map (the rest of the defaults unchanged)."""
    rows: dict[str, dict[str, Any]] = {}
    whole: dict[str, dict[str, Any]] = {}
    for space_map in reversed(SPACE_MAPS):  # none, center, whiten: from the encoder's space to the default
        whole[space_map] = whole_row(stores, work, args, schedule, space_map)
        for method in SPACE_METHODS:
            label = space_label(method, space_map)
            rows[label] = {}
            for dpc in args.space_dpcs:

                def config_of(seed, method=method, dpc=dpc, space_map=space_map):
                    return table_config(args, dpc=dpc, method=method, seed=seed, space_map=space_map)

                name = f"space-{space_map}-{method}-{dpc}"
                rows[label][dpc] = run_sets(stores, work, name, config_of, args.seeds, schedule)
                print(f"  {label:36s} DPC {dpc:2d}: {cell(rows[label][dpc])}", flush=True)
    return {"rows": rows, "whole": whole, "dpcs": args.space_dpcs}


def input_part(stores, work, args, schedule) -> dict[str, Any]:
    """Input-space sets (pixels + fbanks) evaluated with the linear and the convnet protocol."""
    rows: dict[str, dict[str, Any]] = {}
    for method in ("random", "imagebinddc"):
        for dpc in args.input_dpcs:
            key = f"{method} DPC {dpc}"
            rows[key] = {}
            linear, convnet, seconds = [], [], []
            for seed in range(args.seeds):
                out = work / f"input-{method}-{dpc}-s{seed}.safetensors"
                config = CondenseConfig(
                    modalities=MODALITIES,
                    dpc=dpc,
                    method=method,
                    space="input",
                    seed=seed,
                    iterations=args.input_iterations,
                    real_batch=128,
                )
                cost = condense_in_child(stores["train"], out, config)
                seconds.append(cost["seconds"])
                linear.append(evaluate(out, stores["test"], seeds=1, schedule=schedule)["mean"])
                convnet.append(evaluate(out, stores["test"], seeds=1, protocol="convnet")["mean"])
                out.unlink()
            rows[key] = {
                "linear": summarize_runs(linear),
                "convnet": summarize_runs(convnet),
                "seconds": statistics.fmean(seconds),
            }
            print(
                f"  input {key}: linear {cell(rows[key]['linear'])}, convnet {cell(rows[key]['convnet'])}", flush=True
            )
    return {"rows": rows, "iterations": args.input_iterations}


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


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; started {report['started']}, took {report['minutes']:.0f} min.  ",
        f"Condensation defaults: {report['defaults']}.",
        "",
    ]
    for encoder, parts in report["encoders"].items():
        title = (
            "random-init imagebind_tiny"
            if encoder == "random"
            else f"bound imagebind_tiny ({parts.get('checkpoint', '')})"
        )
        if "methods" in parts:
            dpcs = report["dpcs"]
            lines += [
                f"### Methods, {title}",
                "",
                "Top-1 accuracy (%) on the av-digits test split, audio + image, linear "
                f"protocol, mean ± std over {report['seeds']} condensation seeds.",
                "",
            ]
            lines.append(
                "| method | "
                + " | ".join(f"DPC {d}" for d in dpcs)
                + " | "
                + " | ".join(f"s / MiB at DPC {d}" for d in dpcs)
                + " |"
            )
            lines.append("|---" * (1 + 2 * len(dpcs)) + "|")
            for method, by_dpc in parts["methods"]["rows"].items():
                accs = " | ".join(cell(at(by_dpc, d)) for d in dpcs)
                costs = " | ".join(f"{at(by_dpc, d)['seconds']:.1f} / {at(by_dpc, d)['peak_mib']:.0f}" for d in dpcs)
                lines.append(f"| {method} | {accs} | {costs} |")
            whole = parts["methods"]["whole"]
            lines.append(
                f"| whole data ({report['train_rows']} rows) | "
                + " | ".join(cell(whole) for _ in dpcs)
                + " |"
                + " |" * len(dpcs)
            )
            ibdc = parts["methods"]["rows"]["imagebinddc"]
            lines += [
                "",
                "imagebinddc as a share of whole data: "
                + ", ".join(f"DPC {d} {100 * at(ibdc, d)['mean'] / whole['mean']:.1f} %" for d in dpcs)
                + ".",
                "",
            ]
        if "ablation" in parts:
            adpcs = report["ablation_dpcs"]
            lines += [
                f"### Loss terms and variants, {title}",
                "",
                "imagebinddc with one setting changed from the defaults.",
                "",
            ]
            lines.append("| variant | " + " | ".join(f"DPC {d}" for d in adpcs) + " |")
            lines.append("|---" * (1 + len(adpcs)) + "|")
            for label, by_dpc in parts["ablation"]["rows"].items():
                cells = [cell(at(by_dpc, d)) if has(by_dpc, d) else "—" for d in adpcs]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
        if "spaces" in parts:
            sdpcs = parts["spaces"]["dpcs"]
            lines += [
                f"### Methods under each space map, {title}",
                "",
                f"The same methods with `--space-map {' | '.join(reversed(SPACE_MAPS))}` (default "
                f"{CondenseConfig.space_map}); each set is evaluated in the space it was condensed in.",
                "",
                "| method, space | " + " | ".join(f"DPC {d}" for d in sdpcs) + " |",
                "|---" * (1 + len(sdpcs)) + "|",
            ]
            for space_map, whole in parts["spaces"]["whole"].items():
                for method in SPACE_METHODS:
                    by_dpc = parts["spaces"]["rows"][space_label(method, space_map)]
                    cells = [cell(at(by_dpc, d)) if has(by_dpc, d) else "—" for d in sdpcs]
                    lines.append(f"| {space_label(method, space_map)} | " + " | ".join(cells) + " |")
                whole_cells = " | ".join(cell(whole) for _ in sdpcs)
                lines.append(f"| whole data, --space-map {space_map} | {whole_cells} |")
            lines.append("")
    if "input" in report:
        lines += [
            "### Input space (random-init imagebind_tiny)",
            "",
            f"Pixels + fbanks optimised through the frozen encoder ({report['input']['iterations']} iterations), "
            "evaluated by embedding them (linear) and by training a ConvNet from scratch (convnet).",
            "",
            "| set | linear | convnet | condensation s |",
            "|---|---|---|---|",
        ]
        for key, row in report["input"]["rows"].items():
            lines.append(f"| {key} | {cell(row['linear'])} | {cell(row['convnet'])} | {row['seconds']:.0f} |")
        lines.append("")
    if "retrieval" in report:
        rows = report["retrieval"]["rows"]
        metrics = list(rows["random"])
        lines += [
            "### Retrieval on spoken-numbers (audio–text, random-init imagebind_tiny)",
            "",
            f"{report['retrieval']['pairs']} pairs; Recall@k (%) on the 200 test pairs.",
            "",
            "| set | " + " | ".join(metrics) + " |",
            "|---" * (1 + len(metrics)) + "|",
        ]
        for name, label in (
            ("random", f"{report['retrieval']['pairs']} random real pairs"),
            (
                "imagebinddc",
                f"imagebinddc, --clusters {report['retrieval']['pairs']} --dpc 1",
            ),
            ("whole", "whole training set"),
        ):
            lines.append(f"| {label} | " + " | ".join(cell(rows[name].get(m)) for m in metrics) + " |")
        lines.append("")
    return "\n".join(lines)


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several runs of this script (e.g. one per encoder, run side by side)."""
    merged = dict(reports[0])
    merged["encoders"] = {}
    dpcs = set()
    for report in reports:
        for encoder, parts in report["encoders"].items():
            entry = merged["encoders"].setdefault(encoder, {})
            for name, part in parts.items():
                if name in ("ablation", "spaces") and name in entry:  # the same rows at other DPCs
                    for label, by_dpc in part["rows"].items():
                        entry[name]["rows"].setdefault(label, {}).update(by_dpc)
                    if name == "spaces":
                        entry[name]["dpcs"] = sorted(set(entry[name]["dpcs"]) | set(part["dpcs"]))
                else:
                    entry[name] = part
        if any("ablation" in parts for parts in report["encoders"].values()):
            dpcs.update(report["ablation_dpcs"])
        for part in ("input", "retrieval"):
            if part in report:
                merged[part] = report[part]
    encoders = merged["encoders"]  # the random-init encoder first, whatever the order of the files
    merged["encoders"] = {e: encoders[e] for e in sorted(encoders, key=lambda e: e != "random")}
    merged["ablation_dpcs"] = sorted(dpcs)
    merged["command"] = "; ".join(dict.fromkeys(r["command"] for r in reports))
    merged["minutes"] = max(r["minutes"] for r in reports)
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
    parser.add_argument("--parts", default="methods,ablation,spaces,input,retrieval")
    parser.add_argument("--encoders", default="random,bound", help="random, bound, or both")
    parser.add_argument("--bound-checkpoint", help="a checkpoint from `ibdc bind` (else one is bound here)")
    parser.add_argument("--bind-epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dpcs", default="1,10,20")
    parser.add_argument("--ablation-dpcs", default="1")
    parser.add_argument("--space-dpcs", default="1,10")
    parser.add_argument("--input-dpcs", default="1,10")
    parser.add_argument("--input-iterations", type=int, default=50)
    parser.add_argument("--iterations", type=int, help="condensation steps (default: CondenseConfig's)")
    parser.add_argument("--pairs", type=int, default=20, help="synthetic pairs in the retrieval part")
    parser.add_argument("--per-class", type=int, help="rows per class and split of av-digits (smaller: quicker)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, DPC 1 and 2, few iterations")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "paper_table.json")
    parser.add_argument("--write-docs", action="store_true", help="write the tables into docs/benchmarks.md")
    parser.add_argument(
        "--render", type=Path, nargs="+", help="only merge these JSON reports (parts run in parallel) and print them"
    )
    args = parser.parse_args()
    if args.render:
        report = merge_reports([json.loads(path.read_text()) for path in args.render])
        text = markdown(report)
        print(text)
        if args.write_docs:
            write_docs(text)
        return
    if args.quick:
        args.seeds, args.dpcs, args.ablation_dpcs, args.input_dpcs, args.space_dpcs = 1, "1,2", "1", "1", "1"
        args.iterations, args.input_iterations, args.per_class, args.pairs, args.bind_epochs = 5, 2, 20, 5, 1
    args.dpcs = [int(d) for d in args.dpcs.split(",")]
    args.ablation_dpcs = [int(d) for d in args.ablation_dpcs.split(",")]
    args.input_dpcs = [int(d) for d in args.input_dpcs.split(",")]
    args.space_dpcs = [int(d) for d in args.space_dpcs.split(",")]
    parts = args.parts.split(",")
    schedule = HeadSchedule()
    started = time.time()
    demo = random_init_stores(args.per_class)
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
                "real_batch",
            )
        ),
        "seeds": args.seeds,
        "dpcs": args.dpcs,
        "ablation_dpcs": args.ablation_dpcs,
        "train_rows": sum(json.loads((demo["train"] / INDEX_FILE).read_text())["rows_per_class"].values()),
        "schedule": vars(schedule),
        "encoders": {},
    }

    def save() -> None:  # after every part, so a long run's finished parts are never lost
        report["minutes"] = (time.time() - started) / 60
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))

    with tempfile.TemporaryDirectory(prefix="ibdc-paper-") as tmp:
        work = Path(tmp)
        for encoder in [e for e in args.encoders.split(",") if e]:
            if encoder not in ("random", "bound"):
                parser.error(f"--encoders: {encoder!r} is not random or bound")
            print(f"[{encoder} encoder]", flush=True)
            if encoder == "random":
                stores, entry = demo, {}
            else:
                stores, checkpoint = bound_stores(args, demo)
                entry = {"checkpoint": str(checkpoint)}
            report["encoders"][encoder] = entry
            if "methods" in parts:
                entry["methods"] = methods_part(stores, work, args, schedule)
                save()
            if "ablation" in parts:
                entry["ablation"] = ablation_part(stores, work, args, schedule)
                save()
            if "spaces" in parts:
                entry["spaces"] = spaces_part(stores, work, args, schedule)
                save()
        if "input" in parts:
            print("[input space]", flush=True)
            report["input"] = input_part(demo, work, args, schedule)
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
