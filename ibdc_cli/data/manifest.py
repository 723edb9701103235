"""Manifests: CSV or JSONL, one row per example (SPEC §1).

Columns: one per modality (`image`, `audio`, `depth`, `thermal` hold paths relative to the manifest;
`text` holds the text), `label` (class name or integer), optional `id`. `vision` is an alias of `image`.
Rows are numbered from 0 in file order; that number is the `row` recorded in stores and in messages.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ibdc_cli.data.preprocess import MEDIA_SUFFIXES
from ibdc_cli.encoders.imagebind import MODALITIES
from ibdc_cli.errors import IbdcError

ALIASES = {"vision": "image"}
KNOWN_COLUMNS = set(MODALITIES) | {"label", "id"}


@dataclass
class Manifest:
    path: Path
    rows: list[dict[str, str]]  # column -> cell, aliases resolved
    columns: list[str]
    sha256: str
    class_names: list[str]  # label id -> name; empty when the manifest has no labels
    labels: list[int]  # per row; -1 when unlabeled

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def modalities(self) -> list[str]:
        return [c for c in self.columns if c in MODALITIES]

    def has(self, row: int, modality: str) -> bool:
        """Whether row `row` has a non-empty `modality` cell."""
        return bool(self.rows[row].get(modality))

    def check_row(self, row: int, modalities: list[str]) -> None:
        """Raise MediaError naming `row` unless each of its `modalities` cells is usable as far as can be told
        without decoding: present, of a known format and, for media, an existing file."""
        from ibdc_cli.data.preprocess import MediaError

        for modality in modalities:
            value = check_cell(self, row, modality)
            if modality != "text":
                path = Path(value) if Path(value).is_absolute() else self.base_dir / value
                if not path.is_file():
                    raise MediaError(f"row {row}: {modality} file not found: {path}")

    def model_input(self, row: int, modality: str):
        """The model input of row `row`'s `modality` cell (`preprocess.load`); MediaError when it cannot be read."""
        from ibdc_cli.data.preprocess import load

        return load(modality, self.rows[row][modality], self.base_dir)

    def record(self) -> dict:
        """What a store records of the rows it was made from (index.json "manifest")."""
        return {"path": str(self.path.resolve()), "sha256": self.sha256, "rows": len(self.rows)}


def parse_modalities(text: str | list[str]) -> list[str]:
    """`"audio,image"` -> `["audio", "image"]`, with aliases resolved and names checked."""
    names = text.split(",") if isinstance(text, str) else list(text)
    result: list[str] = []
    for raw in names:
        name = ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if not name:
            continue
        if name not in MODALITIES:
            raise IbdcError(f"unknown modality {raw.strip()!r} in --modalities; choose from {', '.join(MODALITIES)}")
        if name not in result:
            result.append(name)
    if not result:
        raise IbdcError("--modalities is empty; name at least one, e.g. --modalities image,audio")
    return result


def _read_records(path: Path) -> list[dict[str, str]]:
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        raise IbdcError(f"{path} is a Hugging Face dataset, not a manifest: name it hf:{path}")
    if not path.is_file():
        raise IbdcError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IbdcError(f"manifest {path} is not UTF-8 text: {exc}") from None
    if suffix in (".jsonl", ".ndjson"):
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise IbdcError(f"{path}: line {number} is not valid JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise IbdcError(f"{path}: line {number} is not a JSON object")
            bad = next((k for k, v in record.items() if isinstance(v, (dict, list))), None)
            if bad is not None:
                raise IbdcError(
                    f"{path}: line {number}: {bad!r} holds a JSON {type(record[bad]).__name__}, not a value"
                )
            records.append({str(k): _json_cell(v) for k, v in record.items()})
        return records
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        records = []
        for number, record in enumerate(reader, start=2):
            if None in record:
                raise IbdcError(f"{path}: line {number} has more cells than the header")
            records.append({k: (v or "") for k, v in record.items()})
        if reader.fieldnames is None:
            return []
        if not records:
            raise IbdcError(f"manifest {path} has a header but no rows")
        return records
    raise IbdcError(f"unsupported manifest format {path.suffix!r} ({path}); use .csv or .jsonl")


def _json_cell(value) -> str:
    """A JSONL cell as text: null is empty, an integral number is its integer (5 and 5.0 are both "5")."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)


def _as_number(label: str) -> float | None:
    try:
        return float(label)
    except ValueError:  # also "²" and "--5", which look numeric to str.isdigit
        return None


def _class_names(values: list[str], path: Path) -> list[str]:
    """Label id -> name (SPEC §1, docs/formats.md "Labels").

    A label is its cell's text, stripped. When every label is an integer, the classes are in numeric
    order and named by the integer (2 before 10; `007` is named `7`); otherwise the names are the labels
    as written, in text order. Row order never matters. Two spellings of one number (`1` and `01`, `5`
    and `5.0`) would silently make two classes of one, or one of two: such a manifest is refused,
    naming a row of each.
    """
    unique = set(values)
    by_number: dict[float, str] = {}
    for label in sorted(unique):
        number = _as_number(label)
        if number is None or number != number:  # not a number, or NaN (never equal to itself)
            continue
        if number in by_number:
            first, second = values.index(by_number[number]), values.index(label)
            raise IbdcError(
                f"{path}: labels {by_number[number]!r} (row {first}) and {label!r} (row {second}) are the same "
                "number written two ways; write every label of a class the same way"
            )
        by_number[number] = label
    if all(INTEGER.fullmatch(v) for v in unique):
        return [str(n) for n in sorted(int(v) for v in unique)]
    return sorted(unique)


def label_ids(values: list[str], where: str | Path) -> tuple[list[str], list[int]]:
    """The class names (label id -> name) and each row's label id of the label texts `values` (stripped,
    non-empty), by the rules of `_class_names`; every source of rows (manifest, folders, hf:) uses this."""
    names = _class_names(values, Path(where))
    lookup = {name: i for i, name in enumerate(names)}
    numeric = all(INTEGER.fullmatch(v) for v in values)
    return names, [lookup[str(int(v)) if numeric else v] for v in values]


def read_manifest(path: str | Path, modalities: list[str], *, require_label: bool = True) -> Manifest:
    """Read and check a manifest: columns known, requested modalities present, cells non-empty.

    Media files are not opened here (that happens while embedding) but paths are checked for a
    supported suffix so that a wrong column is caught before any model work.
    """
    path = Path(path)
    records = _read_records(path)
    if not records:
        raise IbdcError(f"manifest {path} is empty")
    columns: list[str] = []
    for record in records:
        for key in record:
            name = ALIASES.get(key.strip().lower(), key.strip().lower())
            if name not in columns:
                columns.append(name)
    unknown = [c for c in columns if c not in KNOWN_COLUMNS]
    if unknown:
        raise IbdcError(
            f"{path}: unknown column {unknown[0]!r}; columns are modalities ({', '.join(MODALITIES)}), "
            "'vision' (alias of image), 'label' and 'id'"
        )
    for modality in modalities:
        if modality not in columns:
            raise IbdcError(
                f"{path}: no {modality!r} column for --modalities {modality} (columns: {', '.join(columns)})"
            )
    if require_label and "label" not in columns:
        raise IbdcError(f"{path}: no 'label' column; this command needs class labels")
    rows = []
    for record in records:
        rows.append({ALIASES.get(k.strip().lower(), k.strip().lower()): v.strip() for k, v in record.items()})
    has_labels = "label" in columns
    if has_labels:
        for index, row in enumerate(rows):
            if not row.get("label"):
                raise IbdcError(f"{path}: row {index} has an empty label")
        names, labels = label_ids([row["label"] for row in rows], path)
    else:
        names, labels = [], [-1] * len(rows)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return Manifest(path=path, rows=rows, columns=columns, sha256=sha, class_names=names, labels=labels)


def check_cell(manifest: Manifest, index: int, modality: str) -> str:
    """The cell of `modality` in row `index`, or a MediaError naming the row when it is unusable."""
    from ibdc_cli.data.preprocess import MediaError

    value = manifest.rows[index].get(modality, "")
    if not value:
        raise MediaError(f"row {index}: empty {modality!r} cell")
    if modality in MEDIA_SUFFIXES:
        suffix = Path(value).suffix.lower()
        if suffix not in MEDIA_SUFFIXES[modality]:
            raise MediaError(
                f"row {index}: unsupported {modality} format {suffix or '(none)'!r} for {value!r} "
                f"(supported: {', '.join(sorted(MEDIA_SUFFIXES[modality]))})"
            )
    return value
