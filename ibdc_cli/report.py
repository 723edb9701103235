"""Tables and summaries for people (rich, on stdout) and the same facts as plain dicts for `--json`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ibdc_cli.store import open_store

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
