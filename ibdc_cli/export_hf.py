"""Exports for `ibdc inspect SET --export DIR --format hf|parquet`: a synthetic set as one table.

One row per synthetic example; the columns:

    label          ClassLabel with the set's class names
    <m>            embedding-space rows [D] float32, as stored: in the set's mapped space (ibdc_cli/space.py)
    <m>_encoder    the same rows mapped back into the encoder's own space (`SyntheticSet.encoder_rows`;
                   null where no encoder-space row maps to the stored one, see `SpaceMap.invert`)
    image          input-space images as `Image()` (PNG, ImageBind's CLIP normalisation undone; export.py)
    audio          input-space fbanks as `Audio()` (16 kHz WAV, the approximate inverse of export.py)
    depth, thermal input-space maps as grey `Image()` (PNG)

`hf` saves the table with `Dataset.save_to_disk(DIR)` (`datasets.load_from_disk(DIR)` reads it),
`parquet` as DIR/train.parquet (with the features in its schema, so `datasets` restores them). Both add
DIR/ibdc.json (method, dpc, encoder, space map, the columns, and the set's whole metadata; its summary is
also the dataset's `info.description`) and, for sets with a space map, DIR/space_maps.safetensors
(`center.<m>` [D], `whiten.<m>` [D, D]), so that `load_export(DIR)` gives back the set itself.

`datasets` is imported here, on first use: `ibdc --help` and every other command run without it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from PIL import Image

from ibdc_cli.data.preprocess import AUDIO_SAMPLE_RATE
from ibdc_cli.errors import IbdcError
from ibdc_cli.export import _file_stem, denormalise_fbank, fbanks_to_wav, image_array, write_directory
from ibdc_cli.store import atomic_save_tensors, read_tensors
from ibdc_cli.synthetic_set import SyntheticSet
from ibdc_cli.version import __version__

TABLE_FORMATS = ("hf", "parquet")
EXPORT_FORMAT = "ibdc-export"
EXPORT_VERSION = 1
SIDECAR = "ibdc.json"
SPACE_MAPS_FILE = "space_maps.safetensors"
PARQUET_FILE = "train.parquet"
ENCODER_SUFFIX = "_encoder"


def export_table(path: str | Path, out: str | Path, *, format: str = "hf", overwrite: bool = False) -> dict[str, Any]:
    """Write the synthetic set `path` as a Hugging Face dataset (`format="hf"`) or a Parquet file
    (`"parquet"`) into the new directory `out`, atomically (`export.write_directory`).

    Returns a JSON-ready summary: `export`, `format`, `rows`, `columns`, `files`, `modalities` and
    `encoder_rows_missing` (`{m: rows whose <m>_encoder is null}`).
    """
    if format not in TABLE_FORMATS:
        raise IbdcError(f"--format {format!r} is not a table format ({', '.join(TABLE_FORMATS)})")
    synthetic = SyntheticSet.load(path)
    dataset, sidecar = synthetic_dataset(synthetic)

    def write(work: Path) -> list[str]:
        with _quiet_datasets():
            if format == "hf":
                dataset.save_to_disk(str(work))
            else:
                dataset.to_parquet(str(work / PARQUET_FILE))
        maps = {
            name: t.contiguous() for name, t in synthetic.tensors.items() if name.split(".")[0] in ("center", "whiten")
        }
        if maps:
            atomic_save_tensors(work / SPACE_MAPS_FILE, maps)
        (work / SIDECAR).write_text(json.dumps({**sidecar, "export_format": format}, indent=2) + "\n")
        return sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())

    files = write_directory(out, write, overwrite=overwrite)
    return {
        "export": str(out),
        "format": format,
        "rows": dataset.num_rows,
        "columns": list(dataset.column_names),
        "files": len(files),
        "modalities": synthetic.modalities,
        "encoder_rows_missing": sidecar["encoder_rows_missing"],
    }


def synthetic_dataset(synthetic: SyntheticSet):
    """The set as a `datasets.Dataset` (columns: see the module docstring) and the JSON sidecar dict."""
    import datasets
    import pyarrow as pa

    labels = synthetic.labels.long()
    class_names = synthetic.class_names
    names = [class_names[i] if i < len(class_names) else str(i) for i in labels.tolist()]
    inputs = synthetic.input_modalities()
    features: dict[str, Any] = {"label": datasets.ClassLabel(names=class_names)}
    columns: dict[str, pa.Array] = {"label": pa.array(labels.numpy(), pa.int64())}
    described = {"label": "class id (ClassLabel with the set's class names)"}
    missing: dict[str, int] = {}
    norms: dict[str, float] = {}
    for m in synthetic.modalities:
        taken = {m, f"{m}{ENCODER_SUFFIX}"} & set(columns)
        if taken:
            raise IbdcError(f"{synthetic.path}: modality {m!r} would overwrite the column {sorted(taken)[0]!r}")
        values = synthetic.tensors[m].float()
        if m not in inputs:
            dim = values.shape[1]
            x, found = synthetic.encoder_rows(m)
            vector = datasets.List(datasets.Value("float32"), length=dim)
            features[m] = features[f"{m}{ENCODER_SUFFIX}"] = vector
            columns[m] = _vectors(values.numpy(), dim)
            columns[f"{m}{ENCODER_SUFFIX}"] = _vectors(x.numpy(), dim, mask=~found.numpy())
            missing[m], norms[m] = int((~found).sum()), synthetic.encoder_norm(m)
            described[m] = f"[{dim}] float32 rows as stored, in the set's mapped space ({_map_kind(synthetic, m)})"
            described[f"{m}{ENCODER_SUFFIX}"] = (
                f"[{dim}] float32 rows mapped back into the encoder's space (norm {norms[m]:.6g}; null where none maps "
                "to the stored row)"
            )
        elif m == "audio":
            features[m] = datasets.Audio(sampling_rate=AUDIO_SAMPLE_RATE)
            columns[m] = _media(
                [_wav_bytes(fbank) for fbank in values], [_file_stem(i, n) + ".wav" for i, n in enumerate(names)]
            )
            described[m] = "16 kHz WAV turned back from the fbanks (approximate: export.fbank_to_waveform)"
        else:
            features[m] = datasets.Image()
            columns[m] = _media(
                [_png_bytes(image_array(m, x)) for x in values],
                [_file_stem(i, n) + ".png" for i, n in enumerate(names)],
            )
            described[m] = "PNG of the model input" + (" (CLIP normalisation undone)" if m == "image" else ", grey")
    sidecar = _sidecar(synthetic, described, missing, norms)
    summary = {k: v for k, v in sidecar.items() if k != "set_metadata"}
    features = datasets.Features(features)
    table = pa.table(columns).cast(features.arrow_schema)
    info = datasets.DatasetInfo(description=json.dumps(summary), features=features)
    return datasets.Dataset(datasets.table.InMemoryTable(table), info=info), sidecar


def load_export(out: str | Path) -> SyntheticSet:
    """The synthetic set an `hf` or `parquet` export of an embedding-space set holds: the `<m>` columns
    as its `[M, D]` rows, `label` as its labels, the space maps and the set's metadata. Training heads on
    it is training them on the exported set (tests/test_export_hf.py). Input-space modalities are not
    rebuilt (their PNG / WAV columns are for looking and listening; the set's file has the tensors)."""
    import datasets

    out = Path(out)
    try:
        sidecar = json.loads((out / SIDECAR).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IbdcError(f"{out} is not an ibdc export ({SIDECAR}: {exc})") from None
    if sidecar.get("format") != EXPORT_FORMAT:
        raise IbdcError(f"{out}/{SIDECAR} is not an ibdc export (format {sidecar.get('format')!r})")
    metadata = sidecar["set_metadata"]
    inputs = [m for m in metadata["modalities"] if metadata.get("tensor_spaces", {}).get(m) == "input"]
    if inputs:
        raise IbdcError(f"{out}: its {inputs[0]!r} column is media, not the set's model inputs; use the set's file")
    if sidecar.get("export_format") == "parquet":  # read by pyarrow: `Dataset.from_parquet` writes a cache
        import pyarrow.parquet

        dataset = datasets.Dataset(datasets.table.InMemoryTable(pyarrow.parquet.read_table(out / PARQUET_FILE)))
    else:
        dataset = datasets.load_from_disk(str(out))
    table = dataset.with_format("numpy")
    tensors = {m: torch.from_numpy(np.asarray(table[m], dtype=np.float32)) for m in metadata["modalities"]}
    tensors["labels"] = torch.from_numpy(np.asarray(table["label"], dtype=np.int64))
    if (out / SPACE_MAPS_FILE).is_file():
        tensors.update(read_tensors(out / SPACE_MAPS_FILE, "space maps")[0])
    return SyntheticSet(out, tensors, metadata)


# ----------------------------------------------------------------------------------------------------


def _sidecar(synthetic: SyntheticSet, columns: dict[str, str], missing: dict[str, int], norms: dict[str, float]):
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "ibdc_version": __version__,
        "source": str(synthetic.path),
        "kind": synthetic.metadata.get("kind"),
        "method": synthetic.method,
        "dpc": synthetic.dpc,
        "modalities": synthetic.modalities,
        "tensor_spaces": synthetic.tensor_spaces,
        "class_names": synthetic.class_names,
        "encoder": synthetic.encoder,
        "space_map": synthetic.settings.get("space_map"),
        "space_maps": {m: _map_kind(synthetic, m) for m in synthetic.modalities},
        "encoder_norm": norms,
        "encoder_rows_missing": missing,
        "columns": columns,
        "set_metadata": synthetic.metadata,
    }


def _map_kind(synthetic: SyntheticSet, modality: str) -> str:
    space_map = synthetic.space_maps.get(modality)
    return "none" if space_map is None else "center" if space_map.whitening is None else "whiten"


def _vectors(values: np.ndarray, dim: int, mask: np.ndarray | None = None):
    """`[M, D]` float32 as an Arrow fixed-size list column; rows where `mask` is True are null."""
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    nulls = pa.array(mask) if mask is not None and mask.any() else None
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=nulls)


def _media(blobs: list[bytes], paths: list[str]):
    """The `{bytes, path}` struct column that `datasets`' Image() and Audio() features store. Written here
    (PNG by PIL, WAV by soundfile) rather than by their `encode_example`: Audio's needs torchcodec."""
    import pyarrow as pa

    return pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array(paths, pa.string())], ["bytes", "path"])


def _png_bytes(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav_bytes(fbank: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, fbanks_to_wav(denormalise_fbank(fbank)).numpy(), AUDIO_SAMPLE_RATE, format="WAV")
    return buffer.getvalue()


class _quiet_datasets:
    """No `datasets` progress bars while ibdc writes or reads (ibdc logs on its own terms); restored after."""

    def __enter__(self):
        import datasets

        self._was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()

    def __exit__(self, *exc):
        import datasets

        if self._was_enabled:
            datasets.enable_progress_bars()
