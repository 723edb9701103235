"""Rows `[N, D]` float32 kept in a temporary file and read by index: whole-data heads on stores too large
to hold in memory.

`evaluate --train` maps a store's embeddings into the set's space and normalises them once, shard by
shard, into one such file per modality (`spill`); a head's mini-batches are then read back row by row
(`rows[index]`, one `preadv` per row, so nothing of the file stays in the process's memory beyond the
batch) and test rows are scored in sequential chunks (`chunks`). A row read back is bit for bit the row
that was written, so a head trained from disk equals one trained from memory (tests/test_evaluate.py).
The files live under the system's temporary folder (`TMPDIR`) and are removed when the object is
garbage-collected or the process exits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch


class _Folder:
    """A temporary folder, removed when this object is garbage-collected or at exit."""

    def __init__(self, path: str) -> None:
        self.path = path
        weakref.finalize(self, shutil.rmtree, path, True)


class RowsOnDisk:
    """`rows` float32 rows of width `dim` in the file `path`; `len()`, `.shape`, `[index]`, `chunks()`."""

    def __init__(self, path: str, rows: int, dim: int, folder: _Folder | None = None) -> None:
        self.path, self.rows, self.dim = path, rows, dim
        self._folder = folder  # the folder goes when the last of its files does
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.dim)

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        """The rows `index` (a 1-d integer tensor), in its order, as a `[len(index), D]` tensor."""
        out = np.empty((len(index), self.dim), dtype=np.float32)
        row_bytes = self.dim * 4
        for i, row in enumerate(index.tolist()):
            if not 0 <= row < self.rows:
                raise IndexError(f"row {row} of {self.rows}")
            os.preadv(self._fd, [memoryview(out[i])], row * row_bytes)
        return torch.from_numpy(out)

    def chunks(self, size: int = 8192) -> Iterator[torch.Tensor]:
        """Every row in order, `size` rows at a time."""
        with open(self.path, "rb") as f:
            for start in range(0, self.rows, size):
                n = min(size, self.rows - start)
                yield torch.from_numpy(np.fromfile(f, dtype=np.float32, count=n * self.dim).reshape(n, self.dim))


def spill(
    parts: Iterable[dict[str, torch.Tensor]],
    modalities: list[str],
    dims: dict[str, int],
    prepare: Callable[[str, torch.Tensor], torch.Tensor],
) -> tuple[dict[str, RowsOnDisk], torch.Tensor]:
    """Write `prepare(m, part[m])` of each part (a store's shards) to one file per modality; returns the
    files and the parts' concatenated "labels". The folder is removed with the last file object."""
    folder = tempfile.mkdtemp(prefix="ibdc-rows-")
    handles = {m: open(os.path.join(folder, f"{m}.f32"), "wb") for m in modalities}
    rows, labels = 0, []
    try:
        for part in parts:
            for m in modalities:
                x = prepare(m, part[m]).to(torch.float32).contiguous()
                handles[m].write(x.numpy())  # the buffer itself, not a copy
            labels.append(part["labels"].clone())  # a view would keep the whole shard's buffer alive
            rows += len(part["labels"])
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        for handle in handles.values():
            handle.close()
    owner = _Folder(folder)
    files = {m: RowsOnDisk(os.path.join(folder, f"{m}.f32"), rows, dims[m], owner) for m in modalities}
    labels_all = torch.cat(labels) if labels else torch.empty(0, dtype=torch.int64)
    return files, labels_all
