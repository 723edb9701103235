"""Embedding stores and synthetic sets on disk: safetensors + JSON, never pickle (SPEC §1).

An embedding store is a directory:

    STORE/index.json                  format, shards, counts, class names, modalities -> dim, encoder,
                                      preprocessing, manifest SHA-256, skipped rows, ibdc version
    STORE/shard-00000.safetensors     one [n, D] float32 tensor per modality, `labels` [n] int64, `row` [n] int64

Rows are in manifest order; a store made by N processes is identical to one made by one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ibdc_cli.errors import IbdcError
from ibdc_cli.version import __version__

STORE_FORMAT = "ibdc-store"
STORE_VERSION = 1
INDEX_FILE = "index.json"


def _umask_mode() -> int:
    """The mode a plain `open(path, "w")` would give: mkstemp's 0600 would make shared files private."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file` through a temp file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def lock_path(out: Path) -> Path:
    """The lock file of a job writing `out`: `.NAME.lock` beside it."""
    return out.parent / f".{out.name}.lock"


def partial_dir(out: Path) -> Path:
    """Where an unfinished job writing `out` keeps its job description and finished parts: `.NAME.partial`
    beside it (embed: part files per chunk; condense: per class; bind: the last epoch's state)."""
    return out.parent / f".{out.name}.partial"


@contextlib.contextmanager
def output_lock(out: Path, held: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the output `out` while a job writes it (and its `.NAME.partial`).

    A second job on the same output, in this process or another, raises IbdcError naming the first
    (its pid and command line) and touches nothing. The lock is `fcntl.flock` on `.NAME.lock`: the
    kernel drops it when its holder ends, even by kill -9, so a crashed run never blocks the next one.
    With `held=False` (the non-main processes of a distributed run, whose main process holds the lock)
    nothing is locked.
    """
    if not held:
        yield
        return
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a+")  # noqa: SIM115 (closed below, or when the lock is released)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise IbdcError(
                f"{out} is being written by another ibdc run ({holder}); wait for it to finish or choose another --out"
            ) from None
        # The holder before us may have removed the file after we opened it: lock the file on disk.
        try:
            same = os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}: {' '.join(sys.argv)}")
    handle.flush()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked: a waiter that opened it retries on the new file
        handle.close()


def prepare_partial_dir(work: Path, job: dict[str, Any], resume: bool) -> None:
    """Start (or, with `resume`, continue) a resumable job in `work`, whose settings are `job`.

    A resume with other settings is refused, naming what differs; without `resume` old state is dropped.
    """
    job = json.loads(json.dumps(job))
    job_file = work / "job.json"
    if resume and job_file.exists():
        try:
            previous = json.loads(job_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IbdcError(
                f"--resume: {job_file} is damaged ({exc}); the finished parts beside it are kept, but this run "
                "cannot tell which job they belong to: rerun without --resume to start over"
            ) from None
        if previous != job:
            flat_old, flat_new = _flatten(previous), _flatten(job)
            changed = sorted(k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k) != flat_new.get(k))
            raise IbdcError(
                f"--resume: the unfinished run at {work} used other settings ({', '.join(changed)} differ); "
                "rerun without --resume to start over"
            )
        return
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    atomic_write_json(job_file, job)


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, item in value.items():
        if isinstance(item, dict):
            flat.update(_flatten(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item
    return flat


def read_tensors(
    path: Path, what: str = "file", *, keys: list[str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (all, or those of `keys` that it has) and the metadata of a safetensors file; truncated
    or foreign files raise IbdcError."""
    if not path.is_file():
        raise IbdcError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys() if keys is None or key in keys}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise IbdcError(f"{path} is not a readable safetensors {what} (truncated or foreign?): {exc}") from None
    return tensors, metadata


def is_readable(path: Path) -> bool:
    """Whether `path` is a whole safetensors file: its header parses and every tensor it lists can be read."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # opening checks the header against the file's length
                tensor = handle.get_slice(key)
                if tensor.get_shape():  # read a little of each tensor; a scalar is read whole
                    tensor[:1]
                else:
                    handle.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return False
    return True


def drop_damaged(paths: list[Path], log) -> None:
    """Delete those of the finished `paths` of a resumed job that are not readable (a disk that filled up,
    a copy cut short), saying so through `log`: the job redoes them and keeps every other finished part."""
    for path in paths:
        if path.exists() and not is_readable(path):
            log(f"--resume: {path} is damaged; redoing that part (the other finished parts are kept)")
            path.unlink()


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).any(dim=-1).nonzero()[0, 0]) if tensor.ndim > 1 else 0
            raise IbdcError(f"{where}: tensor {name!r} contains NaN or Inf (first at row {bad})")


@dataclass
class Store:
    """An embedding store opened for reading. `index` is the parsed index.json."""

    path: Path
    index: dict[str, Any]
    _verified: set[Path] = field(default_factory=set, repr=False, compare=False)

    @property
    def modalities(self) -> dict[str, int]:
        return dict(self.index["modalities"])

    @property
    def class_names(self) -> list[str]:
        return list(self.index["class_names"])

    @property
    def encoder(self) -> dict[str, Any]:
        return dict(self.index["encoder"])

    @property
    def num_rows(self) -> int:
        return int(self.index["num_rows"])

    def fingerprint(self) -> str:
        """SHA-256 of index.json, which lists the shards with their own SHA-256."""
        return hashlib.sha256((self.path / INDEX_FILE).read_bytes()).hexdigest()

    def load(
        self,
        modalities: list[str] | None = None,
        *,
        classes: Collection[int] | None = None,
        transforms: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """All rows, or those of the label ids `classes`: `{modality: [N, D] float32, "labels": [N] int64,
        "row": [N] int64}`, checked finite. Read shard by shard, so with `classes` the memory it takes is
        that of the rows it keeps (plus one shard). `transforms[m]` maps each shard's `m` rows as it is
        read (before `classes` selects rows, so a row's result never depends on which others are kept)."""
        wanted = list(self.modalities) if modalities is None else modalities
        keep = None if classes is None else torch.tensor(sorted(classes), dtype=torch.int64)
        if keep is None:
            total = self.num_rows
        else:  # a first pass over the labels alone, so the kept rows are written once, in place
            total = sum(int(torch.isin(shard["labels"], keep).sum()) for shard in self.shards([]))
        dims = {m: self.modalities[m] for m in wanted}
        data = {m: torch.empty(total, dims[m]) for m in wanted}
        data.update(labels=torch.empty(total, dtype=torch.int64), row=torch.empty(total, dtype=torch.int64))
        start = 0
        for tensors in self.shards(wanted):
            for modality, transform in (transforms or {}).items():
                tensors[modality] = transform(tensors[modality])
            if keep is not None:
                chosen = torch.isin(tensors["labels"], keep)
                tensors = {name: tensor[chosen] for name, tensor in tensors.items()}
            n = tensors["labels"].shape[0]
            for name, tensor in tensors.items():
                if tensor.ndim != data[name].ndim or tensor.shape[1:] != data[name].shape[1:]:
                    raise IbdcError(f"store {self.path}: {name!r} has shape {tuple(tensor.shape)}")
                data[name][start : start + n] = tensor
            start += n
        return data

    def shards(self, modalities: list[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Each shard's `modalities` (float32 `[n, D]`), "labels" and "row" (int64 `[n]`), one shard at a
        time, checked: its SHA-256 against index.json (once per opened store), its rows, dtypes, label ids,
        and finite values."""
        for modality in modalities:
            if modality not in self.modalities:
                raise IbdcError(
                    f"store {self.path} has no {modality!r} embeddings (it has: {', '.join(self.modalities)})"
                )
        offset = 0
        for shard in self.index["shards"]:
            shard_path = self.path / shard["file"]
            if "sha256" in shard and shard_path not in self._verified:
                if file_sha256(shard_path) != shard["sha256"]:
                    raise IbdcError(
                        f"store shard {shard_path} does not match the SHA-256 that {self.path / INDEX_FILE} "
                        "records: it was changed or swapped since `ibdc embed` wrote it; embed again"
                    )
                self._verified.add(shard_path)
            names = [*modalities, "labels", "row"]
            tensors = read_tensors(shard_path, "store shard", keys=names)[0]
            for name in names:
                if name not in tensors:
                    raise IbdcError(f"store shard {shard_path} lacks tensor {name!r}")
                tensor = tensors[name]
                if tensor.shape[0] != shard["rows"]:
                    raise IbdcError(f"store shard {shard_path} has {tensor.shape[0]} rows, index says {shard['rows']}")
                if name in ("labels", "row"):
                    if tensor.is_floating_point() or tensor.is_complex() or tensor.ndim != 1:
                        raise IbdcError(f"store shard {shard_path}: {name!r} must be 1-D integers, not {tensor.dtype}")
                    tensors[name] = tensor.long()
                elif tensor.is_floating_point():
                    tensors[name] = tensor.float()  # a float16 or bfloat16 shard is read as float32
                else:
                    raise IbdcError(f"store shard {shard_path}: {name!r} holds {tensor.dtype}, not floats")
            for modality in modalities:
                bad = ~torch.isfinite(tensors[modality]).reshape(shard["rows"], -1).all(dim=1)
                if bool(bad.any()):
                    first = offset + int(bad.nonzero()[0, 0])
                    raise IbdcError(
                        f"store {self.path}: tensor {modality!r} contains NaN or Inf (first at row {first})"
                    )
            self._check_labels(tensors["labels"], tensors["row"])
            offset += shard["rows"]
            yield tensors

    def _check_labels(self, labels: torch.Tensor, rows: torch.Tensor) -> None:
        """Every label is a class id of `class_names` (labelled stores) or -1 (unlabelled ones)."""
        classes = len(self.class_names)
        if self.index.get("labeled", bool(classes)):
            bad = (labels < 0) | (labels >= classes)
            allowed = f"0..{classes - 1} (its {classes} class_names)"
        else:
            bad = labels != -1
            allowed = "-1 (it has no labels)"
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise IbdcError(
                f"store {self.path}: row {int(rows[first])} has label id {int(labels[first])}; "
                f"this store's ids are {allowed}"
            )


def write_store(
    path: str | Path,
    embeddings: dict[str, torch.Tensor],
    labels: torch.Tensor | None = None,
    *,
    class_names: list[str] | None = None,
    rows: torch.Tensor | None = None,
    encoder: dict[str, Any] | None = None,
    shard_rows: int = 16384,
    index: dict[str, Any] | None = None,
) -> Store:
    """Write an embedding store at the new directory `path` and open it.

    `embeddings`: `{modality: [N, D]}` (one row per example, paired across modalities); `labels`: `[N]`
    class ids into `class_names` (default `"0"`, `"1"`, ...), or None for a store without labels (ids -1);
    `rows`: `[N]` manifest row numbers (default 0..N-1); `encoder`: the record of what embedded them
    (default `{"preset": "external", "weights": "external"}`: vectors made outside ibdc). `index`: more
    index.json entries (`ibdc embed` adds its manifest, preprocessing and skipped rows).

        >>> store = write_store("stores/mine", {"audio": a, "image": v}, labels, class_names=["cat", "dog"])
    """
    path = Path(path)
    if path.exists():
        raise IbdcError(f"{path} exists; a new store needs a new directory")
    n = next(iter(embeddings.values())).shape[0]
    if any(x.ndim != 2 or x.shape[0] != n for x in embeddings.values()):
        raise IbdcError("write_store: every modality needs one [N, D] matrix with the same N rows")
    if labels is None:
        labels, class_names = torch.full((n,), -1, dtype=torch.int64), []
    else:
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if class_names is None:
            class_names = [str(c) for c in range(int(labels.max()) + 1 if n else 0)]
    data = {m: x.detach().float().cpu().contiguous() for m, x in embeddings.items()}
    data.update(labels=labels, row=torch.arange(n) if rows is None else torch.as_tensor(rows, dtype=torch.int64))
    check_finite({m: data[m] for m in embeddings}, f"store {path}")
    path.mkdir(parents=True)
    shards = []
    for number, start in enumerate(range(0, max(n, 1), shard_rows)):
        name = f"shard-{number:05d}.safetensors"
        atomic_save_tensors(path / name, {k: v[start : start + shard_rows] for k, v in data.items()})
        shards.append({"file": name, "rows": min(shard_rows, n - start), "sha256": file_sha256(path / name)})
    ids = labels.tolist()
    record = {
        "format": STORE_FORMAT,
        "format_version": STORE_VERSION,
        "ibdc_version": __version__,
        "num_rows": n,
        "modalities": {m: int(x.shape[1]) for m, x in embeddings.items()},
        "class_names": list(class_names),
        "rows_per_class": {name: ids.count(i) for i, name in enumerate(class_names)},
        "labeled": bool(class_names),
        "encoder": encoder or {"preset": "external", "weights": "external"},
        **(index or {}),
        "shards": shards,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(path / INDEX_FILE, record)
    store = open_store(path)
    store._check_labels(data["labels"], data["row"])
    return store


def open_store(path: str | Path) -> Store:
    """Open and check an embedding store directory."""
    path = Path(path)
    index_path = path / INDEX_FILE
    if path.is_file():
        raise IbdcError(f"{path} is a file; an embedding store is a directory made by `ibdc embed`")
    if not index_path.is_file():
        partial = partial_dir(path)
        hint = f" (an unfinished embed is at {partial}: rerun `ibdc embed` with --resume)" if partial.exists() else ""
        raise IbdcError(f"{path} is not an ibdc embedding store: {INDEX_FILE} is missing{hint}")
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IbdcError(f"{index_path} is corrupt: {exc}") from None
    if not isinstance(index, dict) or index.get("format") != STORE_FORMAT:
        raise IbdcError(f"{index_path} is not an ibdc store index")
    if int(index.get("format_version", 0)) > STORE_VERSION:
        raise IbdcError(
            f"store {path} has format version {index['format_version']}; this ibdc ({__version__}) reads up to "
            f"{STORE_VERSION}: upgrade ibdc"
        )
    _check_index(index, index_path)
    for shard in index["shards"]:
        if not (path / shard["file"]).is_file():
            raise IbdcError(f"store {path} is incomplete: shard {shard['file']} is missing")
    return Store(path=path, index=index)


# The keys of index.json that readers rely on, and their JSON types.
INDEX_KEYS = {
    "num_rows": int,
    "modalities": dict,
    "class_names": list,
    "encoder": dict,
    "shards": list,
}


def _check_index(index: dict[str, Any], index_path: Path) -> None:
    """Raise IbdcError naming the first key of `index` that is missing or of the wrong type."""

    def bad(what: str) -> IbdcError:
        return IbdcError(f"{index_path} is damaged: {what}; embed the store again")

    for key, kind in INDEX_KEYS.items():
        if key not in index:
            raise bad(f"it has no {key!r}")
        if not isinstance(index[key], kind) or (kind is int and isinstance(index[key], bool)):
            raise bad(f"{key!r} is {type(index[key]).__name__}, not {kind.__name__}")
    if not all(isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in index["modalities"].items()):
        raise bad("'modalities' must map names to dimensions")
    if not all(isinstance(n, str) for n in index["class_names"]):
        raise bad("'class_names' must be strings")
    for shard in index["shards"]:
        if not (isinstance(shard, dict) and isinstance(shard.get("file"), str) and isinstance(shard.get("rows"), int)):
            raise bad("every shard needs a 'file' name and a 'rows' count")
        if Path(shard["file"]).name != shard["file"]:
            raise bad(f"shard {shard['file']!r} is not a file name inside the store")
    if sum(shard["rows"] for shard in index["shards"]) != index["num_rows"]:
        raise bad(
            f"its shards hold {sum(s['rows'] for s in index['shards'])} rows, 'num_rows' says {index['num_rows']}"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


SYNTHETIC_FORMAT = "ibdc-synthetic"
SYNTHETIC_VERSION = 1
METADATA_KEY = "ibdc"


# The metadata keys that readers of a synthetic set rely on, and their JSON types.
SYNTHETIC_KEYS = {"modalities": list, "class_names": list, "encoder": dict}


def save_synthetic_set(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write a synthetic set (or selection): tensors per modality + `labels`, JSON metadata under "ibdc"."""
    metadata = {
        "format": SYNTHETIC_FORMAT,
        "format_version": SYNTHETIC_VERSION,
        "ibdc_version": __version__,
        **metadata,
    }
    atomic_save_tensors(Path(path), tensors, metadata={METADATA_KEY: json.dumps(metadata)})


def load_synthetic_set(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a synthetic set; foreign, truncated or newer files raise IbdcError."""
    path = Path(path)
    if path.is_dir():
        raise IbdcError(f"{path} is a directory; a synthetic set is one .safetensors file made by `ibdc condense`")
    tensors, raw = read_tensors(path, "synthetic set")
    if METADATA_KEY not in raw:
        raise IbdcError(f"{path} is a safetensors file but not an ibdc synthetic set (no {METADATA_KEY!r} metadata)")
    try:
        metadata = json.loads(raw[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise IbdcError(f"{path}: corrupt ibdc metadata: {exc}") from None
    if metadata.get("format") != SYNTHETIC_FORMAT:
        raise IbdcError(f"{path} is not an ibdc synthetic set (format {metadata.get('format')!r})")
    if int(metadata.get("format_version", 0)) > SYNTHETIC_VERSION:
        raise IbdcError(f"{path} has format version {metadata['format_version']}; upgrade ibdc to read it")
    for key, kind in SYNTHETIC_KEYS.items():
        if not isinstance(metadata.get(key), kind):
            what = "is missing" if key not in metadata else f"is {type(metadata[key]).__name__}, not {kind.__name__}"
            raise IbdcError(f"{path}: its ibdc metadata is damaged: {key!r} {what}")
    missing = [m for m in [*metadata["modalities"], "labels"] if m not in tensors]
    if missing:
        raise IbdcError(f"{path} lacks tensor {missing[0]!r} listed in its metadata")
    check_finite(tensors, f"synthetic set {path}")
    return tensors, metadata
