"""What checking every shard against its recorded SHA-256 costs when a store is read (`Store.load`).

`Store.load` hashes each shard file before reading it (docs/formats.md, "Fingerprint"): a shard changed
or swapped since `ibdc embed` is refused instead of read. This measures, on one synthetic store of
`--rows` rows x 2 modalities x `--dim` float32 dimensions in shards of `--shard-rows`:

- `load`: `Store.load()` as ibdc runs it (hash + read + checks), the first pass after writing (the files
  are in the page cache, as they are when a store was just embedded or read before);
- `hash`: the hashing alone (`file_sha256` over every shard);
- `read`: `load` minus `hash`, what reading cost before the check.

Each is the median of `--repeats` runs, interleaved (load, hash, load, hash, ...) so that the machine's
load hits both alike. Read the ratio `hash / read`, not the seconds (the CPU is shared).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/store_verify.py --json benchmarks/results/store_verify.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ibdc_cli.store import atomic_save_tensors, atomic_write_json, file_sha256, open_store  # noqa: E402


def write_store(path: Path, rows: int, dim: int, shard_rows: int) -> Path:
    """A labelled store of random unit vectors (audio, image), as `ibdc embed` lays it out."""
    generator = torch.Generator().manual_seed(0)
    shards = []
    for number, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        tensors = {
            m: torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=-1)
            for m in ("audio", "image")
        }
        tensors["labels"] = torch.arange(start, start + n) % 10
        tensors["row"] = torch.arange(start, start + n)
        name = f"shard-{number:05d}.safetensors"
        atomic_save_tensors(path / name, tensors)
        shards.append({"file": name, "rows": n, "sha256": file_sha256(path / name)})
    index = {
        "format": "ibdc-store",
        "format_version": 1,
        "num_rows": rows,
        "modalities": {"audio": dim, "image": dim},
        "class_names": [str(c) for c in range(10)],
        "labeled": True,
        "encoder": {"preset": "imagebind_huge", "weights": "random-init", "seed": 0, "out_dim": dim},
        "shards": shards,
    }
    atomic_write_json(path / "index.json", index)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=1024, help="imagebind_huge's embedding size")
    parser.add_argument("--shard-rows", type=int, default=16_384, help="ibdc embed's default")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(write_store(Path(tmp) / "store", args.rows, args.dim, args.shard_rows))
        size = sum((store.path / s["file"]).stat().st_size for s in store.index["shards"])
        loads, hashes = [], []
        for _ in range(args.repeats):
            began = time.perf_counter()
            store.load()
            loads.append(time.perf_counter() - began)
            began = time.perf_counter()
            for shard in store.index["shards"]:
                file_sha256(store.path / shard["file"])
            hashes.append(time.perf_counter() - began)
    load, hashing = statistics.median(loads), statistics.median(hashes)
    result = {
        "rows": args.rows,
        "dim": args.dim,
        "shards": -(-args.rows // args.shard_rows),
        "store_mib": round(size / 2**20, 1),
        "repeats": args.repeats,
        "load_s": round(load, 6),
        "hash_s": round(hashing, 6),  # microseconds: a small store hashes in under 1 ms
        "read_s": round(load - hashing, 6),
        "hash_over_read": round(hashing / max(load - hashing, 1e-9), 2),
        "hash_share_of_load": round(hashing / load, 2),
        "hash_mib_per_s": round(size / 2**20 / hashing, 1),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
