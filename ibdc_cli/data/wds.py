"""WebDataset shards as rows to embed (`ibdc embed wds:SHARDS`, SPEC §8).

`wds:` names tar shards, in this order:

    wds:data/shards                       every `*.tar` in the folder, sorted by name
    wds:data/train-{000000..000009}.tar   a brace pattern (WebDataset's own notation), in its order
    wds:data/train-*.tar                  a glob, sorted by name

A shard holds samples as consecutive tar members that share a key: the member's path up to the first dot
of its file name (`a/x17.png` and `a/x17.cls` are sample `a/x17`, with extensions `png` and `cls`), as
WebDataset writes and reads them. A sample's cells, by extension (lower case):

    image    png jpg jpeg bmp gif webp tif tiff, or image.<one of those>
    audio    wav flac ogg mp3 aiff aif, or audio.<one of those>
    text     txt, text or text.txt (UTF-8)
    depth    depth.<png tif tiff npy jpg jpeg>;  thermal: thermal.<...>
    label    cls, label, cls.txt or label.txt (text: the label; the manifest's label rules give the ids)

`--image-column EXT` (and `--audio-column`, ..., `--label-column`) name one extension instead. A member's
bytes are decoded by ibdc's own decoders, so a file gives the same tensor in a shard as in a manifest.

Rows are numbered over the shards in order (shard 0's samples, then shard 1's, ...), which is the row
order of a manifest listing the same samples in that order. Nothing is listed before embedding: each
shard is read once, as a stream (`tarfile` "r|"), hashed while it is read, and embedded in groups of
`--chunk-rows` samples; shard k belongs to process k mod N and is one resumable part. The label ids are
made when the parts are merged, from every sample's label.
"""

from __future__ import annotations

import glob
import hashlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ibdc_cli.data.manifest import label_ids
from ibdc_cli.data.preprocess import MEDIA_SUFFIXES, MediaError, load_audio, load_image, load_map, load_text
from ibdc_cli.errors import IbdcError

PREFIX = "wds:"

_IMAGE = [s.lstrip(".") for s in sorted(MEDIA_SUFFIXES["image"])]
_AUDIO = [s.lstrip(".") for s in sorted(MEDIA_SUFFIXES["audio"])]
_MAP = [s.lstrip(".") for s in sorted(MEDIA_SUFFIXES["depth"])]
EXTENSIONS = {  # the member extensions that hold each cell, unless an option names one
    "image": [*_IMAGE, *(f"image.{e}" for e in _IMAGE)],
    "audio": [*_AUDIO, *(f"audio.{e}" for e in _AUDIO)],
    "text": ["txt", "text", "text.txt"],
    "depth": [f"depth.{e}" for e in _MAP],
    "thermal": [f"thermal.{e}" for e in _MAP],
    "label": ["cls", "label", "cls.txt", "label.txt"],
}


def is_wds(spec: str) -> bool:
    return str(spec).startswith(PREFIX)


@dataclass
class Sample:
    """One sample of a shard: its key and its members' bytes by extension."""

    key: str
    members: dict[str, bytes]


@dataclass
class WdsSource:
    """The shards of a `wds:` input and which member extensions hold each cell."""

    spec: str
    shards: list[Path]
    modalities: list[str]
    extensions: dict[str, list[str]]  # cell ("label" too) -> the extensions that may hold it

    @property
    def path(self) -> Path:  # what messages name, as a manifest's path
        return Path(self.spec)

    @property
    def job_fingerprint(self) -> str:
        """SHA-256 of the shards' file names and sizes: what a resumed run checks before reading any shard."""
        digest = hashlib.sha256()
        for shard in self.shards:
            digest.update(f"{shard.name}\0{shard.stat().st_size}\n".encode())
        return digest.hexdigest()

    def samples(self, index: int, hasher: Any = None) -> Iterator[Sample]:
        """The samples of shard `index`, streamed in member order; `hasher.update` sees every byte read."""
        shard = self.shards[index]
        try:
            with open(shard, "rb") as raw:
                stream = _Hashing(raw, hasher) if hasher is not None else raw
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    yield from _group(tar, shard)
                    while stream.read(1 << 20):  # the padding after the last member counts in the hash
                        pass
        except tarfile.TarError as exc:
            raise IbdcError(f"{shard}: not a readable tar shard: {exc}") from None

    def cell(self, sample: Sample, name: str) -> str | None:
        """The extension of `sample`'s member holding cell `name` (a modality or "label"), None when it has
        none; MediaError when two members could hold it."""
        found = [e for e in self.extensions[name] if e in sample.members]
        if len(found) > 1:
            raise MediaError(
                f"sample {sample.key!r} has {len(found)} members that could be its {name} ({', '.join(found)}); "
                f"name one with --{name}-column EXT"
            )
        return found[0] if found else None

    def label(self, sample: Sample) -> str | None:
        extension = self.cell(sample, "label")
        if extension is None:
            return None
        text = _utf8(sample, extension).strip()
        if not text:
            raise MediaError(f"sample {sample.key!r}: empty label ({sample.key}.{extension})")
        return text

    def model_input(self, sample: Sample, modality: str):
        """The model input of `sample`'s `modality` member; MediaError when it is missing or cannot be read."""
        extension = self.cell(sample, modality)
        if extension is None:
            wanted = " or ".join(self.extensions[modality][:4]) + ("…" if len(self.extensions[modality]) > 4 else "")
            raise MediaError(f"sample {sample.key!r} has no {modality} member (.{wanted})")
        data = sample.members[extension]
        name = Path(f"{sample.key}.{extension}")
        if modality == "text":
            return load_text(_utf8(sample, extension))
        if modality == "image":
            return load_image(name, data)
        if modality == "audio":
            return load_audio(name, data)
        return load_map(name, data)

    def record(self, shards: list[dict], rows: int) -> dict:
        """What a store records of its source (index.json "manifest"): kind, path, each shard (its path,
        samples and SHA-256) and a fingerprint over them."""
        digest = hashlib.sha256("".join(s["sha256"] for s in shards).encode())
        return {
            "kind": "wds",
            "path": self.spec,
            "shards": shards,
            "extensions": {name: self.extensions[name] for name in [*self.modalities, "label"]},
            "sha256": digest.hexdigest(),
            "rows": rows,
        }


def read_wds(spec: str, modalities: list[str], *, columns: dict[str, str | None] | None = None) -> WdsSource:
    """The shards of the `wds:` input `spec` (module docstring); `columns` (`{cell: extension or None}`) names
    the extension of a cell instead of the defaults. Nothing but the file names is read here."""
    target = str(spec)[len(PREFIX) :]
    if not target:
        raise IbdcError("wds: needs shards: wds:FOLDER, wds:NAME-{000..009}.tar or wds:NAME-*.tar")
    shards = _shard_paths(target)
    if not shards:
        raise IbdcError(f"{spec}: no tar shards found (a folder of *.tar, a brace pattern or a glob)")
    missing = [s for s in shards if not s.is_file()]
    if missing:
        raise IbdcError(f"{spec}: shard not found: {missing[0]}")
    extensions = {name: list(default) for name, default in EXTENSIONS.items()}
    for name, extension in (columns or {}).items():
        if extension:
            extensions[name] = [extension.lower().lstrip(".")]
    return WdsSource(spec=str(spec), shards=shards, modalities=list(modalities), extensions=extensions)


def merge_labels(texts: list[str | None], keys: list[str], kept: list[int], where: str) -> tuple[list[str], list[int]]:
    """Class names and the label id of each `kept` row, from every sample's label text (None: no label), by
    the manifest's rules; so a sample skipped for its media still names its class, as a skipped manifest
    row does. No labels at all is a store without labels; a kept sample without one, when others have one,
    is an error naming it."""
    given = [t for t in texts if t is not None]
    if not given:
        return [], [-1] * len(kept)
    missing = [r for r in kept if texts[r] is None]
    if missing:
        raise IbdcError(f"{where}: sample {keys[missing[0]]!r} has no label member (.cls or .label) while others have")
    names, ids = label_ids(given, where)
    lookup = dict(zip(given, ids, strict=True))
    return names, [lookup[texts[r]] for r in kept]


def _shard_paths(target: str) -> list[Path]:
    local = Path(target)
    if local.is_dir():
        return sorted(local.glob("*.tar"))
    if "{" in target:
        from braceexpand import braceexpand

        return [Path(p) for p in braceexpand(target)]
    if any(ch in target for ch in "*?["):
        return [Path(p) for p in sorted(glob.glob(target))]
    return [local]


def _group(tar: tarfile.TarFile, shard: Path) -> Iterator[Sample]:
    """Samples of consecutive members sharing a key; a key met again after another is an error."""
    current: Sample | None = None
    seen: set[str] = set()
    for member in tar:
        if not member.isfile():
            continue
        path = PurePosixPath(member.name)
        if path.name.startswith(".") or "." not in path.name:
            continue  # hidden files and members without an extension are not cells
        stem, extension = path.name.split(".", 1)
        key = str(path.parent / stem) if str(path.parent) != "." else stem
        handle = tar.extractfile(member)
        data = handle.read() if handle is not None else b""
        if current is not None and key == current.key:
            if extension.lower() in current.members:
                raise IbdcError(f"{shard}: sample {key!r} has two {extension!r} members")
            current.members[extension.lower()] = data
            continue
        if current is not None:
            yield current
        if key in seen:
            raise IbdcError(f"{shard}: the members of sample {key!r} are not next to each other (as WebDataset needs)")
        seen.add(key)
        current = Sample(key, {extension.lower(): data})
    if current is not None:
        yield current


def _utf8(sample: Sample, extension: str) -> str:
    try:
        return sample.members[extension].decode("utf-8")
    except UnicodeDecodeError:
        raise MediaError(f"sample {sample.key!r}: {sample.key}.{extension} is not UTF-8 text") from None


class _Hashing:
    """A read-only file that feeds every byte it returns to `hasher`."""

    def __init__(self, raw, hasher) -> None:
        self.raw, self.hasher = raw, hasher

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hasher.update(data)
        return data
