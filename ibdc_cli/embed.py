"""Recipe: embed a manifest with a frozen ImageBind encoder into an embedding store (`ibdc embed`).

Reads top to bottom:
1. read and check the manifest (columns, labels, every cell's format and file) before any model work;
2. split the rows into fixed chunks; chunk k belongs to process k mod N, so 1 or N processes (and any
   resume) compute the same batches;
3. each chunk is decoded in DataLoader workers, embedded, and saved atomically as a part file in
   `.STORE.partial/` — an interrupted run resumes from the parts it has;
4. the main process merges the parts in row order into shards, writes index.json and renames the
   finished store into place. Bad input leaves no store and no partial directory behind.
"""

from __future__ import annotations

import contextlib
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
from ibdc_cli.data.preprocess import PREPROCESSING
from ibdc_cli.data.rows import batch_error, row_loader, usable_rows
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
    if is_hf(config.manifest):
        from ibdc_cli.data.hf import read_hf  # imports `datasets` only when it reads

        columns = {name.removesuffix("_column"): getattr(config, name) for name in HF_OPTIONS[1:]}
        return read_hf(config.manifest, config.modalities, split=config.split, columns=columns)
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise IbdcError(f"{flag} is for hf: inputs; {config.manifest} is a manifest (its columns are named by it)")
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
    rows, skipped = usable_rows(manifest, config.modalities, config.skip_bad)
    if not rows:
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
        rows=len(rows),
        out=out,
    )
    with contextlib.ExitStack() as stack:
        job = {
            "manifest_sha256": manifest.sha256,
            # the columns and split of an hf: input (its path may move between a run and its resume)
            "source": {k: v for k, v in manifest.record().items() if k != "path"},
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

        chunks = [rows[i : i + config.chunk_rows] for i in range(0, len(rows), config.chunk_rows)]
        mine = [k for k in range(len(chunks)) if k % state.num_processes == state.process_index]
        if config.resume:
            drop_damaged([work / f"part-{k:06d}.safetensors" for k in mine], log)
        todo = [k for k in mine if not (work / f"part-{k:06d}.safetensors").exists()]
        if len(todo) < len(mine):
            log(f"resuming: {len(mine) - len(todo)} of {len(mine)} chunks already embedded", state)
        try:
            with progress_bar(
                f"embed {','.join(config.modalities)}", sum(len(chunks[k]) for k in todo), state
            ) as advance:
                for k in todo:
                    _embed_chunk(
                        encoder,
                        manifest,
                        chunks[k],
                        config.modalities,
                        work / f"part-{k:06d}.safetensors",
                        batch_size=config.batch_size,
                        workers=config.workers,
                        precision=config.precision,
                        skip_bad=config.skip_bad,
                        device=torch_device,
                        advance=advance,
                    )
        except IbdcError as exc:
            error = exc
        # a bad row in any process stops every process; a resumed run keeps the finished parts
        raise_job_error(state, work, error, keep=config.resume)
        stored = 0
        if state.is_main_process:
            stored, skipped = _finish_store(
                work, out, manifest, job, len(chunks), skipped, config.overwrite, config.shard_rows
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
        if batch["rows"]:
            with torch.inference_mode(), autocast(device, precision):
                for modality in modalities:
                    x = batch["inputs"][modality].to(device)
                    outputs[modality].append(encoder.embed(modality, x).float().cpu())
            kept.extend(batch["rows"])
        advance(len(batch["rows"]) + len(batch["errors"]))
    tensors = {m: torch.cat(v) if v else torch.empty(0, encoder.out_dim) for m, v in outputs.items()}
    tensors["row"] = torch.tensor(kept, dtype=torch.int64)
    labels = [manifest.labels[r] for r in kept]
    tensors["labels"] = torch.tensor(labels, dtype=torch.int64)
    atomic_save_tensors(part, tensors, metadata={"skipped": json.dumps(bad)})


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
    for _, metadata in parts:
        skipped = skipped + json.loads(metadata.get("skipped", "[]"))
    data = {name: torch.cat([tensors[name] for tensors, _ in parts]) for name in parts[0][0]}
    final = work / "store"
    if final.exists():
        shutil.rmtree(final)
    extra = {
        "preprocessing": job["preprocessing"],
        "precision": job["precision"],
        "manifest": manifest.record(),
        "skipped": sorted(skipped, key=lambda s: s["row"]),
    }
    store = write_store(
        final,
        {m: data[m] for m in job["modalities"]},
        data["labels"],
        class_names=manifest.class_names,
        rows=data["row"],
        encoder=job["encoder"],
        shard_rows=shard_rows,
        index=extra,
    )
    total = store.num_rows
    replace_directory(final, out, overwrite)
    shutil.rmtree(work, ignore_errors=True)
    return total, extra["skipped"]
