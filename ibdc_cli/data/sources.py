"""The real media of a store's rows, read again from the source the store records (SPEC §8).

`ibdc condense --space input` (real rows to start from, selections) and `ibdc evaluate --protocol
convnet` (networks trained on media) need the model inputs of store rows. A store records where its rows
came from under `index.json` "manifest": a CSV/JSONL manifest (`path`, `sha256`), a Hugging Face dataset
(`kind` "hf": `path`, `split`, `columns`, `format`, the dataset's fingerprint as `sha256`) or WebDataset
shards (`kind` "wds": each shard's `path`, `samples` and `sha256`). `open_source` reopens that source
(or another copy of it that the user names) and checks that it is the same data; `MediaRows.inputs(rows)`
then yields each row's `{modality: model input}`.

A manifest or a dataset reads any row directly. Shards are streamed: the shards that hold the rows
asked for are read from the start (each checked against its recorded SHA-256 once read to its end).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ibdc_cli.errors import IbdcError


class MediaRows:
    """Model inputs of a store's rows from its source; `path` is what messages name."""

    path: Path

    def inputs(self, rows: Sequence[int], modalities: list[str]) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        raise NotImplementedError


class ManifestRows(MediaRows):
    """Rows of a CSV/JSONL manifest, or of an `hf:` dataset (read as a manifest)."""

    def __init__(self, manifest) -> None:
        self.manifest, self.path = manifest, Path(manifest.path)

    def inputs(self, rows, modalities):
        from ibdc_cli.data.preprocess import MediaError

        for row in rows:
            if not 0 <= row < len(self.manifest.rows):
                raise IbdcError(f"{self.path} has no row {row}")
            try:
                yield row, {m: self.manifest.model_input(row, m) for m in modalities}
            except MediaError as exc:
                raise IbdcError(f"{self.path}: row {row}: {str(exc).removeprefix(f'row {row}: ')}") from None


class ShardRows(MediaRows):
    """Rows of WebDataset shards: row r is sample r - (samples of the shards before its shard)."""

    def __init__(self, source, shards: list[dict[str, Any]]) -> None:
        self.source, self.shards, self.path = source, shards, Path(source.spec)
        self.starts = [0]
        for shard in shards:
            self.starts.append(self.starts[-1] + int(shard["samples"]))

    def inputs(self, rows, modalities):
        from ibdc_cli.data.preprocess import MediaError

        wanted: dict[int, dict[int, int]] = {}  # shard -> {offset in the shard: row}
        for row in rows:
            if not 0 <= row < self.starts[-1]:
                raise IbdcError(f"{self.path} has no row {row} ({self.starts[-1]} samples)")
            index = next(k for k in range(len(self.shards)) if row < self.starts[k + 1])
            wanted.setdefault(index, {})[row - self.starts[index]] = row
        read: dict[int, dict[str, torch.Tensor]] = {}
        for index in sorted(wanted):
            hasher = hashlib.sha256()
            for offset, sample in enumerate(self.source.samples(index, hasher)):
                if offset in wanted[index]:
                    try:
                        read[wanted[index][offset]] = {m: self.source.model_input(sample, m) for m in modalities}
                    except MediaError as exc:
                        raise IbdcError(f"{self.source.shards[index]}: {exc}") from None
            if hasher.hexdigest() != self.shards[index]["sha256"]:
                raise IbdcError(
                    f"shard {self.source.shards[index]} is not the one the store was embedded from (SHA-256 differs)"
                )
        for row in rows:
            yield row, read[row]


def open_source(
    record: dict[str, Any], modalities: list[str], given: str | Path | None, store: str, option: str = "--manifest"
) -> MediaRows:
    """The rows of the source `record` (a store's index.json "manifest"), or of `given` (a manifest path, an
    `hf:` dataset or `wds:` shards: a copy of that source elsewhere), checked to be the recorded data;
    messages name `option` as the way to give another copy."""
    key = json.dumps(record, sort_keys=True)
    spec = str(given) if given is not None else None
    stamp = Path(spec).stat().st_mtime_ns if spec and Path(spec).is_file() else None  # an edited manifest: read again
    return _open(key, tuple(modalities), spec, stamp, store, option)


@lru_cache(maxsize=4)
def _open(key: str, modalities: tuple[str, ...], given: str | None, stamp: int | None, store: str, option: str):
    """`open_source`, read once per run rather than once per class."""
    record = json.loads(key)
    kind = record.get("kind", "manifest")
    spec = given if given is not None else _recorded_spec(record)
    if spec.startswith("hf:"):
        from ibdc_cli.data.hf import read_hf

        if kind != "hf":
            raise IbdcError(f"store {store} was embedded from a {kind}, not a Hugging Face dataset ({spec})")
        source = read_hf(spec, list(modalities), split=record.get("split"), columns=record.get("columns"))
        if source.sha256 != record.get("sha256"):
            raise IbdcError(
                f"{spec} is not the dataset store {store} was embedded from (fingerprint differs); pass that one "
                f"with {option} hf:..."
            )
        return ManifestRows(source)
    if spec.startswith("wds:"):
        from ibdc_cli.data.wds import EXTENSIONS, WdsSource, read_wds

        if kind != "wds":
            raise IbdcError(f"store {store} was embedded from a {kind}, not WebDataset shards ({spec})")
        if given is None:  # the shards as resolved when they were embedded
            source = WdsSource(spec, [Path(s["path"]) for s in record["shards"]], list(modalities), {})
            missing = [p for p in source.shards if not p.is_file()]
            if missing:
                raise IbdcError(
                    f"shard {missing[0]} (recorded in store {store}) not found; pass the shards with {option} wds:..."
                )
        else:
            source = read_wds(spec, list(modalities))
        source.extensions = {**EXTENSIONS, **record.get("extensions", {})}
        if len(source.shards) != len(record["shards"]):
            raise IbdcError(f"{spec} has {len(source.shards)} shards; store {store} was embedded from "
                            f"{len(record['shards'])}")  # fmt: skip
        return ShardRows(source, record["shards"])
    from ibdc_cli.data.manifest import read_manifest

    if kind != "manifest":
        raise IbdcError(f"store {store} was embedded from {kind}: rows; {spec} is a manifest")
    if not Path(spec).is_file():
        where = "given" if given is not None else f"recorded in store {store}"
        raise IbdcError(f"manifest {spec} ({where}) not found; pass the manifest with {option} FILE")
    manifest = read_manifest(spec, list(modalities), require_label=False)
    if record.get("sha256") and manifest.sha256 != record["sha256"]:
        raise IbdcError(
            f"manifest {spec} is not the one store {store} was embedded from (SHA-256 differs); pass that one with "
            f"{option} FILE"
        )
    return ManifestRows(manifest)


def _recorded_spec(record: dict[str, Any]) -> str:
    """`hf:PATH`, `wds:...` or the manifest's path, as the store records its source."""
    if record.get("kind") == "hf":
        return f"hf:{record['path']}"
    return str(record.get("path", ""))
