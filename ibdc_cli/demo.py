"""The built-in demo data: av-digits built and embedded once into a cache directory.

`ibdc demo` runs it end to end, and commands that need a store fall back to it when none is named
(after `$IBDC_STORE`), saying on stderr which store they used.
"""

from __future__ import annotations

import os
from pathlib import Path

from ibdc_cli.data.benchmark import build_av_digits
from ibdc_cli.embed import embed_manifest
from ibdc_cli.runtime import log
from ibdc_cli.store import INDEX_FILE

DEMO_MODALITIES = ["image", "audio", "text"]
DEMO_MODEL = "imagebind_tiny"
DEMO_METHODS = ("imagebinddc", "random")  # the method, and the baseline every condensation must beat
DEMO_CONDENSED = ("audio", "image")
# t-SNE shows the class clusters that PCA of the whitened space hides (its two axes hold ~2 % of the
# variance); it adds about a minute on a 2-core CPU.
DEMO_PROJECTION = "tsne"
STORE_ENV = "IBDC_STORE"
CACHE_ENV = "IBDC_CACHE"


def cache_dir() -> Path:
    """`$IBDC_CACHE`, else `$XDG_CACHE_HOME/ibdc`, else `~/.cache/ibdc`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ibdc"


def ensure_demo_stores(root: Path | None = None, *, per_class: int | None = None) -> dict[str, Path]:
    """Build av-digits and embed its train and test splits with `imagebind_tiny` (image, audio, text).

    Idempotent: existing stores are reused. Returns {"data": dir, "train": store, "test": store}.
    """
    root = Path(root) if root is not None else cache_dir() / "demo"
    suffix = "" if per_class is None else f"-{per_class}"
    data_dir = root / f"av-digits{suffix}"
    manifests = build_av_digits(data_dir, per_class=per_class)
    result = {"data": data_dir}
    for split in ("train", "test"):
        store = root / f"stores{suffix}" / f"av-digits-{split}"
        if not (store / INDEX_FILE).exists():
            log(f"embedding av-digits {split} with {DEMO_MODEL} -> {store}")
            embed_manifest(manifests[split], DEMO_MODALITIES, store, model=DEMO_MODEL, resume=True)
        result[split] = store
    return result


def default_store(split: str = "train") -> Path:
    """The store a command uses when none is named: `$IBDC_STORE`, else the demo store (built on first use)."""
    if os.environ.get(STORE_ENV) and split == "train":
        path = Path(os.environ[STORE_ENV])
        log(f"using store {path} (from ${STORE_ENV})")
        return path
    root = cache_dir() / "demo"
    path = root / "stores" / f"av-digits-{split}"
    why = f"no store named and ${STORE_ENV} unset" if split == "train" else "no --test store named"
    if (path / INDEX_FILE).exists():
        log(f"using the built-in demo store {path} (av-digits, {DEMO_MODEL}): {why}")
        return path
    log(
        f"{why}: building the built-in demo store (av-digits: espeak-ng speech and scikit-learn digits, embedded "
        f"with {DEMO_MODEL}) in {root}; this takes a few minutes, once. Name a store, or set ${STORE_ENV}, to skip it"
    )
    return ensure_demo_stores()[split]


def run_demo(
    root: Path | None = None,
    *,
    per_class: int | None = None,
    dpc: int = 10,
    seeds: int = 3,
    iterations: int | None = None,
) -> dict:
    """The whole workflow on av-digits: stores, then `imagebinddc` and `random` at `dpc` (audio + image),
    each evaluated with the linear protocol against the whole training data, and a picture of the
    ImageBindDC set against the real rows (`ibdc inspect --plot`). Reuses finished sets and stores.

    Returns the stores, `results` (per method: the evaluation, `synthetic_set`, `rows`, `condense_seconds`),
    `train_rows`, `plot` (the PNG) and its `projection`.
    """
    from ibdc_cli.condense import CondenseConfig, condense
    from ibdc_cli.evaluation import evaluate
    from ibdc_cli.store import open_store
    from ibdc_cli.synthetic_set import SyntheticSet
    from ibdc_cli.visualize import plot_synthetic_set

    root = Path(root) if root is not None else cache_dir() / "demo"
    paths = ensure_demo_stores(root, per_class=per_class)
    results: dict = {}
    whole = None
    for method in DEMO_METHODS:
        out = root / f"{method}-dpc{dpc}.safetensors"
        config = CondenseConfig(modalities=list(DEMO_CONDENSED), dpc=dpc, method=method)
        if iterations is not None:
            config.iterations = iterations
        if not out.exists():
            log(f"condensing with {method} at DPC {dpc} -> {out}")
            condense(paths["train"], out, config, resume=True)
        # From the file, so a reused set reports the time it took when it was made.
        synthetic = SyntheticSet.load(out)
        log(f"evaluating {out.name} (linear heads, {seeds} seeds)")
        result = evaluate(out, paths["test"], seeds=seeds, train_store=None if whole else paths["train"])
        whole = whole or {k: result[k] for k in ("whole_mean", "whole_std", "whole_runs")}
        result.update(whole, ratio=result["mean"] / whole["whole_mean"] if whole["whole_mean"] else None)
        results[method] = {
            "synthetic_set": out,
            "rows": int(synthetic.labels.numel()),
            "condense_seconds": synthetic.metadata.get("wall_time_s"),
            **result,
        }
    plot = root / f"{DEMO_METHODS[0]}-dpc{dpc}.png"
    log(f"drawing {results[DEMO_METHODS[0]]['synthetic_set'].name} against the real rows -> {plot}")
    plot_synthetic_set(results[DEMO_METHODS[0]]["synthetic_set"], plot, projection=DEMO_PROJECTION, overwrite=True)
    train_rows = open_store(paths["train"]).num_rows
    return {**paths, "train_rows": train_rows, "results": results, "plot": plot, "projection": DEMO_PROJECTION}
