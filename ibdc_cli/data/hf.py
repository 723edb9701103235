"""Hugging Face datasets as rows to embed (`ibdc embed hf:PATH_OR_NAME`, SPEC §8).

`hf:` names one of:

    hf:data/ds                 a folder written by `save_to_disk` (a Dataset, or a DatasetDict: --split)
    hf:data/*.parquet          Parquet files (a glob, one file, or a folder of *.parquet): the split --split
    hf:user/name               anything else: `datasets.load_dataset(name, split=...)` (the Hub; needs a network)

The columns: `--image-column`, `--audio-column`, `--text-column`, `--depth-column`, `--thermal-column`
(default: the column named after the modality) and `--label-column` (default `label` when the dataset has
one; else the store has no labels). `Image` and `Audio` cells are read as their encoded bytes (or their
file, by path) and decoded by ibdc's own decoders (`preprocess.load_image`, `load_audio`), so a file
gives the same tensor through `hf:` as through a manifest; a cell that is a decoded waveform
(`{"array", "sampling_rate"}`) goes through `preprocess.waveform_input`. A string cell of a media column
is a file path (relative to the dataset's folder). Labels: a `ClassLabel` row is its name, an integer
its number, a string itself; then the manifest's label rules make the class ids (docs/formats.md), so a
`ClassLabel` dataset and a CSV of the same names give the same store.

`datasets` is imported here only, when an `hf:` input is read.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ibdc_cli.data.manifest import Manifest, label_ids
from ibdc_cli.data.preprocess import MediaError, load_audio, load_image, load_map, load_text, waveform_input
from ibdc_cli.errors import IbdcError
from ibdc_cli.store import file_sha256

PREFIX = "hf:"


@dataclass
class HfSource(Manifest):
    """A Hugging Face dataset's rows, read as a manifest's: `rows` is a lazy sequence, cells are checked from
    the Arrow columns (no decoding) and decoded one row at a time."""

    dataset: Any = None  # datasets.Dataset, media columns cast to decode=False
    column_of: dict[str, str] = field(default_factory=dict)  # modality -> column
    present: dict[str, list[bool]] = field(default_factory=dict)  # modality -> [N] non-empty cell
    folder: Path = Path(".")  # where relative paths of media cells are read from
    source: dict[str, Any] = field(default_factory=dict)  # what the store records

    @property
    def base_dir(self) -> Path:
        return self.folder

    def has(self, row: int, modality: str) -> bool:
        return modality in self.present and self.present[modality][row]

    def check_row(self, row: int, modalities: list[str]) -> None:
        for modality in modalities:
            if not self.has(row, modality):
                raise MediaError(f"row {row}: empty {modality!r} cell (column {self.column_of[modality]!r})")

    def model_input(self, row: int, modality: str):
        column = self.column_of[modality]
        cell = self.dataset[row][column]
        name = f"column {column!r}"
        if modality == "text":
            return load_text(cell)
        if isinstance(cell, str):
            path = Path(cell) if Path(cell).is_absolute() else self.folder / cell
            return _media(modality, path, None)
        if isinstance(cell, dict) and cell.get("array") is not None and modality == "audio":
            return waveform_input(cell["array"], cell.get("sampling_rate"), name)
        if isinstance(cell, dict) and (cell.get("bytes") or cell.get("path")):
            where = Path(cell.get("path") or name)
            if cell.get("bytes"):
                return _media(modality, where, cell["bytes"])
            return _media(modality, where if where.is_absolute() else self.folder / where, None)
        if isinstance(cell, (bytes, bytearray)):
            return _media(modality, Path(name), bytes(cell))
        raise MediaError(f"{name} holds a {type(cell).__name__}, not {modality} bytes, a path or a waveform")

    def record(self) -> dict:
        return {**self.source, "sha256": self.sha256, "rows": len(self.rows)}


def _media(modality: str, path: Path, data: bytes | None):
    if modality == "image":
        return load_image(path, data)
    if modality == "audio":
        return load_audio(path, data)
    return load_map(path, data)


class _LazyRows:
    """`len()` and `[i]` of a dataset's rows (`{modality: cell}` when asked for, never all at once)."""

    def __init__(self, source: HfSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source.dataset)

    def __getitem__(self, i: int) -> dict:
        row = self.source.dataset[i]
        return {m: row[c] for m, c in self.source.column_of.items()}


def is_hf(spec: str) -> bool:
    return str(spec).startswith(PREFIX)


def read_hf(
    spec: str, modalities: list[str], *, split: str | None = None, columns: dict[str, str | None] | None = None
) -> HfSource:
    """The rows of the `hf:` input `spec` (module docstring) with `modalities` read from `columns`
    (`{modality or "label": column}`, None for the default) and labels from `columns["label"]`."""
    columns = columns or {}
    target = spec[len(PREFIX) :]
    if not target:
        raise IbdcError("hf: needs a dataset: hf:FOLDER (save_to_disk), hf:FILES.parquet or hf:HUB/NAME")
    datasets = _datasets()
    dataset, kind, folder, fingerprint, path = _open(datasets, target, split)
    names = list(dataset.column_names)
    column_of = {}
    for modality in modalities:
        column = columns.get(modality) or modality
        if column not in names:
            flag = f"--{modality}-column"
            raise IbdcError(f"{spec}: no column {column!r} for {modality} (columns: {', '.join(names)}); pass {flag}")
        column_of[modality] = column
    label_column = columns.get("label")
    if label_column is not None and label_column not in names:
        raise IbdcError(f"{spec}: no column {label_column!r} for --label-column (columns: {', '.join(names)})")
    if label_column is None and "label" in names:
        label_column = "label"
    wanted = [*column_of.values(), *([label_column] if label_column else [])]
    dataset = dataset.select_columns(list(dict.fromkeys(wanted)))
    dataset = _undecoded(datasets, dataset)
    where = Path(spec)
    if label_column is not None:
        class_names, labels = label_ids(_label_texts(dataset, label_column, where), where)
    else:
        class_names, labels = [], [-1] * len(dataset)
    source = {
        "kind": "hf",
        "path": path,
        "split": split_name(dataset, split),
        "fingerprint": fingerprint,
        "columns": {**column_of, **({"label": label_column} if label_column else {})},
        "format": kind,
    }
    result = HfSource(
        path=where,
        rows=[],
        columns=[*column_of, *(["label"] if label_column else [])],
        sha256=fingerprint,
        class_names=class_names,
        labels=labels,
        dataset=dataset,
        column_of=column_of,
        present={m: _present(dataset, c, m) for m, c in column_of.items()},
        folder=folder,
        source=source,
    )
    result.rows = _LazyRows(result)
    if not len(dataset):
        raise IbdcError(f"{spec}: the dataset has no rows")
    return result


def split_name(dataset, split: str | None) -> str | None:
    return split if split is not None else (str(dataset.split) if getattr(dataset, "split", None) else None)


def _datasets():
    try:
        import datasets
    except ImportError:
        raise IbdcError("hf: inputs need the `datasets` package: pip install 'ibdc[hf]'") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def _open(datasets, target: str, split: str | None):
    """(Dataset, format, folder of relative paths, fingerprint, recorded path) of an `hf:` target."""
    local = Path(target)
    if local.is_dir() and ((local / "state.json").is_file() or (local / "dataset_dict.json").is_file()):
        loaded = datasets.load_from_disk(str(local))
        dataset = _pick_split(loaded, split, f"hf:{target}")
        return dataset, "save_to_disk", local.resolve(), dataset._fingerprint, str(local.resolve())
    files = _parquet_files(target)
    if files:
        name = split or "train"
        dataset = datasets.load_dataset("parquet", data_files={name: files}, split=name)
        digest = hashlib.sha256()
        for file in files:
            digest.update(file_sha256(Path(file)).encode())
        recorded = str(local.resolve()) if local.is_dir() else os.path.abspath(target)
        folder = (local if local.is_dir() else Path(files[0]).parent).resolve()
        return dataset, "parquet", folder, digest.hexdigest(), recorded
    hub_name = target.count("/") <= 1 and not target.startswith((".", "/", "~")) and not target.endswith("/")
    if local.exists() or any(ch in target for ch in "*?[") or not hub_name:
        raise IbdcError(
            f"hf:{target}: not a dataset saved with save_to_disk (no state.json or dataset_dict.json), no "
            "Parquet files, and not a Hub name (NAME or OWNER/NAME)"
        )
    try:
        loaded = datasets.load_dataset(target, split=split)
    except Exception as exc:  # no network, no such dataset, a private one: the library says which
        raise IbdcError(f"hf:{target}: cannot load it with datasets.load_dataset: {exc}") from None
    dataset = _pick_split(loaded, split, f"hf:{target}")
    return dataset, "hub", Path.cwd(), dataset._fingerprint, target


def _parquet_files(target: str) -> list[str]:
    local = Path(target)
    if local.is_dir():
        return sorted(str(p) for p in local.glob("*.parquet"))
    if local.is_file() and local.suffix == ".parquet":
        return [str(local)]
    if target.endswith(".parquet") and any(ch in target for ch in "*?["):
        return sorted(glob.glob(target))
    return []


def _pick_split(loaded, split: str | None, where: str):
    if not hasattr(loaded, "keys"):  # a Dataset
        if split is not None and getattr(loaded, "split", None) not in (None, split):
            raise IbdcError(f"{where} is the split {loaded.split!r}, not --split {split}")
        return loaded
    splits = list(loaded.keys())
    if split is None:
        if len(splits) == 1:
            return loaded[splits[0]]
        if "train" in splits:
            return loaded["train"]
        raise IbdcError(f"{where} has splits {', '.join(splits)}; choose one with --split")
    if split not in splits:
        raise IbdcError(f"{where} has no split {split!r} (splits: {', '.join(splits)})")
    return loaded[split]


def _undecoded(datasets, dataset):
    """`dataset` with its Image and Audio columns cast to decode=False: ibdc decodes their bytes itself."""
    for name, feature in dataset.features.items():
        if isinstance(feature, (datasets.Image, datasets.Audio)) and feature.decode:
            dataset = dataset.cast_column(name, type(feature)(decode=False))
    return dataset


def _present(dataset, column: str, modality: str) -> list[bool]:
    """[N] whether each row's cell is non-empty, read from the Arrow column (no media decoded)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    data = dataset.with_format("arrow")[column]
    data = data.combine_chunks() if isinstance(data, pa.ChunkedArray) else data
    if pa.types.is_struct(data.type):
        names = [data.type.field(i).name for i in range(data.type.num_fields)]
        parts = [pc.is_valid(data.field(n)) for n in ("bytes", "path", "array") if n in names]
        mask = pc.and_(pc.is_valid(data), _any(parts)) if parts else pc.is_valid(data)
    elif pa.types.is_string(data.type) or pa.types.is_large_string(data.type):
        mask = pc.and_(pc.is_valid(data), pc.not_equal(pc.utf8_trim_whitespace(data), ""))
    else:
        mask = pc.is_valid(data)
    return [bool(v) for v in pc.fill_null(mask, False).to_pylist()]


def _any(parts):
    import pyarrow.compute as pc

    mask = parts[0]
    for part in parts[1:]:
        mask = pc.or_(mask, part)
    return mask


def _label_texts(dataset, column: str, where: Path) -> list[str]:
    """Each row's label as text (a ClassLabel's name, an integer's number, a string stripped)."""
    feature = dataset.features[column]
    values = dataset[column]
    names = getattr(feature, "names", None)
    texts = []
    for row, value in enumerate(values):
        if value is None or (names is not None and value < 0) or (isinstance(value, str) and not value.strip()):
            raise IbdcError(f"{where}: row {row} has no label (column {column!r})")
        if names is not None:
            texts.append(str(names[value]).strip())
        elif isinstance(value, float) and value.is_integer():
            texts.append(str(int(value)))
        else:
            texts.append(str(value).strip())
    return texts
