"""Recipe: bind modalities to a frozen anchor tower, the way ImageBind binds them to images (`ibdc bind`).

ImageBind (Girdhar et al., 2023) keeps its image tower frozen and trains each other modality's tower
(preprocessor, trunk, head) with InfoNCE on (image, X) pairs, so every modality lands in the image
space. `ibdc bind` does the same on the user's own manifest, starting from a small random-init preset or
any `--checkpoint`, and writes a checkpoint that `--checkpoint` accepts everywhere.

`run_bind` reads top to bottom (`bind_encoder` is its keyword form):
1. check the request and the manifest before any model work: at least two modalities, the anchor among
   them, every row has an anchor cell, every other cell names a file of a known format
   (`data.rows.present_cells`); split the rows (seeded) into training rows and held-out rows;
2. decode: load the starting encoder and give a bound audio tower its input frontend
   (`--audio-frontend`, `encoders.frontends`), decode and preprocess every row once, into memory
   (`data.pairs.load_rows`). The frozen anchor tower runs over all rows once, and its raw outputs are
   centred on their mean over the training rows: a random tower maps every input close to one
   direction, and InfoNCE against near-identical targets has nothing to learn;
3. train the other towers with symmetric InfoNCE against the fixed anchor embeddings (AdamW, linear
   warm-up, cosine decay: the building blocks of `encoders.training`). Each epoch ends with a
   safetensors checkpoint in `.OUT.partial/` (`training_state`), so an interrupted run continues with
   --resume;
4. measure held-out retrieval before and after (`encoders.metrics`);
5. write the full state dict plus the anchor centre (`ibdc.center.<anchor>`) and JSON metadata
   atomically.

The embedding space of the result is `Encoder.embed(m, x) = normalize(forward_raw(m, x) - center_m)`,
exactly what training optimised, so `load_encoder(preset, checkpoint=out)` reproduces it bit for bit.

Under torchrun / accelerate launch the main process binds on its device and the others return at once:
one tower on a few thousand rows does not need data parallelism.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import torch
import torch.nn.functional as F

from ibdc_cli import __version__, tracking
from ibdc_cli.config import BindConfig, BindPrecision
from ibdc_cli.data.manifest import ALIASES, Manifest, read_manifest
from ibdc_cli.data.pairs import load_rows
from ibdc_cli.data.preprocess import PREPROCESSING
from ibdc_cli.data.rows import present_cells
from ibdc_cli.encoders.imagebind import CENTER_PREFIX, MODALITY_KEYS, WHITEN_PREFIX, Encoder, load_encoder
from ibdc_cli.encoders.metrics import describe_metrics, epoch_metrics, held_out_metrics, mean_cosine
from ibdc_cli.encoders.training import (
    TARGETS,
    TOWER_PARTS,
    averaged_weights,
    bind_loss,
    class_means,
    copy_weights,
    learning_rate,
    make_optimizer,
    trainable_parameters,
    update_average,
)
from ibdc_cli.errors import IbdcError
from ibdc_cli.runtime import (
    announce,
    encoder_words,
    log,
    process_state,
    progress_bar,
    raise_job_error,
    resolve_device,
    start_output_job,
)
from ibdc_cli.space import SPACE_MAPS, SpaceMap, fit_space_map, map_embeddings
from ibdc_cli.store import atomic_save_tensors, file_sha256, partial_dir
from ibdc_cli.training_state import load_training_state, save_training_state

BOUND_FORMAT = "ibdc-bound-encoder"
BOUND_VERSION = 1


@dataclass
class BindResult:
    """What `bind_encoder` made. `encoder` is the trained model in memory (eval mode), equal to
    `load_encoder(preset, checkpoint=out)`; on non-main processes `encoder` is None and `metadata` empty."""

    out: Path
    encoder: Encoder | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def before(self) -> dict[str, dict[str, float]]:
        return self.metadata.get("metrics", {}).get("before", {})

    @property
    def after(self) -> dict[str, dict[str, float]]:
        return self.metadata.get("metrics", {}).get("after", {})


# ----------------------------------------------------------------------------------------------------
# the recipe


def bind_encoder(
    manifest_path: str | Path, modalities: list[str], anchor: str, out: str | Path, **options
) -> BindResult:
    """Keyword form of `run_bind`: `options` are `BindConfig` fields (model, checkpoint, epochs, lr, ...),
    with its defaults.

    >>> result = bind_encoder("train.csv", ["image", "audio"], "image", "enc.safetensors", epochs=30)
    >>> result.after["audio"]["label_r1_to_anchor"]        # held-out audio->image, top-1 of the same class
    >>> load_encoder("imagebind_tiny", checkpoint="enc.safetensors").embed("audio", x)   # [B, 256]
    """
    config = BindConfig(
        manifest=str(manifest_path), modalities=list(modalities), anchor=anchor, out=str(out), **options
    )
    return run_bind(config)


def run_bind(config: BindConfig) -> BindResult:
    """Train the towers of `config.modalities` other than `config.anchor` to meet the frozen anchor tower;
    write the checkpoint `config.out` (see the module docstring). Its metadata records the config, so
    `ibdc bind --config enc.safetensors` binds again with the same settings."""
    started = time.time()
    out = Path(config.out)
    anchor = ALIASES.get(config.anchor.strip().lower(), config.anchor.strip().lower())
    settings = _settings(config)

    # 1. check
    _check_request(config.modalities, anchor, out, config.overwrite, settings)
    bound = [m for m in config.modalities if m != anchor]
    state = process_state(config.device)
    split = _check_manifests(config.manifest, config.val_manifest, config.modalities, anchor, settings)

    # 2. decode: the starting encoder, on the main process only, then every row once
    encoder = load_encoder(config.model, checkpoint=config.checkpoint, random_init=config.random_init, seed=config.seed)
    _set_frontends(encoder, bound, config.audio_frontend)
    if state.num_processes > 1:
        log(f"bind trains on the main process only; the other {state.num_processes - 1} process(es) exit", state)
        if not state.is_main_process:
            return BindResult(out=out, encoder=None)
    device = resolve_device(state, config.device)
    encoder.to(device)
    what = {
        "encoder": encoder_words(encoder.describe()),
        "precision": config.precision,
        "bound": f"{','.join(bound)} to {anchor}",
    }
    announce("bind", state, device=device, **what, out=out)

    with contextlib.ExitStack() as stack:
        job = _job_record(config, anchor, encoder, split, settings)
        work = partial_dir(out)
        # state None: a world of one (the other processes have returned). A second bind to this --out
        # exits 2 here, touching nothing.
        start_output_job(stack, None, out, work, job, config.resume)
        resuming = config.resume and (work / "state.safetensors").exists()
        if config.resume and not resuming:
            log(f"--resume: no finished epoch in {work}; starting from the beginning")
        data, val_data = _decode(encoder, split, config, anchor, device, work)
        if resuming:
            log(f"resuming the unfinished bind in {work}")
        training = _training(config, encoder, anchor, bound, split, data, val_data, work, resuming, started)

        # 3. train
        logs = Path(config.log_dir) if config.log_dir is not None else out.parent / f"{out.stem}-logs"
        with tracking.run(list(config.log_with), out.stem, logs, {**job, "workers": config.workers}):
            trained = train_towers(training)

        # 4. measure
        after = training.evaluate()
        encoder.model.eval()

        # 5. write
        metadata = _metadata(config, anchor, bound, encoder, split, training, trained, after, job, started)
        write_checkpoint(out, encoder, metadata)
        shutil.rmtree(work, ignore_errors=True)
        encoder.checkpoint = file_sha256(out)
        return BindResult(out=out, encoder=encoder, metadata=metadata)


def _settings(config: BindConfig) -> dict[str, Any]:
    """The settings that make the trained towers what they are (the job's identity, for --resume)."""
    names = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "temperature", "label_positives")
    settings = {name: getattr(config, name) for name in names}
    settings.update(
        targets=config.targets,
        anchor_map=config.anchor_map,
        audio_frontend=config.audio_frontend,
        augment=config.augment,
        ema=config.ema,
        precision=config.precision,
        val_fraction=0.0 if config.val_manifest is not None else config.val_fraction,
        seed=config.seed,
    )
    return settings


def _job_record(config: BindConfig, anchor: str, encoder: Encoder, split: _Split, settings: dict) -> dict:
    return {
        "preset": config.model,
        "start": encoder.describe()["weights"],
        "modalities": config.modalities,
        "anchor": anchor,
        "manifest_sha256": split.manifest.sha256,
        "val_manifest_sha256": None if config.val_manifest is None else split.held_out.sha256,
        **settings,
    }


# ----------------------------------------------------------------------------------------------------
# 1. check: the request, the manifests, the split of the rows


def _check_request(modalities: list[str], anchor: str, out: Path, overwrite: bool, settings: dict) -> None:
    if len(modalities) < 2:
        raise IbdcError(
            f"--modalities {','.join(modalities)}: bind needs the anchor and at least one other modality, "
            "e.g. --modalities image,audio --anchor image"
        )
    if anchor not in modalities:
        raise IbdcError(f"--anchor {anchor} is not among --modalities {','.join(modalities)}")
    if out.suffix != ".safetensors":
        raise IbdcError(f"--out {out}: a bound encoder is written as a .safetensors file")
    if out.is_dir():
        raise IbdcError(f"--out {out} is a directory; a bound encoder is one .safetensors file")
    if out.exists() and not overwrite:
        raise IbdcError(f"{out} exists; choose another --out or pass --overwrite")
    if settings["epochs"] < 1 or settings["batch_size"] < 2:
        raise IbdcError("--epochs must be at least 1 and --batch-size at least 2 (InfoNCE needs negatives)")
    if settings["lr"] <= 0 or settings["temperature"] <= 0:
        raise IbdcError("--lr and --temperature must be positive")
    if settings["weight_decay"] < 0 or settings["warmup_epochs"] < 0:
        raise IbdcError("--weight-decay and --warmup-epochs must not be negative")
    if settings["targets"] not in TARGETS:
        raise IbdcError(f"--targets {settings['targets']}: choose one of {', '.join(TARGETS)}")
    if settings["anchor_map"] not in SPACE_MAPS:
        raise IbdcError(f"--anchor-map {settings['anchor_map']}: choose one of {', '.join(SPACE_MAPS)}")
    if settings["precision"] not in get_args(BindPrecision):
        raise IbdcError(
            f"--precision {settings['precision']}: choose one of {', '.join(get_args(BindPrecision))} (fp16 "
            "training would need loss scaling, which bind does not do)"
        )
    if settings["audio_frontend"] != "auto" and ("audio" not in modalities or anchor == "audio"):
        raise IbdcError(
            f"--audio-frontend {settings['audio_frontend']}: only a bound (trained) audio tower reads a frontend; "
            "leave it at auto"
        )
    if not 0 <= settings["ema"] < 1:
        raise IbdcError(f"--ema must be in [0, 1) (0: off), not {settings['ema']}")
    if not 0 <= settings["val_fraction"] < 1:
        raise IbdcError(f"--val-fraction must be in [0, 1), not {settings['val_fraction']}")


def _set_frontends(encoder: Encoder, bound: list[str], audio_frontend: str) -> None:
    """Give a bound audio tower its `--audio-frontend` (`encoders.frontends`): `auto` is `envelope` from
    random init, else what the starting checkpoint's audio tower was trained on. A frozen tower keeps its
    own: its weights were trained for it."""
    if "audio" not in bound:
        return
    if audio_frontend == "auto":
        audio_frontend = "envelope" if encoder.checkpoint is None else encoder.frontends.get("audio", "logmel")
    if audio_frontend == "logmel":
        encoder.frontends.pop("audio", None)
    else:
        encoder.frontends["audio"] = audio_frontend


@dataclass
class _Split:
    """The checked rows of a bind: `train_rows` of `manifest` train the towers, `val_rows` of `held_out`
    (the manifest itself, or --val-manifest) measure them. `has` / `held_out_has`: which cells each row
    has (`present_cells`); `labels` `[N]` / `held_out_labels` `[N_held_out]` int64: ids of `manifest`'s
    classes (-1 where there are none)."""

    manifest: Manifest
    has: dict[str, list[bool]]
    labels: torch.Tensor
    train_rows: list[int]
    held_out: Manifest
    held_out_has: dict[str, list[bool]]
    held_out_labels: torch.Tensor
    val_rows: list[int]


def _check_manifests(
    manifest_path: str | Path, val_manifest: str | Path | None, modalities: list[str], anchor: str, settings: dict
) -> _Split:
    """Read and check the manifest (and --val-manifest) without decoding anything; split the rows."""
    manifest = read_manifest(manifest_path, modalities, require_label=False)
    if settings["label_positives"] and not manifest.class_names:
        raise IbdcError(f"--label-positives needs a 'label' column; {manifest.path} has none")
    if settings["targets"] == "class-means" and not manifest.class_names:
        raise IbdcError(f"--targets class-means needs a 'label' column; {manifest.path} has none")
    has = present_cells(manifest, modalities, anchor)
    labels = torch.tensor(manifest.labels, dtype=torch.int64)
    if val_manifest is not None:  # a split of its own (another speaker, say): every manifest row trains
        held_out = read_manifest(val_manifest, modalities, require_label=False)
        held_out_has = present_cells(held_out, modalities, anchor)
        held_out_labels = labels_in(held_out, manifest)
        train_rows, val_rows = list(range(len(manifest.rows))), list(range(len(held_out.rows)))
    else:
        held_out, held_out_has, held_out_labels = manifest, has, labels
        train_rows, val_rows = split_rows(len(manifest.rows), settings["val_fraction"], settings["seed"])
    for m in modalities:
        if m != anchor and sum(has[m][r] for r in train_rows) < 2:
            raise IbdcError(f"{manifest.path}: fewer than 2 training rows have a {m!r} cell; nothing to bind")
    return _Split(manifest, has, labels, train_rows, held_out, held_out_has, held_out_labels, val_rows)


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of rows 0..n-1 into (training rows, held-out rows), each sorted."""
    n_val = round(n * val_fraction)
    if val_fraction > 0:
        n_val = max(n_val, 2)  # retrieval over one row would always succeed
    if n - n_val < 2:
        raise IbdcError(f"{n} rows leave fewer than 2 training rows with --val-fraction {val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def labels_in(held_out: Manifest, manifest: Manifest) -> torch.Tensor:
    """The labels of `held_out`'s rows as ids of `manifest`'s classes (`[N]` int64, -1 when unlabelled)."""
    if not held_out.class_names or not manifest.class_names:  # no labels, or none to compare them with
        return torch.full((len(held_out.rows),), -1, dtype=torch.int64)
    lookup = {name: i for i, name in enumerate(manifest.class_names)}
    unknown = sorted(set(held_out.class_names) - set(lookup))
    if unknown:
        raise IbdcError(f"--val-manifest {held_out.path}: label {unknown[0]!r} has no training rows in {manifest.path}")
    return torch.tensor([lookup[held_out.class_names[y]] for y in held_out.labels], dtype=torch.int64)


# ----------------------------------------------------------------------------------------------------
# 2. decode: the anchor's space


def _map_anchor(
    encoder: Encoder, anchor: str, raw: torch.Tensor, train_rows: list[int], anchor_map: str
) -> tuple[SpaceMap | None, torch.Tensor, dict[str, float], str]:
    """The anchor's map (step 2 of the module docstring), fitted on the training rows of its raw outputs
    `raw` `[N, D]` and set in `encoder`. Returns the map (None when kept from the starting checkpoint), the
    anchor embeddings `[N, D]`, the mean cosine between training rows raw and mapped, and how it was made.

    A starting checkpoint that already maps the anchor (one made by an earlier bind) keeps its map: the
    towers bound then stay in the space that this bind's towers join.
    """
    kept = anchor in encoder.centers or anchor in encoder.whiteners
    anchor_space = None if kept else fit_space_map(raw[train_rows], anchor_map)
    if anchor_space is not None:
        encoder.centers[anchor] = anchor_space.center.to(encoder.device)
        if anchor_space.whitening is not None:
            encoder.whiteners[anchor] = anchor_space.whitening.to(encoder.device)
    anchor_embeddings = map_embeddings(raw, anchor_space)  # [N, D]
    anisotropy = {"raw": mean_cosine(F.normalize(raw[train_rows], dim=-1))}
    anisotropy["mapped"] = mean_cosine(anchor_embeddings[train_rows])
    how = "kept from the starting checkpoint" if kept else anchor_map
    log(
        f"anchor {anchor}: mean cosine between training rows {anisotropy['raw']:.3f} raw, "
        f"{anisotropy['mapped']:.3f} mapped ({how})"
    )
    return anchor_space, anchor_embeddings, anisotropy, how


def _decode(encoder: Encoder, split: _Split, config: BindConfig, anchor: str, device, work: Path):
    """Every row of the manifest (and of --val-manifest) decoded once (`data.pairs.load_rows`): `(data,
    val_data)`. Bad media leaves nothing behind, but an earlier run's finished epoch is kept for --resume."""
    error = data = val_data = None
    try:
        common = (config.modalities, anchor)
        data = load_rows(encoder, split.manifest, *common, split.has, config.batch_size, config.workers, device)
        val_data = data
        if config.val_manifest is not None:
            val_data = load_rows(
                encoder, split.held_out, *common, split.held_out_has, config.batch_size, config.workers, device
            )
    except IbdcError as exc:
        error = exc
    raise_job_error(None, work, error, keep=(work / "state.safetensors").exists())
    return data, val_data


@dataclass
class BindTraining:
    """One bind's training, built once (`_training`): what `train_towers` trains and how it is measured."""

    config: BindConfig
    encoder: Encoder
    bound: list[str]
    """The modalities whose towers train."""
    data: dict[str, Any]
    """The decoded training manifest (`data.pairs.load_rows`)."""
    anchor_embeddings: torch.Tensor
    """`[N, D]` the anchor's mapped outputs, the fixed targets of InfoNCE."""
    labels: torch.Tensor | None
    """`[N]` class ids for label positives or class-mean targets; None: row positives."""
    class_targets: torch.Tensor | None
    """`[C, D]` anchor class means (--targets class-means); None: rows."""
    train_rows: list[int]
    val_data: dict[str, Any]
    val_anchor: torch.Tensor
    val_labels: torch.Tensor
    val_rows: list[int]
    anchor_mean_cosine: dict[str, float]
    anchor_map: str
    """How the anchor's map was made (the --anchor-map, or kept from the starting checkpoint)."""
    work: Path
    resuming: bool
    started: float

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Held-out retrieval metrics of every bound tower (`encoders.metrics.held_out_metrics`)."""
        return {
            m: held_out_metrics(
                self.encoder, m, self.val_data, self.val_anchor, self.val_labels, self.val_rows, self.config.batch_size
            )
            for m in self.bound
        }


def _training(config, encoder, anchor, bound, split: _Split, data, val_data, work, resuming, started) -> BindTraining:
    """The anchor's map and targets, and the rows that train and measure the towers."""
    anchor_space, anchor_embeddings, anisotropy, how = _map_anchor(
        encoder, anchor, data["anchor_raw"], split.train_rows, config.anchor_map
    )
    val_anchor = (
        anchor_embeddings if config.val_manifest is None else map_embeddings(val_data["anchor_raw"], anchor_space)
    )
    class_targets = None
    if config.targets == "class-means":
        train = split.train_rows
        class_targets = class_means(anchor_embeddings[train], split.labels[train], len(split.manifest.class_names))
    return BindTraining(
        config=config,
        encoder=encoder,
        bound=bound,
        data=data,
        anchor_embeddings=anchor_embeddings,
        labels=split.labels if config.label_positives or class_targets is not None else None,
        class_targets=class_targets,
        train_rows=split.train_rows,
        val_data=val_data,
        val_anchor=val_anchor,
        val_labels=split.held_out_labels,
        val_rows=split.val_rows,
        anchor_mean_cosine=anisotropy,
        anchor_map=how,
        work=work,
        resuming=resuming,
        started=started,
    )


# ----------------------------------------------------------------------------------------------------
# 3. train: the loop


def train_towers(training: BindTraining) -> dict[str, Any]:
    """The training loop; returns `before` (held-out metrics of the starting towers), the per-epoch mean
    loss `history` and `earlier_seconds`, the wall time of the interrupted runs this one resumes.

    Steps per epoch = training rows (with a bound cell) // batch size: each epoch is a fresh shuffle, and
    the incomplete last batch is dropped, as in CLIP training, so that every step has as many negatives.
    """
    config, encoder, bound, data = training.config, training.encoder, training.bound, training.data
    device, work, evaluate = encoder.device, training.work, training.evaluate
    model = encoder.model
    params = trainable_parameters(model, bound)
    optimizer = make_optimizer(params, config.lr, config.weight_decay)
    has_any = torch.stack([data[f"slot.{m}"] >= 0 for m in bound]).any(0)
    rows = torch.tensor([r for r in training.train_rows if has_any[r]], dtype=torch.int64)
    batch_size = min(config.batch_size, len(rows))
    steps_per_epoch = len(rows) // batch_size
    total_steps = config.epochs * steps_per_epoch
    warmup = min(total_steps, round(config.warmup_epochs * steps_per_epoch))
    shuffle = torch.Generator().manual_seed(config.seed)

    # Drop path and dropout (the huge preset's audio tower) draw from torch's global stream: seed it
    # for this run only, and keep it in the checkpoint so that a resumed run draws the same numbers.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        state_file = work / "state.safetensors"
        average = {n: p.detach().clone() for n, p in params.items()} if config.ema else None
        generators = _random_streams(shuffle, device)
        if training.resuming:
            saved = load_training_state(
                state_file, params, optimizer, generators, averages=average, what="bind checkpoint"
            )
            start, history, val_history = saved["epoch"], saved["history"], saved["val_history"]
            before, earlier = saved["before"], saved["seconds"]
        else:
            start, history, val_history, before, earlier = 0, [], [], evaluate(), 0.0
        todo = (config.epochs - start) * steps_per_epoch
        with progress_bar(f"bind {','.join(bound)}", todo, fields="loss {task.fields[loss]}") as advance:
            for epoch in range(start, config.epochs):
                model.train()
                order_rows = rows[torch.randperm(len(rows), generator=shuffle)]
                losses = []
                for k in range(steps_per_epoch):
                    step = epoch * steps_per_epoch + k
                    for group in optimizer.param_groups:
                        group["lr"] = learning_rate(step, total_steps, warmup, config.lr)
                    batch = order_rows[k * batch_size : (k + 1) * batch_size]
                    loss = bind_loss(
                        encoder,
                        bound,
                        data,
                        training.anchor_embeddings,
                        training.labels,
                        batch,
                        config.temperature,
                        config.augment,
                        training.class_targets,
                        config.precision,
                    )
                    optimizer.zero_grad(set_to_none=True)
                    if loss.requires_grad:
                        loss.backward()
                        optimizer.step()
                        if average is not None:
                            update_average(average, params, config.ema)
                    losses.append(float(loss.detach()))
                    advance(1, loss=f"{losses[-1]:.4f}")
                    tracking.log({"loss": losses[-1], "lr": optimizer.param_groups[0]["lr"]}, step=step)
                history.append(round(sum(losses) / len(losses), 6))
                with averaged_weights(params, average):  # the weights that would be saved
                    val_history.append(epoch_metrics(evaluate()))
                tracking.log(
                    {
                        "epoch/loss": history[-1],
                        **{f"held_out/{m}/{k}": v for m, values in val_history[-1].items() for k, v in values.items()},
                    },
                    step=epoch + 1,
                )
                held_out = describe_metrics(val_history[-1])
                log(f"epoch {epoch + 1}/{config.epochs}: mean loss {history[-1]:.4f}; {held_out}")
                elapsed = earlier + time.time() - training.started
                records = {
                    "epoch": epoch + 1,
                    "history": history,
                    "val_history": val_history,
                    "before": before,
                    "seconds": elapsed,
                }
                save_training_state(state_file, params, optimizer, generators, records, averages=average)
        if average is not None:  # the encoder keeps the averaged weights
            copy_weights(params, average)
        model.eval()
        model.requires_grad_(False)
    return {"before": before, "history": history, "val_history": val_history, "earlier_seconds": earlier}


def _random_streams(shuffle: torch.Generator, device: torch.device) -> dict[str, torch.Generator]:
    """The random streams a bind draws from, kept with every epoch's state: its shuffle, torch's global
    stream (drop path, dropout, `--augment`) and, on a GPU, the device's."""
    streams = {"shuffle": shuffle, "torch": torch.default_generator}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        streams["cuda"] = torch.cuda.default_generators[index]
    return streams


# ----------------------------------------------------------------------------------------------------
# 5. write: the output file


def _metadata(config, anchor, bound, encoder, split: _Split, training: BindTraining, trained, after, job, started):
    """The checkpoint's `ibdc` metadata: what was bound to what, how, on which rows, with what result."""
    return {
        "format": BOUND_FORMAT,
        "format_version": BOUND_VERSION,
        "ibdc_version": __version__,
        "preset": config.model,
        "modalities": config.modalities,
        "anchor": anchor,
        "bound": bound,
        "trained_parts": {m: [f"{part}.{MODALITY_KEYS[m]}" for part in TOWER_PARTS] for m in bound},
        "anchor_map": training.anchor_map,
        "frontends": dict(encoder.frontends),
        "centers": sorted(encoder.centers),
        "whiteners": sorted(encoder.whiteners),
        "anchor_mean_cosine": training.anchor_mean_cosine,
        "start": {"weights": job["start"], "seed": config.seed if job["start"] == "random-init" else None},
        "settings": {**_settings(config), "workers": config.workers, "device": str(encoder.device)},
        "config": {
            **config.recorded(),
            "manifest": str(Path(config.manifest).resolve()),
            "val_manifest": None if config.val_manifest is None else str(Path(config.val_manifest).resolve()),
        },
        "rows": {"train": len(split.train_rows), "held_out": len(split.val_rows)},
        "manifest": _manifest_record(split.manifest),
        "val_manifest": None if config.val_manifest is None else _manifest_record(split.held_out),
        "class_names": split.manifest.class_names,
        "preprocessing": {
            m: {**PREPROCESSING[m], **({"frontend": encoder.frontends[m]} if m in encoder.frontends else {})}
            for m in config.modalities
        },
        "metrics": {"before": trained["before"], "after": after},
        "loss_history": trained["history"],
        "held_out_history": trained["val_history"],
        "wall_time_s": round(trained["earlier_seconds"] + time.time() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _manifest_record(manifest: Manifest) -> dict[str, Any]:
    return {"path": str(manifest.path.resolve()), "sha256": manifest.sha256, "rows": len(manifest.rows)}


def write_checkpoint(out: Path, encoder: Encoder, metadata: dict[str, Any]) -> None:
    """The full state dict (every modality, so `load_encoder` finds every key) plus `ibdc.center.<m>`
    tensors, with `metadata` as JSON under "ibdc" (its "preset" is what `load_encoder` checks)."""
    # clone: safetensors refuses tensors that share memory
    tensors = {k: v.detach().cpu().clone() for k, v in encoder.model.state_dict().items()}
    tensors.update({CENTER_PREFIX + m: c.detach().cpu().clone() for m, c in encoder.centers.items()})
    tensors.update({WHITEN_PREFIX + m: w.detach().cpu().clone() for m, w in encoder.whiteners.items()})
    atomic_save_tensors(out, tensors, metadata={"ibdc": json.dumps(metadata)})


METRIC_LINES = (
    ("r1_to_anchor", "{m}->{a} R@1 (chance {chance})", "%"),
    ("r1_from_anchor", "{a}->{m} R@1 (chance {chance})", "%"),
    ("label_r1_to_anchor", "{m}->{a} same-label R@1", "%"),
    ("label_r1_from_anchor", "{a}->{m} same-label R@1", "%"),
    ("cos_same_class", "cosine, same class", ""),
    ("cos_other_class", "cosine, other classes", ""),
    ("cos_class_means", "cosine of class means, same class", ""),
    ("cos_class_means_other", "cosine of class means, other classes", ""),
)


def format_report(result: BindResult) -> str:
    """The before/after table that `ibdc bind` prints."""
    meta = result.metadata
    rows, epochs = meta["rows"], meta["settings"]["epochs"]
    lines = [
        f"bound {','.join(meta['bound'])} to {meta['anchor']} ({meta['preset']}, {epochs} epoch"
        f"{'s' if epochs != 1 else ''}, {rows['train']} training rows, {rows['held_out']} held out, "
        f"{meta['wall_time_s']:.0f} s)"
    ]
    for m in meta["bound"]:
        before, after = result.before.get(m, {}), result.after.get(m, {})
        if "r1_to_anchor" not in after:
            lines.append(f"  {m}: too few held-out rows for metrics (--val-fraction)")
            continue
        chance = f"{100 * after['chance_r1']:.1f} %"
        heading = f"held-out {m}, {after['rows']} rows"
        lines.append(f"  {heading:<40}{'before':>9}{'after':>9}")
        for key, label, unit in METRIC_LINES:
            if key not in after:
                continue
            fmt = "{:>7.1f} %" if unit else "{:>9.3f}"
            scale = 100 if unit else 1
            name = label.format(m=m, a=meta["anchor"], chance=chance)
            lines.append(f"    {name:<38}{fmt.format(scale * before[key])}{fmt.format(scale * after[key])}")
    lines.append(f"wrote {result.out}")
    return "\n".join(lines)
