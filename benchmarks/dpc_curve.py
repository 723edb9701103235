"""Accuracy against DPC on the fsdd-mnist VAL split: does a larger synthetic set buy accuracy?

random real rows, dm and imagebinddc (defaults) at DPC 1, 5, 10, 20, 50 with the random-init
`imagebind_tiny`, audio + image, linear protocol, mean ± std over `--seeds` condensation seeds, scored on
the val split (the test store is never opened), with the whole-data line in the same space. Writes a JSON
report and, with --plot, a PNG plot (docs/images/dpc_curve.png).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dpc_curve.py --json benchmarks/results/dpc_curve.json \
        --plot docs/images/dpc_curve.png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_table import at, cell, fsdd_stores, run_sets, table_config, whole_data  # noqa: E402

from ibdc_cli.evaluation import HeadSchedule  # noqa: E402


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method, by_dpc in report["rows"].items():
        dpcs = sorted(int(d) for d in by_dpc)
        means = [at(by_dpc, d)["mean"] for d in dpcs]
        stds = [at(by_dpc, d)["std"] for d in dpcs]
        ax.errorbar(dpcs, means, yerr=stds, marker="o", capsize=3, label=method)
    whole = report["whole"]
    ax.axhline(whole["mean"], color="grey", linestyle="--", label=f"whole data ({report['train_rows']} rows)")
    ax.set_xscale("log")
    ax.set_xticks(report["dpcs"], [str(d) for d in report["dpcs"]])
    ax.set_xlabel("synthetic rows per class (DPC)")
    ax.set_ylabel("top-1 accuracy on fsdd-mnist val (%)")
    ax.set_title(f"fsdd-mnist val, random-init imagebind_tiny, --space-map {report['space_map']}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="random,dm,imagebinddc")
    parser.add_argument("--dpcs", default="1,5,10,20,50")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--space-map", default="whiten")
    parser.add_argument("--iterations", type=int, help="condensation steps (default: CondenseConfig's)")
    parser.add_argument("--source", help="the fsdd-mnist source folder (default ../shared/data/fsdd-mnist)")
    parser.add_argument("--per-class", type=int, help="rows per class and split (smoke runs)")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--render", action="store_true", help="only draw --plot from an existing --json")
    args = parser.parse_args()
    if args.render:
        plot(json.loads(args.json.read_text()), args.plot)
        return
    stores, info = fsdd_stores(args, "random")
    schedule, started = HeadSchedule(), time.time()
    dpcs = [int(d) for d in args.dpcs.split(",")]
    report = {
        "command": " ".join(["python", "benchmarks/dpc_curve.py", *sys.argv[1:]]),
        "split": "val",
        "space_map": args.space_map,
        "dpcs": dpcs,
        "seeds": args.seeds,
        "train_rows": info["counts"]["train"],
        "rows": {},
    }
    with tempfile.TemporaryDirectory(prefix="ibdc-curve-") as tmp:
        work = Path(tmp)
        report["whole"] = whole_data(stores["train"], stores["val"], work, args.seeds, schedule, args.space_map)
        for method in args.methods.split(","):
            report["rows"][method] = {}
            for dpc in dpcs:

                def config_of(seed, method=method, dpc=dpc):
                    return table_config(args, method=method, dpc=dpc, seed=seed, space_map=args.space_map)

                result = run_sets(
                    stores["train"], stores["val"], work, f"{method}-{dpc}", config_of, args.seeds, schedule
                )
                report["rows"][method][dpc] = result
                print(f"  [val] {method:12s} DPC {dpc:3d}: {cell(result)}", flush=True)
                report["minutes"] = (time.time() - started) / 60
                args.json.write_text(json.dumps(report, indent=1))
    if args.plot:
        plot(json.loads(args.json.read_text()), args.plot)


if __name__ == "__main__":
    main()
