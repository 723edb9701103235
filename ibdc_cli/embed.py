"""Recipe: embed a manifest with a frozen ImageBind encoder into an embedding store (`ibdc embed`).

Reads top to bottom:
1. read and check the manifest (columns, labels, every cell's format and file) before any model work;
2. split the rows into fixed chunks; chunk k belongs to process k mod N, so 1 or N processes (and any
   resume) compute the same batches;
3. each chunk is decoded in DataLoader workers, embedded, and saved atomically as a part file in
   `.STORE.partial/` — an interrupted run resumes from the parts it has;
4. the main process merges the parts in row order into shards, writes index.json and renames the
   finished store into place. Bad input leaves no store and no partial directory behind.

The rows come from a CSV/JSONL manifest, an `hf:` dataset (`data.hf`, read as a manifest) or `wds:`
WebDataset shards (`data.wds`): those are not listed first; each tar shard is one part (shard k belongs
to process k mod N), streamed and embedded in groups of `--chunk-rows` samples, and the label ids are
made when the parts are merged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ibdc_cli.config import EmbedConfig
from ibdc_cli.data.hf import is_hf
from ibdc_cli.data.manifest import read_manifest
from ibdc_cli.data.preprocess import PREPROCESSING, MediaError
from ibdc_cli.data.rows import batch_error, row_loader, usable_rows
from ibdc_cli.data.wds import WdsSource, is_wds, merge_labels, read_wds
from ibdc_cli.encoders.imagebind import load_encoder
from ibdc_cli.errors import IbdcError
from ibdc_cli.runtime import (
    announce,
    autocast,
    check_precision,
    encoder_words,
    log,
    process_state,
    progress_bar,
    raise_job_error,
    resolve_device,
    start_output_job,
)
from ibdc_cli.store import (
    INDEX_FILE,
    atomic_save_tensors,
    drop_damaged,
    partial_dir,
    read_tensors,
    write_store,
)


@dataclass
class EmbedResult:
    store: Path
    rows: int
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def embed_manifest(manifest_path: str | Path, modalities: list[str], out: str | Path, **options) -> EmbedResult:
    """Keyword form of `run_embed`: `options` are `EmbedConfig` fields (model, checkpoint, seed, batch_size,
    workers, device, precision, resume, skip_bad, overwrite, ...), with its defaults.

        >>> embed_manifest("data/train.csv", ["image", "audio"], "stores/train", model="imagebind_tiny")
    """
    config = EmbedConfig(manifest=str(manifest_path), modalities=list(modalities), out=str(out), **options)
    return run_embed(config)


HF_OPTIONS = ("split", "image_column", "audio_column", "text_column", "depth_column", "thermal_column", "label_column")


def read_rows(config: EmbedConfig):
    """The rows to embed: a manifest (`read_manifest`), or an `hf:` dataset (`data.hf.read_hf`), checked."""
    given = [name for name in HF_OPTIONS if getattr(config, name) is not None]
    columns = {name.removesuffix("_column"): getattr(config, name) for name in HF_OPTIONS[1:]}
    if is_hf(config.manifest):
        from ibdc_cli.data.hf import read_hf  # imports `datasets` only when it reads

        return read_hf(config.manifest, config.modalities, split=config.split, columns=columns)
    if is_wds(config.manifest):
        if config.split is not None:
            raise IbdcError("--split is for hf: inputs; wds: shards are one split (name its shards instead)")
        return read_wds(config.manifest, config.modalities, columns=columns)
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise IbdcError(
            f"{flag} is for hf: and wds: inputs; {config.manifest} is a manifest (its columns are named by it)"
        )
    return read_manifest(config.manifest, config.modalities, require_label=False)


def run_embed(config: EmbedConfig) -> EmbedResult:
    """Embed `config.modalities` of every row of `config.manifest` into the store directory `config.out`; see
    the module docstring."""
    started = time.time()
    out = Path(config.out)
    check_precision(config.precision)
    if config.batch_size < 1 or config.chunk_rows < 1:
        raise IbdcError("--batch-size must be at least 1")
    if config.workers < 0:
        raise IbdcError(f"--workers must not be negative, not {config.workers} (0 decodes in the main process)")
    if out.is_file():
        raise IbdcError(f"--out {out} is a file; an embedding store is a directory: choose another --out")
    state = process_state(config.device)
    manifest = read_rows(config)
    if (out / INDEX_FILE).exists() and not config.overwrite:
        raise IbdcError(f"{out} already holds a store; choose another --out or pass --overwrite")
    if out.exists() and not (out / INDEX_FILE).exists() and any(out.iterdir()):
        raise IbdcError(f"{out} exists and is not an ibdc store; choose another --out")
    shards = isinstance(manifest, WdsSource)  # streamed: its rows are known once they are read
    rows, skipped = ([], []) if shards else usable_rows(manifest, config.modalities, config.skip_bad)
    if not rows and not shards:
        raise IbdcError(f"{manifest.path}: no usable rows")

    encoder = load_encoder(config.model, checkpoint=config.checkpoint, random_init=config.random_init, seed=config.seed)
    torch_device = resolve_device(state, config.device)
    encoder.to(torch_device)
    announce(
        "embed",
        state,
        device=torch_device,
        encoder=encoder_words(encoder.describe()),
        precision=config.precision,
        rows=None if shards else len(rows),
        shards=len(manifest.shards) if shards else None,
        out=out,
    )
    with contextlib.ExitStack() as stack:
        job = {
            "manifest_sha256": manifest.job_fingerprint if shards else manifest.sha256,
            # the columns and split of an hf: input (its path may move between a run and its resume)
            "source": manifest.extensions if shards else {k: v for k, v in manifest.record().items() if k != "path"},
            "modalities": config.modalities,
            "encoder": encoder.describe(),
            "preprocessing": {m: PREPROCESSING[m] for m in config.modalities},
            "precision": config.precision,
            "batch_size": config.batch_size,
            "chunk_rows": config.chunk_rows,
            "rows": rows,
        }
        work = partial_dir(out)
        start_output_job(stack, state, out, work, job, config.resume)
        error = None

        # the parts: fixed chunks of the rows, or one per shard
        chunks = [rows[i : i + config.chunk_rows] for i in range(0, len(rows), config.chunk_rows)]
        num_parts, noun = (len(manifest.shards), "shards") if shards else (len(chunks), "chunks")
        mine = [k for k in range(num_parts) if k % state.num_processes == state.process_index]
        if config.resume:
            drop_damaged([work / f"part-{k:06d}.safetensors" for k in mine], log)
        todo = [k for k in mine if not (work / f"part-{k:06d}.safetensors").exists()]
        if len(todo) < len(mine):
            log(f"resuming: {len(mine) - len(todo)} of {len(mine)} {noun} already embedded", state)
        options = dict(
            batch_size=config.batch_size,
            workers=config.workers,
            precision=config.precision,
            skip_bad=config.skip_bad,
            device=torch_device,
        )
        try:
            total = len(todo) if shards else sum(len(chunks[k]) for k in todo)
            description = f"embed {','.join(config.modalities)}" + (" (shards)" if shards else "")
            with progress_bar(description, total, state) as advance:
                for k in todo:
                    part = work / f"part-{k:06d}.safetensors"
                    if shards:
                        _embed_shard(encoder, manifest, k, part, chunk_rows=config.chunk_rows, **options)
                        advance(1)
                    else:
                        _embed_chunk(encoder, manifest, chunks[k], config.modalities, part, advance=advance, **options)
        except IbdcError as exc:
            error = exc
        # a bad row in any process stops every process; a resumed run keeps the finished parts
        raise_job_error(state, work, error, keep=config.resume)
        stored = 0
        if state.is_main_process:
            stored, skipped = _finish_store(
                work, out, manifest, job, num_parts, skipped, config.overwrite, config.shard_rows
            )
        state.wait_for_everyone()
        return EmbedResult(store=out, rows=stored, skipped=skipped, seconds=time.time() - started)


def _embed_chunk(
    encoder, manifest, rows, modalities, part, *, batch_size, workers, precision, skip_bad, device, advance
) -> None:
    loader = row_loader(manifest, rows, modalities, batch_size, workers)
    outputs: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    kept: list[int] = []
    bad: list[dict] = []
    for batch in loader:
        for row, message in batch["errors"]:
            if not skip_bad:
                raise batch_error(manifest, row, message)
            bad.append({"row": row, "reason": message})
        _embed_batch(encoder, batch, outputs, kept, device=device, precision=precision)
        advance(len(batch["rows"]) + len(batch["errors"]))
    tensors = {m: torch.cat(v) if v else torch.empty(0, encoder.out_dim) for m, v in outputs.items()}
    tensors["row"] = torch.tensor(kept, dtype=torch.int64)
    labels = [manifest.labels[r] for r in kept]
    tensors["labels"] = torch.tensor(labels, dtype=torch.int64)
    atomic_save_tensors(part, tensors, metadata={"skipped": json.dumps(bad)})


def _embed_batch(encoder, batch, outputs: dict[str, list[torch.Tensor]], kept: list[int], *, device, precision):
    """Embed a `collate_rows` batch's decoded rows: each modality's embeddings appended to `outputs[m]`
    (float32, on the CPU), its rows to `kept`."""
    if not batch["rows"]:
        return
    with torch.inference_mode(), autocast(device, precision):
        for modality in outputs:
            x = batch["inputs"][modality].to(device)
            outputs[modality].append(encoder.embed(modality, x).float().cpu())
    kept.extend(batch["rows"])


def _embed_shard(encoder, source: WdsSource, index, part, *, chunk_rows, batch_size, workers, precision, skip_bad,
                 device) -> None:  # fmt: skip
    """Embed the samples of shard `index`, streamed in groups of `chunk_rows`, into the part file `part`; its
    metadata keeps what the merge needs: the shard's sample count and SHA-256, each sample's key and label."""
    modalities = source.modalities
    outputs: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    kept: list[int] = []
    labels: list[str | None] = []
    keys: list[str] = []
    bad: list[dict] = []
    hasher = hashlib.sha256()
    group: list[tuple[int, object]] = []  # (row in the shard, sample)

    def flush() -> None:
        rows = _ShardRows(source, dict(group))
        for batch in row_loader(rows, [r for r, _ in group], modalities, batch_size, workers):
            for row, message in batch["errors"]:
                if not skip_bad:
                    raise IbdcError(f"{source.shards[index]}: sample {rows.samples[row].key!r}: {message}")
                bad.append({"row": row, "key": rows.samples[row].key, "reason": message})
            _embed_batch(encoder, batch, outputs, kept, device=device, precision=precision)
        labels.extend(rows.labels.get(r) for r, _ in group)
        keys.extend(sample.key for _, sample in group)
        group.clear()

    samples = 0
    for samples, sample in enumerate(source.samples(index, hasher), start=1):
        group.append((samples - 1, sample))
        if len(group) == chunk_rows:
            flush()
    flush()
    tensors = {m: torch.cat(v) if v else torch.empty(0, encoder.out_dim) for m, v in outputs.items()}
    tensors["row"] = torch.tensor(kept, dtype=torch.int64)
    metadata = {"skipped": bad, "samples": samples, "sha256": hasher.hexdigest(), "labels": labels, "keys": keys}
    atomic_save_tensors(part, tensors, metadata={k: json.dumps(v) for k, v in metadata.items()})


class _ShardRows:
    """A group of a shard's samples as `data.rows.RowInputs` reads rows: `has`, `model_input`, by row in the
    shard. A sample's label is read here, so a bad label fails (or is skipped) as a bad cell does."""

    def __init__(self, source: WdsSource, samples: dict) -> None:
        self.source, self.samples, self.labels = source, samples, {}
        self.errors: dict[int, str] = {}
        for row, sample in samples.items():
            try:
                self.labels[row] = source.label(sample)
            except MediaError as exc:
                self.errors[row] = str(exc)

    def has(self, row: int, modality: str) -> bool:
        return True  # a missing member is the row's error, as an empty manifest cell is

    def model_input(self, row: int, modality: str):
        if row in self.errors:
            raise MediaError(self.errors[row])
        return self.source.model_input(self.samples[row], modality)


def replace_directory(new: Path, out: Path, overwrite: bool) -> None:
    """Move the finished store `new` to `out`. An old store there is renamed aside first and deleted only
    once the new one is in place, so at every moment `out` is the old store, the new one, or (between
    two renames) absent, never a half-deleted mix; a failed rename puts the old store back."""
    if not out.exists():
        new.rename(out)
        return
    if not overwrite and any(out.iterdir()):
        raise IbdcError(f"{out} appeared while embedding; not overwriting it")
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(old)
    try:
        new.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _finish_store(work, out, manifest, job, num_chunks, skipped, overwrite, shard_rows) -> tuple[int, list[dict]]:
    parts = [read_tensors(work / f"part-{k:06d}.safetensors", "partial embed") for k in range(num_chunks)]
    if isinstance(manifest, WdsSource):
        data, skipped, class_names, record = _merge_shards(parts, manifest)
    else:
        for _, metadata in parts:
            skipped = skipped + json.loads(metadata.get("skipped", "[]"))
        data = {name: torch.cat([tensors[name] for tensors, _ in parts]) for name in parts[0][0]}
        class_names, record = manifest.class_names, manifest.record()
    final = work / "store"
    if final.exists():
        shutil.rmtree(final)
    extra = {
        "preprocessing": job["preprocessing"],
        "precision": job["precision"],
        "manifest": record,
        "skipped": sorted(skipped, key=lambda s: s["row"]),
    }
    store = write_store(
        final,
        {m: data[m] for m in job["modalities"]},
        data["labels"],
        class_names=class_names,
        rows=data["row"],
        encoder=job["encoder"],
        shard_rows=shard_rows,
        index=extra,
    )
    total = store.num_rows
    replace_directory(final, out, overwrite)
    shutil.rmtree(work, ignore_errors=True)
    return total, extra["skipped"]


def _merge_shards(parts, source: WdsSource):
    """The shards' parts as one: rows numbered over the shards in order, label ids from every kept row's
    label (the manifest's rules), and the source record with each shard's samples and SHA-256."""
    offset, rows, texts, keys, skipped, shards = 0, [], [], [], [], []
    for (tensors, metadata), path in zip(parts, source.shards, strict=True):
        rows.append(tensors["row"] + offset)
        texts += json.loads(metadata["labels"])
        keys += json.loads(metadata["keys"])
        skipped += [{**s, "row": s["row"] + offset} for s in json.loads(metadata["skipped"])]
        samples = int(json.loads(metadata["samples"]))
        shards.append({"path": str(path.resolve()), "samples": samples, "sha256": json.loads(metadata["sha256"])})
        offset += samples
    data = {m: torch.cat([tensors[m] for tensors, _ in parts]) for m in source.modalities}
    data["row"] = torch.cat(rows)
    if not len(data["row"]):
        raise IbdcError(f"{source.spec}: no usable samples in {len(source.shards)} shards")
    class_names, labels = merge_labels(texts, keys, data["row"].tolist(), source.spec)
    data["labels"] = torch.tensor(labels, dtype=torch.int64)
    return data, skipped, class_names, source.record(shards, rows=offset)
