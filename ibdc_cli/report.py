"""Tables and summaries for people (rich, on stdout) and the same facts as plain dicts for `--json`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ibdc_cli.store import open_store
from ibdc_cli.synthetic_set import SyntheticSet

stdout = Console(highlight=False, soft_wrap=True)


def describe_store(path: str | Path) -> dict[str, Any]:
    """What `ibdc inspect STORE` shows, as a JSON-ready dict (shards are checked to exist)."""
    store = open_store(path)
    index = store.index
    return {
        "kind": "store",
        "path": str(store.path),
        "format_version": index["format_version"],
        "ibdc_version": index.get("ibdc_version"),
        "rows": store.num_rows,
        "modalities": store.modalities,
        "dtype": "float32",
        "unit_normalized": bool(index["encoder"].get("normalized", True)),
        "class_names": store.class_names,
        "rows_per_class": index.get("rows_per_class", {}),
        "encoder": store.encoder,
        "precision": index.get("precision"),
        "preprocessing": index.get("preprocessing", {}),
        "manifest": index.get("manifest", {}),
        "skipped_rows": len(index.get("skipped", [])),
        "shards": len(index["shards"]),
        "fingerprint": store.fingerprint(),
        "created": index.get("created"),
    }


def print_store(info: dict[str, Any]) -> None:
    encoder = info["encoder"]
    weights = encoder.get("weights")
    weights = f"random-init (seed {encoder.get('seed')})" if weights == "random-init" else f"checkpoint {weights[:12]}…"
    stdout.print(f"[bold]embedding store[/] {info['path']}")
    stdout.print(f"  rows         {info['rows']}  ({info['skipped_rows']} skipped while embedding)")
    dims = ", ".join(f"{m} [{info['rows']}, {d}]" for m, d in info["modalities"].items())
    stdout.print(f"  modalities   {dims}  {info['dtype']}, unit-normalised")
    stdout.print(f"  encoder      {encoder['preset']} (out dim {encoder['out_dim']}), {weights}, {info['precision']}")
    manifest = info["manifest"]
    stdout.print(f"  manifest     {manifest.get('path')}  sha256 {str(manifest.get('sha256'))[:12]}…")
    stdout.print(f"  fingerprint  {info['fingerprint'][:16]}…  ibdc {info['ibdc_version']}, {info['created']}")
    if info["class_names"]:
        table = Table(title="rows per class", show_edge=False)
        table.add_column("id", justify="right")
        table.add_column("class")
        table.add_column("rows", justify="right")
        for i, name in enumerate(info["class_names"]):
            table.add_row(str(i), name, str(info["rows_per_class"].get(name, 0)))
        stdout.print(table)
    else:
        stdout.print("  labels       none (paired data without classes)")
    for modality, params in info["preprocessing"].items():
        text = ", ".join(f"{k}={v}" for k, v in params.items())
        stdout.print(f"  [dim]{modality}: {text}[/]")


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """A one-line picture of a curve: `values` resampled to `width` bars between their min and max."""
    if not values:
        return ""
    step = max(1, len(values) // width)
    points = [sum(values[i : i + step]) / len(values[i : i + step]) for i in range(0, len(values), step)][:width]
    low, high = min(points), max(points)
    span = (high - low) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - low) / span * (len(SPARK) - 1) + 0.5))] for v in points)


def describe_synthetic(path: str | Path) -> dict[str, Any]:
    """What `ibdc inspect FILE` shows for a synthetic set or selection, as a JSON-ready dict."""
    synthetic = SyntheticSet.load(path)
    tensors, meta = synthetic.tensors, synthetic.metadata
    history = meta.get("loss_history", {})
    statistics = {
        m: space_map.center.numel() + (0 if space_map.whitening is None else space_map.whitening.numel())
        for m, space_map in synthetic.space_maps.items()
    }
    return {
        "kind": meta.get("kind"),
        "path": str(path),
        "format_version": meta.get("format_version"),
        "ibdc_version": meta.get("ibdc_version"),
        "method": synthetic.method,
        "space": meta.get("space"),
        "modalities": synthetic.modalities,
        "tensors": {
            name: {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")} for name, t in tensors.items()
        },
        "dpc": synthetic.dpc,
        "rows": int(synthetic.labels.numel()),
        # what the set carries besides its rows: the space map is a statistic of the whole training store
        "numbers": {
            "rows": sum(tensors[m].numel() for m in synthetic.modalities),
            "statistics": sum(statistics.values()),
            "statistics_by_modality": statistics,
        },
        "rows_per_class": meta.get("rows_per_class", {}),
        "class_names": synthetic.class_names,
        "encoder": synthetic.encoder,
        "settings": synthetic.settings,
        "space_map": meta.get("space_map", "none"),
        "iterations": meta.get("iterations"),
        "final_loss": meta.get("final_loss"),
        "loss_history": history,
        "wall_time_s": meta.get("wall_time_s"),
        "peak_memory_mib": meta.get("peak_memory_mib"),
        "source_store": meta.get("source_store", {}),
        "command": meta.get("command"),
        "created": meta.get("created"),
    }


def print_synthetic(info: dict[str, Any]) -> None:
    encoder = info["encoder"]
    weights = encoder.get("weights", "")
    weights = f"random-init (seed {encoder.get('seed')})" if weights == "random-init" else f"checkpoint {weights[:12]}…"
    stdout.print(f"[bold]{info['kind']} set[/] {info['path']}")
    stdout.print(
        f"  method       {info['method']}, {info['space']} space, DPC {info['dpc']}, {info['rows']} rows"
        f", space map {info['space_map']}"
    )
    for name, tensor in info["tensors"].items():
        stdout.print(f"  tensor       {name} {tensor['shape']} {tensor['dtype']}")
    numbers = info["numbers"]
    stdout.print(
        f"  numbers      {numbers['rows']:,} in the {info['rows']} rows + {numbers['statistics']:,} of whole-training-"
        f"data statistics (space map {info['space_map']})"
    )
    if numbers["statistics"]:
        stdout.print(
            f"  [dim]budget: the set is its {info['rows']} rows and these statistics; against a budget of "
            f"{info['rows']} real rows, count them too or condense with --space-map none[/]"
        )
    stdout.print(f"  encoder      {encoder.get('preset')} (out dim {encoder.get('out_dim')}), {weights}")
    source = info["source_store"]
    stdout.print(f"  source store {source.get('path')}  fingerprint {str(source.get('fingerprint'))[:16]}…")
    stdout.print(
        f"  made         {info['created']} by ibdc {info['ibdc_version']} in {info['wall_time_s']} s, "
        f"peak {info['peak_memory_mib']} MiB"
    )
    for term, values in info["loss_history"].items():
        if values:
            stdout.print(f"  loss {term:<7} {sparkline(values)}  {values[0]:.4g} → {values[-1]:.4g}")
    settings = ", ".join(f"{k}={v}" for k, v in info["settings"].items() if k != "modalities")
    stdout.print(f"  [dim]settings: {settings}[/]")
    stdout.print(f"  reproduce    {info['command']}")


def print_demo(result: dict[str, Any]) -> None:
    """The demo's summary: where things are and a small results table a newcomer can read (80 columns)."""
    results = result["results"]
    first = next(iter(results.values()))
    stdout.print("av-digits: images of handwritten digits paired with spoken digit names, 10 classes")
    stdout.print(f"  media and manifests  {result['data']}")
    stdout.print(f"  embedding stores     {result['train']} ({result['train_rows']} rows)  {result['test']}")
    stdout.print(
        f"\nLinear heads on audio + image embeddings, trained on each row's data, tested on the "
        f"{first['test_rows']} real test rows; accuracy is the mean ± std over {len(first['runs'])} seeds."
    )
    table = Table()
    table.add_column(f"training data (DPC {first['dpc']})")
    table.add_column("rows", justify="right")
    table.add_column("accuracy %", justify="right")
    table.add_column("of whole", justify="right")
    table.add_column("condense", justify="right")
    for method, r in results.items():
        seconds = r.get("condense_seconds")
        table.add_row(
            _DEMO_ROWS.get(method, (method,))[0],
            str(r["rows"]),
            f"{r['mean']:.1f} ± {r['std']:.1f}",
            "–" if r.get("ratio") is None else f"{100 * r['ratio']:.0f} %",
            "–" if seconds is None else f"{seconds:.0f} s",
        )
    table.add_row(
        "whole training split",
        str(result["train_rows"]),
        f"{first['whole_mean']:.1f} ± {first['whole_std']:.1f}",
        "100 %",
        "–",
    )
    stdout.print(table)
    for method, r in results.items():
        label, meaning = _DEMO_ROWS.get(method, (method, f"made by `ibdc condense --method {method}`"))
        stdout.print(f"  {label:<22} {meaning.format(dpc=r['dpc'])}")
    stdout.print(f"  {'whole training split':<22} every real training row: the ceiling")
    stdout.print(f"  {'of whole':<22} accuracy / whole-data accuracy (chance is 10 %)")
    stdout.print(f"  {'condense':<22} wall time of `ibdc condense`")
    if result.get("plot"):
        stdout.print(
            f"\npicture: {result['plot']}\n  per modality: real rows as dots and synthetic rows as see-through "
            f"markers on top, coloured by class ({result.get('projection', 'pca')}), and the loss curves"
        )
    stdout.print(f"next: ibdc inspect {first['synthetic_set']}")


_DEMO_ROWS = {
    "imagebinddc": ("ImageBindDC synthetic", "{dpc} examples per class made by ImageBindDC (the method)"),
    "random": ("random real rows", "{dpc} real examples per class picked at random (the baseline)"),
}
