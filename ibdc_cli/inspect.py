"""Recipe: describe a synthetic set or an embedding store, and optionally draw or export it (`ibdc inspect`).

A path that is a directory (or not a .safetensors file) is a store, anything else a synthetic set. The
description is `report.describe_store` / `report.describe_synthetic`; `plot` adds a PNG
(`visualize.plot_store` / `visualize.plot_synthetic_set`) and `export` writes a set's rows as files
(`export.export_synthetic_set`) or as a Hugging Face dataset / Parquet table (`export_hf.export_table`,
`export_format`), each adding its summary to the returned dict.

Example::

    info = inspect_path("syn.safetensors", plot="syn.png", projection="pca")
    info["kind"], info["plot"]["panels"]     # "synthetic", ["audio", "image", "loss"] (a set of audio+image)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ibdc_cli import report
from ibdc_cli.errors import IbdcError

EXPORT_FORMATS = ("files", "hf", "parquet")
"""`--format` of `--export`: loose files (export.py), a Hugging Face dataset or a Parquet table (export_hf.py)."""


def inspect_path(
    path: str | Path,
    *,
    plot: str | Path | None = None,
    export: str | Path | None = None,
    export_format: str = "files",
    real: str | Path | None = None,
    projection: str | None = None,
    per_class: int | None = None,
    checkpoint: str | Path | None = None,
    overwrite: bool = False,
    map_embeddings: str | Path | None = None,
    modality: str | None = None,
    map_out: str | Path | None = None,
) -> dict[str, Any]:
    """What `ibdc inspect PATH` shows, as a JSON-ready dict, after writing the `plot` PNG and the `export`
    directory when they are given.

    `real` (the store drawn against a set, default its recorded source store), `projection`, `per_class`
    (real rows per class) and `checkpoint` (the set's encoder weights, for input-space rows) shape the plot;
    None leaves `projection` and `per_class` at the plot's own defaults. `overwrite` replaces an existing
    `plot` file or `export` directory. `export_format` is one of `EXPORT_FORMATS`. `map_embeddings` (an
    `[N, D]` .npy file of the set's encoder's `modality` embeddings) is written to `map_out` mapped into
    the set's space (`map_embeddings_file`).
    """
    path = Path(path)
    is_store = path.is_dir() or path.suffix != ".safetensors"
    info = report.describe_store(path) if is_store else report.describe_synthetic(path)
    if export_format not in EXPORT_FORMATS:
        raise IbdcError(f"--format {export_format!r} is not one of: {', '.join(EXPORT_FORMATS)}")
    mapping = (map_embeddings, modality, map_out)
    if any(v is not None for v in mapping) and (None in mapping or is_store):
        raise IbdcError("--map-embeddings IN.npy needs --modality and --out OUT.npy, and a synthetic set")
    if export is not None and is_store:
        raise IbdcError(f"--export writes the rows of a synthetic set; {path} is an embedding store")
    if real is not None and (is_store or plot is None):
        raise IbdcError("--real names the real store drawn with a synthetic set's --plot")
    if plot is not None:
        from ibdc_cli import visualize

        options = {"projection": projection, "per_class": per_class}
        options = {key: value for key, value in options.items() if value is not None}
        if is_store:
            info["plot"] = visualize.plot_store(path, plot, overwrite=overwrite, **options)
        else:
            info["plot"] = visualize.plot_synthetic_set(
                path, plot, real=real, checkpoint=checkpoint, overwrite=overwrite, **options
            )
    if export is not None and export_format == "files":
        from ibdc_cli.export import export_synthetic_set

        info["export"] = export_synthetic_set(path, export, overwrite=overwrite)
    elif export is not None:
        from ibdc_cli.export_hf import export_table

        info["export"] = export_table(path, export, format=export_format, overwrite=overwrite)
    if map_embeddings is not None:
        info["mapped"] = map_embeddings_file(path, map_embeddings, modality, map_out, overwrite=overwrite)
    return info


def map_embeddings_file(
    path: str | Path, source: str | Path, modality: str, out: str | Path, *, overwrite: bool = False
) -> dict[str, Any]:
    """Map the `[N, D]` embeddings in the .npy file `source` into the space of the set `path`
    (`SyntheticSet.map`) and write them as float32 to the .npy file `out` (temp file + rename)."""
    import numpy as np
    import torch

    from ibdc_cli.synthetic_set import SyntheticSet

    source, out = Path(source), Path(out)
    synthetic = SyntheticSet.load(path)
    if out.exists() and not overwrite:
        raise IbdcError(f"--out {out} exists; choose another file or pass --overwrite")
    try:
        x = np.load(source, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IbdcError(f"--map-embeddings {source} is not a readable .npy array: {exc}") from None
    if not np.issubdtype(x.dtype, np.floating):
        raise IbdcError(f"--map-embeddings {source} holds {x.dtype}; embeddings are floating point")
    mapped = synthetic.map(modality, torch.from_numpy(np.ascontiguousarray(x))).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npy")
    try:
        np.save(tmp, mapped)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"out": str(out), "modality": modality, "rows": int(mapped.shape[0]), "dim": int(mapped.shape[1])}
