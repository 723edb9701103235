"""Manifest rows as model inputs: checked without decoding, then decoded in DataLoader workers.

`embed` and `bind` share these. Both check every row before any model work (`usable_rows`: every cell
needed, bad rows refused or skipped; `present_cells`: every row needs the anchor, other cells may be
empty), then decode the rows in batches (`row_loader`). A row whose media fails to decode is reported
in its batch, not raised inside a worker, so the recipe can name the row (or skip it with --skip-bad).

Example::

    rows, skipped = usable_rows(manifest, ["image", "audio"], skip_bad=False)
    for batch in row_loader(manifest, rows, ["image", "audio"], batch_size=32, workers=2):
        batch["inputs"]["image"]      # [B, 3, 224, 224], the rows batch["rows"] (those that decoded)
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ibdc_cli.data.manifest import Manifest
from ibdc_cli.data.preprocess import MediaError
from ibdc_cli.errors import IbdcError


def check_row(manifest: Manifest, row: int, modalities: list[str]) -> None:
    """Raise MediaError naming `row` unless each of its `modalities` cells is usable as far as can be told
    without decoding (`Manifest.check_row`: for a manifest, present, of a known format and, for media, an
    existing file)."""
    manifest.check_row(row, modalities)


def usable_rows(manifest: Manifest, modalities: list[str], skip_bad: bool) -> tuple[list[int], list[dict]]:
    """The rows whose every `modalities` cell passes `check_row`, and the skipped ones (`{"row", "reason"}`);
    without `skip_bad` the first bad row raises IbdcError."""
    good, skipped = [], []
    for row in range(len(manifest.rows)):
        try:
            check_row(manifest, row, modalities)
        except MediaError as exc:
            if not skip_bad:
                raise IbdcError(f"{manifest.path}: {exc}") from None
            skipped.append({"row": row, "reason": str(exc)})
            continue
        good.append(row)
    return good, skipped


def present_cells(manifest: Manifest, modalities: list[str], anchor: str) -> dict[str, list[bool]]:
    """Which rows have each modality (`{m: [N] bool}`), every present cell checked (`check_row`).

    Every row needs the `anchor`: it is what the row binds to. Other cells may be empty (ImageBind binds
    each modality on its own pairs with images), and such a row simply does not train that tower.
    """
    has: dict[str, list[bool]] = {m: [] for m in modalities}
    for row in range(len(manifest.rows)):
        if not manifest.has(row, anchor):
            raise IbdcError(f"{manifest.path}: row {row} has an empty {anchor!r} cell; every row needs the anchor")
        for m in modalities:
            has[m].append(manifest.has(row, m))
        try:
            check_row(manifest, row, [m for m in modalities if manifest.has(row, m)])
        except MediaError as exc:
            raise IbdcError(f"{manifest.path}: {exc}") from None
    return has


class RowInputs(Dataset):
    """Model inputs `{modality: tensor}` of the non-empty `modalities` cells of manifest `rows`; a row whose
    media fails to decode yields its error message instead."""

    def __init__(self, manifest: Manifest, rows: list[int], modalities: list[str]):
        self.manifest, self.rows, self.modalities = manifest, rows, modalities

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        manifest = self.manifest
        try:
            inputs = {m: manifest.model_input(row, m) for m in self.modalities if manifest.has(row, m)}
        except MediaError as exc:
            return {"row": row, "error": str(exc)}
        return {"row": row, "inputs": inputs}


def collate_rows(items: list[dict]) -> dict:
    """A batch of `RowInputs` items: `rows` (those that decoded), `errors` (`(row, message)`), and `inputs`,
    per modality the stacked inputs `[B_m, *input shape]` of the decoded rows that have it, in row order."""
    good = [item for item in items if "inputs" in item]
    modalities = list(dict.fromkeys(m for item in good for m in item["inputs"]))
    return {
        "rows": [item["row"] for item in good],
        "errors": [(item["row"], item["error"]) for item in items if "error" in item],
        "inputs": {m: torch.stack([item["inputs"][m] for item in good if m in item["inputs"]]) for m in modalities},
    }


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def row_loader(manifest: Manifest, rows: list[int], modalities: list[str], batch_size: int, workers: int) -> DataLoader:
    """Batches (`collate_rows`) of the decoded `rows`, in order, from `workers` processes (0: this one)."""
    return DataLoader(
        RowInputs(manifest, rows, modalities),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_rows,
        worker_init_fn=_one_thread if workers else None,
    )


def batch_error(manifest: Manifest, row: int, message: str) -> IbdcError:
    """The error of a row that failed to decode, naming the manifest and the row once."""
    return IbdcError(f"{manifest.path}: row {row}: {message.removeprefix(f'row {row}: ')}")
