"""Recipe: bind modalities to a frozen anchor tower, the way ImageBind binds them to images (`ibdc bind`).

ImageBind (Girdhar et al., 2023) keeps its image tower frozen and trains each other modality's tower
(preprocessor, trunk, head) with InfoNCE on (image, X) pairs, so every modality lands in the image
space. `ibdc bind` does the same on the user's own manifest, starting from a small random-init preset or
any `--checkpoint`, and writes a checkpoint that `--checkpoint` accepts everywhere.

Reads top to bottom:
1. check the request and the manifest before any model work: at least two modalities, the anchor among
   them, every row has an anchor cell, every other cell names a file of a known format;
2. load the starting encoder and split the rows (seeded) into training rows and held-out rows;
3. decode and preprocess every row once, into memory. The frozen anchor tower runs over all rows once,
   and its raw outputs are centred on their mean over the training rows: a random tower maps every
   input close to one direction, and InfoNCE against near-identical targets has nothing to learn;
4. train the other towers with symmetric InfoNCE against the fixed anchor embeddings (AdamW, linear
   warm-up, cosine decay). Each epoch ends with a safetensors checkpoint in `.OUT.partial/`, so an
   interrupted run continues with --resume;
5. measure held-out retrieval before and after, and write the full state dict plus the anchor centre
   (`ibdc.center.<anchor>`) and JSON metadata atomically.

The embedding space of the result is `Encoder.embed(m, x) = normalize(forward_raw(m, x) - center_m)`,
exactly what training optimised, so `load_encoder(preset, checkpoint=out)` reproduces it bit for bit.

Under torchrun / accelerate launch the main process binds on its device and the others return at once:
one tower on a few thousand rows does not need data parallelism.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ibdc_cli import __version__, tracking
from ibdc_cli.data.manifest import ALIASES, Manifest, check_cell, read_manifest
from ibdc_cli.data.preprocess import PREPROCESSING, MediaError, load
from ibdc_cli.encoders.imagebind import CENTER_PREFIX, MODALITY_KEYS, WHITEN_PREFIX, Encoder, load_encoder
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
from ibdc_cli.space import SPACE_MAPS, fit_space_map, map_embeddings
from ibdc_cli.store import atomic_save_tensors, file_sha256, partial_dir, read_tensors

BOUND_FORMAT = "ibdc-bound-encoder"
BOUND_VERSION = 1
# The parts of ImageBindModel that make up one modality's tower; the postprocessors (normalise, fixed
# logit scale) have nothing to train once outputs are re-normalised.
TOWER_PARTS = ("modality_preprocessors", "modality_trunks", "modality_heads")


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
    manifest_path: str | Path,
    modalities: list[str],
    anchor: str,
    out: str | Path,
    *,
    model: str = "imagebind_tiny",
    checkpoint: str | Path | None = None,
    random_init: bool = False,
    seed: int = 0,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup_epochs: float = 1.0,
    temperature: float = 0.07,
    label_positives: bool = False,
    targets: str = "rows",
    anchor_map: str = "whiten",
    augment: bool = True,
    ema: float = 0.0,
    val_manifest: str | Path | None = None,
    val_fraction: float = 0.1,
    workers: int = 2,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    log_with: list[str] | tuple[str, ...] = (),
    log_dir: str | Path | None = None,
) -> BindResult:
    """Train the towers of `modalities` other than `anchor` to meet the frozen anchor tower; write `out`.

    >>> result = bind_encoder("train.csv", ["image", "audio"], "image", "enc.safetensors", epochs=30)
    >>> result.after["audio"]["label_r1_to_anchor"]        # held-out audio->image, top-1 of the same class
    >>> load_encoder("imagebind_tiny", checkpoint="enc.safetensors").embed("audio", x)   # [B, 256]
    """
    started = time.time()
    out = Path(out)
    anchor = ALIASES.get(anchor.strip().lower(), anchor.strip().lower())
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup_epochs": warmup_epochs,
        "temperature": temperature,
        "label_positives": label_positives,
        "targets": targets,
        "anchor_map": anchor_map,
        "augment": augment,
        "ema": ema,
        "val_fraction": 0.0 if val_manifest is not None else val_fraction,
        "seed": seed,
    }
    _check_request(modalities, anchor, out, overwrite, settings)
    bound = [m for m in modalities if m != anchor]
    state = process_state(device)
    manifest = read_manifest(manifest_path, modalities, require_label=False)
    if label_positives and not manifest.class_names:
        raise IbdcError(f"--label-positives needs a 'label' column; {manifest.path} has none")
    if targets == "class-means" and not manifest.class_names:
        raise IbdcError(f"--targets class-means needs a 'label' column; {manifest.path} has none")
    has = _check_rows(manifest, modalities, anchor)
    if val_manifest is not None:  # a split of its own (another speaker, say): every manifest row trains
        held_out = read_manifest(val_manifest, modalities, require_label=False)
        held_out_has = _check_rows(held_out, modalities, anchor)
        held_out_labels = labels_in(held_out, manifest)
        train_rows, val_rows = list(range(len(manifest.rows))), list(range(len(held_out.rows)))
    else:
        train_rows, val_rows = split_rows(len(manifest.rows), val_fraction, seed)
    for m in bound:
        if sum(has[m][r] for r in train_rows) < 2:
            raise IbdcError(f"{manifest.path}: fewer than 2 training rows have a {m!r} cell; nothing to bind")
    encoder = load_encoder(model, checkpoint=checkpoint, random_init=random_init, seed=seed)
    if state.num_processes > 1:
        log(f"bind trains on the main process only; the other {state.num_processes - 1} process(es) exit", state)
        if not state.is_main_process:
            return BindResult(out=out, encoder=None)
    torch_device = resolve_device(state, device)
    encoder.to(torch_device)
    announce(
        "bind",
        state,
        device=torch_device,
        encoder=encoder_words(encoder.describe()),
        precision="fp32",
        bound=f"{','.join(bound)} to {anchor}",
        out=out,
    )

    with contextlib.ExitStack() as stack:
        job = {
            "preset": model,
            "start": encoder.describe()["weights"],
            "modalities": modalities,
            "anchor": anchor,
            "manifest_sha256": manifest.sha256,
            "val_manifest_sha256": None if val_manifest is None else held_out.sha256,
            **settings,
        }
        work = partial_dir(out)
        # state None: a world of one (the other processes have returned). A second bind to this --out
        # exits 2 here, touching nothing.
        start_output_job(stack, None, out, work, job, resume)
        resuming = resume and (work / "state.safetensors").exists()
        if resume and not resuming:
            log(f"--resume: no finished epoch in {work}; starting from the beginning")
        error = None
        try:
            data = load_rows(encoder, manifest, modalities, anchor, has, batch_size, workers, torch_device)
            if val_manifest is not None:
                val_data = load_rows(
                    encoder, held_out, modalities, anchor, held_out_has, batch_size, workers, torch_device
                )
        except IbdcError as exc:
            error = exc
        # bad media leaves nothing behind, but an earlier run's finished epoch is kept for --resume
        raise_job_error(None, work, error, keep=(work / "state.safetensors").exists())
        if resuming:
            log(f"resuming the unfinished bind in {work}")

        # The anchor's map (step 3 of the module docstring), fitted on the training rows. A starting
        # checkpoint that already maps the anchor (one made by an earlier bind) keeps its map: the towers
        # bound then stay in the space that this bind's towers join.
        raw = data["anchor_raw"]
        kept = anchor in encoder.centers or anchor in encoder.whiteners
        anchor_space = None if kept else fit_space_map(raw[train_rows], anchor_map)
        if anchor_space is not None:
            encoder.centers[anchor] = anchor_space.center.to(torch_device)
            if anchor_space.whitening is not None:
                encoder.whiteners[anchor] = anchor_space.whitening.to(torch_device)
        anchor_embeddings = map_embeddings(raw, anchor_space)  # [N, D]
        anisotropy = {"raw": mean_cosine(F.normalize(raw[train_rows], dim=-1))}
        anisotropy["mapped"] = mean_cosine(anchor_embeddings[train_rows])
        how = "kept from the starting checkpoint" if kept else anchor_map
        log(
            f"anchor {anchor}: mean cosine between training rows {anisotropy['raw']:.3f} raw, "
            f"{anisotropy['mapped']:.3f} mapped ({how})"
        )
        labels = torch.tensor(manifest.labels, dtype=torch.int64)
        class_targets = None
        if targets == "class-means":
            class_targets = class_means(anchor_embeddings[train_rows], labels[train_rows], len(manifest.class_names))
        if val_manifest is None:
            val_data, val_anchor, val_labels = data, anchor_embeddings, labels
        else:
            val_anchor, val_labels = map_embeddings(val_data["anchor_raw"], anchor_space), held_out_labels

        def evaluate() -> dict[str, dict[str, float]]:
            return {
                m: held_out_metrics(encoder, m, val_data, val_anchor, val_labels, val_rows, batch_size) for m in bound
            }

        logs = Path(log_dir) if log_dir is not None else out.parent / f"{out.stem}-logs"
        with tracking.run(list(log_with), out.stem, logs, {**job, "workers": workers}):
            trained = train_towers(
                encoder,
                bound,
                data,
                anchor_embeddings,
                labels if label_positives or class_targets is not None else None,
                class_targets,
                train_rows,
                settings,
                work,
                resuming,
                evaluate,
                torch_device,
                started,
            )
        after = evaluate()
        encoder.model.eval()

        metadata = {
            "format": BOUND_FORMAT,
            "format_version": BOUND_VERSION,
            "ibdc_version": __version__,
            "preset": model,
            "modalities": modalities,
            "anchor": anchor,
            "bound": bound,
            "trained_parts": {m: [f"{part}.{MODALITY_KEYS[m]}" for part in TOWER_PARTS] for m in bound},
            "anchor_map": how,
            "centers": sorted(encoder.centers),
            "whiteners": sorted(encoder.whiteners),
            "anchor_mean_cosine": anisotropy,
            "start": {"weights": job["start"], "seed": seed if job["start"] == "random-init" else None},
            "settings": {**settings, "workers": workers, "device": str(torch_device)},
            "rows": {"train": len(train_rows), "held_out": len(val_rows)},
            "manifest": {"path": str(manifest.path.resolve()), "sha256": manifest.sha256, "rows": len(manifest.rows)},
            "val_manifest": None
            if val_manifest is None
            else {"path": str(held_out.path.resolve()), "sha256": held_out.sha256, "rows": len(held_out.rows)},
            "class_names": manifest.class_names,
            "preprocessing": {m: PREPROCESSING[m] for m in modalities},
            "metrics": {"before": trained["before"], "after": after},
            "loss_history": trained["history"],
            "held_out_history": trained["val_history"],
            "wall_time_s": round(trained["earlier_seconds"] + time.time() - started, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_checkpoint(out, encoder, metadata)
        shutil.rmtree(work, ignore_errors=True)
        encoder.checkpoint = file_sha256(out)
        return BindResult(out=out, encoder=encoder, metadata=metadata)


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
    if not 0 <= settings["ema"] < 1:
        raise IbdcError(f"--ema must be in [0, 1) (0: off), not {settings['ema']}")
    if not 0 <= settings["val_fraction"] < 1:
        raise IbdcError(f"--val-fraction must be in [0, 1), not {settings['val_fraction']}")


def _check_rows(manifest: Manifest, modalities: list[str], anchor: str) -> dict[str, list[bool]]:
    """Which rows have each modality (`{m: [N] bool}`), checked without decoding anything.

    Every row needs the anchor: it is what the row binds to. Other cells may be empty (ImageBind binds
    each modality on its own pairs with images), and such a row simply does not train that tower.
    """
    has = {m: [] for m in modalities}
    for row, cells in enumerate(manifest.rows):
        if not cells.get(anchor):
            raise IbdcError(f"{manifest.path}: row {row} has an empty {anchor!r} cell; every row needs the anchor")
        for m in modalities:
            present = bool(cells.get(m))
            has[m].append(present)
            if not present:
                continue
            try:
                value = check_cell(manifest, row, m)
                path = Path(value) if Path(value).is_absolute() else manifest.base_dir / value
                if m != "text" and not path.is_file():
                    raise MediaError(f"row {row}: {m} file not found: {path}")
            except MediaError as exc:
                raise IbdcError(f"{manifest.path}: {exc}") from None
    return has


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
# data: every row decoded once; the anchor tower run once


class _RowCells(Dataset):
    """Model inputs `{modality: tensor}` of a row's non-empty cells, or the error message of a bad file."""

    def __init__(self, manifest: Manifest, modalities: list[str]):
        self.manifest, self.modalities = manifest, modalities

    def __len__(self) -> int:
        return len(self.manifest.rows)

    def __getitem__(self, row: int) -> tuple[int, dict[str, torch.Tensor] | str]:
        cells = self.manifest.rows[row]
        try:
            return row, {m: load(m, cells[m], self.manifest.base_dir) for m in self.modalities if cells.get(m)}
        except MediaError as exc:
            return row, str(exc)


def _as_list(items: list) -> list:
    return items


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def load_rows(
    encoder: Encoder,
    manifest: Manifest,
    modalities: list[str],
    anchor: str,
    has: dict[str, list[bool]],
    batch_size: int,
    workers: int,
    device: torch.device,
) -> dict[str, Any]:
    """Decode every row once (DataLoader workers) and run the frozen anchor tower over it.

    Returns `anchor_raw` `[N, D]` (the anchor's raw outputs, on the CPU) and, per other modality m,
    `inputs.m` `[N_m, *input shape]` (model inputs of the rows that have m, in row order) and `slot.m`
    `[N]` int64 (row -> index into `inputs.m`, -1 where the row has no m cell).
    """
    loader = DataLoader(
        _RowCells(manifest, modalities),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_as_list,
        worker_init_fn=_one_thread if workers else None,
    )
    bound = [m for m in modalities if m != anchor]
    anchor_raw: list[torch.Tensor] = []
    inputs: dict[str, list[torch.Tensor]] = {m: [] for m in bound}
    encoder.model.eval()
    with progress_bar(f"decode rows, embed {anchor}", len(manifest.rows)) as advance:
        for items in loader:
            for row, value in items:
                if isinstance(value, str):
                    raise IbdcError(f"{manifest.path}: row {row}: {value.removeprefix(f'row {row}: ')}")
            x = torch.stack([cells[anchor] for _, cells in items]).to(device)
            # no_grad, not inference_mode: these tensors later meet trainable ones in autograd
            with torch.no_grad():
                anchor_raw.append(encoder.forward_raw(anchor, x).float().cpu())
            for m in bound:
                inputs[m].extend(cells[m] for _, cells in items if m in cells)
            advance(len(items))
    data: dict[str, Any] = {"anchor_raw": torch.cat(anchor_raw)}
    for m in bound:
        present = torch.tensor(has[m])
        slot = torch.full((len(present),), -1, dtype=torch.int64)
        slot[present] = torch.arange(int(present.sum()))
        data[f"inputs.{m}"] = one_clip_if_repeated(torch.stack(inputs[m]), m)
        data[f"slot.{m}"] = slot
    return data


def one_clip_if_repeated(x: torch.Tensor, modality: str) -> torch.Tensor:
    """`x` `[N, S, ...]` cut to its first clip when every row's S clips are equal, else `x` unchanged.

    ImageBind embeds a clip-split input (audio: 3 clips of 2 s) as the mean of its clips' embeddings, so
    equal clips embed exactly as one does. Recordings shorter than a clip (spoken digits: under a
    second) give S equal, zero-padded clips: training on one of them costs a third of the time.
    """
    if x.ndim < 5 or x.shape[1] < 2 or not bool((x == x[:, :1]).all()):
        return x
    log(f"{modality}: every row's {x.shape[1]} clips are equal (short recordings); training on one")
    return x[:, :1].contiguous()


def rows_of(data: dict[str, Any], modality: str, rows: torch.Tensor) -> torch.Tensor:
    """The subset of `rows` `[B]` that have a `modality` cell."""
    return rows[data[f"slot.{modality}"][rows] >= 0]


def inputs_of(data: dict[str, Any], modality: str, rows: torch.Tensor) -> torch.Tensor:
    """Model inputs `[B, *input shape]` of `rows` (all of which have a `modality` cell)."""
    return data[f"inputs.{modality}"][data[f"slot.{modality}"][rows]]


# ----------------------------------------------------------------------------------------------------
# training


def trainable_parameters(model: torch.nn.Module, modalities: list[str]) -> dict[str, torch.nn.Parameter]:
    """Unfreeze the towers of `modalities` (everything else stays frozen) and return their parameters."""
    model.requires_grad_(False)
    for m in modalities:
        for part in TOWER_PARTS:
            getattr(model, part)[MODALITY_KEYS[m]].requires_grad_(True)
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def make_optimizer(params: dict[str, torch.nn.Parameter], lr: float, weight_decay: float):
    """AdamW; as in CLIP/ViT training, no weight decay on biases, norms, position embeddings, class tokens.

    Returns the optimiser and the parameter names in the optimiser's own order (its state-dict indices).
    """
    no_decay = [n for n, p in params.items() if p.ndim < 2 or "pos_embed" in n or "cls_token" in n]
    decay = [n for n in params if n not in no_decay]
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr), decay + no_decay


def copy_weights(params: dict[str, torch.nn.Parameter], values: dict[str, torch.Tensor]) -> None:
    """Copy `values` (by name) into the parameters, outside autograd."""
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(values[name])


def update_average(average: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter], decay: float) -> None:
    """One step of the exponential moving average of the weights (`--ema`): average <- decay * average +
    (1 - decay) * weights."""
    with torch.no_grad():
        for name, p in params.items():
            average[name].lerp_(p.detach(), 1.0 - decay)


@contextlib.contextmanager
def averaged_weights(params: dict[str, torch.nn.Parameter], average: dict[str, torch.Tensor] | None):
    """Within the block the parameters hold the moving average (nothing changes when `average` is None)."""
    if average is None:
        yield
        return
    current = {n: p.detach().clone() for n, p in params.items()}
    copy_weights(params, average)
    try:
        yield
    finally:
        copy_weights(params, current)


def learning_rate(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up from 0 to `peak` over `warmup` steps, then cosine decay to 0 at step `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def info_nce(x: torch.Tensor, y: torch.Tensor, temperature: float, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between unit vectors `x` `[B, D]` and `y` `[B, D]` whose rows are pairs (CLIP's loss).

    Positives of row i are row i of the other side; with `labels` `[B]`, every row of the same label
    (SupCon's L_out: the mean log-likelihood over the positives), for data whose pairs are only
    meaningful up to class, such as av-digits (a digit image paired with any speaker's spoken digit).
    """
    logits = x @ y.T / temperature  # [B, B]
    if labels is None:
        positive = torch.eye(len(x), dtype=torch.bool, device=x.device)
    else:
        positive = labels[:, None] == labels[None, :]
    weights = positive.float()
    x_to_y = -(weights * logits.log_softmax(dim=1)).sum(1) / weights.sum(1)
    y_to_x = -(weights.T * logits.T.log_softmax(dim=1)).sum(1) / weights.sum(0)
    return (x_to_y.mean() + y_to_x.mean()) / 2


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Unit-length class means `[C, D]` of unit vectors `embeddings` `[N, D]` with `labels` `[N]` in 0..C-1
    (a class without rows gets a zero row, which no bound row is ever pulled towards)."""
    one_hot = F.one_hot(labels, classes).float()  # [N, C]
    return F.normalize(one_hot.T @ embeddings, dim=-1)


def class_mean_nce(z: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of unit vectors `z` `[B, D]` against the anchor's class means `targets` `[C, D]`: the positive
    of row i is its class's mean, the negatives the other classes' means (`--targets class-means`).

    It is cross-entropy over C classes with the classifier's weights fixed to the anchor's class means,
    so every step sees every class, whatever the batch holds.
    """
    return F.cross_entropy(z @ targets.T / temperature, labels)


# What a bound row is pulled towards (`--targets`): the anchor embeddings of the batch's rows (CLIP,
# ImageBind), or the anchor's class means over all training rows.
TARGETS = ("rows", "class-means")


# Audio augmentation (`--augment`), on the normalised log-mel inputs `[B, S, 1, 128, 204]` (frames 10 ms):
# what differs between speakers and recordings more than between takes of one speaker. Chosen on
# fsdd-mnist's val speaker (docs/bind.md): this mild set bound; adding a spectral tilt, noise and
# SpecAugment masks kept the loss at chance for as long as it was run.
AUDIO_MAX_DELAY = 30  # frames: the onset moves right by up to 0.3 s (the clip's tail wraps to its head)
AUDIO_MEL_SHIFT = 3  # mel bins up or down: a longer or shorter vocal tract (VTLP-like)
AUDIO_GAIN = 0.4  # +-15 dB: log-mel energies shift by up to 0.4 fbank std


def augment_audio(x: torch.Tensor) -> torch.Tensor:
    """A random variant of each audio input `x` `[B, S, 1, F, T]`: a delay, a mel shift and a gain. Draws
    from torch's global stream (seeded, and checkpointed with the training state)."""
    batch, bins, frames = x.shape[0], x.shape[-2], x.shape[-1]
    delay = torch.randint(0, AUDIO_MAX_DELAY + 1, (batch, 1))
    index = (torch.arange(frames)[None, :] - delay) % frames  # [B, T]
    x = x.gather(-1, index.to(x.device).view(batch, 1, 1, 1, frames).expand_as(x))
    shift = torch.randint(-AUDIO_MEL_SHIFT, AUDIO_MEL_SHIFT + 1, (batch, 1))
    index = (torch.arange(bins)[None, :] - shift).clamp(0, bins - 1)  # [B, F]; edge bins repeat
    x = x.gather(-2, index.to(x.device).view(batch, 1, 1, bins, 1).expand_as(x))
    return x + AUDIO_GAIN * (2 * torch.rand(batch, 1, 1, 1, 1) - 1).to(x.device)


AUGMENTATIONS = {"audio": augment_audio}


def bind_loss(
    encoder: Encoder,
    bound: list[str],
    data: dict[str, Any],
    anchor_embeddings: torch.Tensor,
    labels: torch.Tensor | None,
    rows: torch.Tensor,
    temperature: float,
    augment: bool = False,
    class_targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over the bound modalities of InfoNCE between their embeddings and the anchor's, on batch `rows`:
    against the batch's anchor embeddings, or with `class_targets` `[C, D]` against the anchor's class
    means (`labels` then required). With `augment`, the inputs of modalities in `AUGMENTATIONS` (audio) are
    randomly varied first."""
    device = encoder.device
    total = torch.zeros((), device=device)
    for m in bound:
        present = rows_of(data, m, rows)
        if len(present) < 2:  # a single pair has no negatives
            continue
        x = inputs_of(data, m, present).to(device)
        if augment and m in AUGMENTATIONS:
            x = AUGMENTATIONS[m](x)
        z = encoder.embed(m, x)
        if class_targets is not None:
            total = total + class_mean_nce(z, class_targets.to(device), labels[present].to(device), temperature)
            continue
        a = anchor_embeddings[present].to(device)
        total = total + info_nce(z, a, temperature, None if labels is None else labels[present].to(device))
    return total


def train_towers(
    encoder: Encoder,
    bound: list[str],
    data: dict[str, Any],
    anchor_embeddings: torch.Tensor,
    labels: torch.Tensor | None,
    class_targets: torch.Tensor | None,
    train_rows: list[int],
    settings: dict[str, Any],
    work: Path,
    resuming: bool,
    evaluate,
    device: torch.device,
    started: float,
) -> dict[str, Any]:
    """The training loop; returns `before` (held-out metrics of the starting towers), the per-epoch mean
    loss `history` and `earlier_seconds`, the wall time of the interrupted runs this one resumes.

    Steps per epoch = training rows (with a bound cell) // batch size: each epoch is a fresh shuffle, and
    the incomplete last batch is dropped, as in CLIP training, so that every step has as many negatives.
    """
    model = encoder.model
    params = trainable_parameters(model, bound)
    optimizer, order = make_optimizer(params, settings["lr"], settings["weight_decay"])
    has_any = torch.stack([data[f"slot.{m}"] >= 0 for m in bound]).any(0)
    rows = torch.tensor([r for r in train_rows if has_any[r]], dtype=torch.int64)
    batch_size = min(settings["batch_size"], len(rows))
    steps_per_epoch = len(rows) // batch_size
    total_steps = settings["epochs"] * steps_per_epoch
    warmup = min(total_steps, round(settings["warmup_epochs"] * steps_per_epoch))
    shuffle = torch.Generator().manual_seed(settings["seed"])

    # Drop path and dropout (the huge preset's audio tower) draw from torch's global stream: seed it
    # for this run only, and keep it in the checkpoint so that a resumed run draws the same numbers.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings["seed"])
        state_file = work / "state.safetensors"
        average = {n: p.detach().clone() for n, p in params.items()} if settings["ema"] else None
        if resuming:
            start, history, val_history, before, earlier = load_state(
                state_file, params, optimizer, order, shuffle, device, average
            )
        else:
            start, history, val_history, before, earlier = 0, [], [], evaluate(), 0.0
        todo = (settings["epochs"] - start) * steps_per_epoch
        with progress_bar(f"bind {','.join(bound)}", todo, fields="loss {task.fields[loss]}") as advance:
            for epoch in range(start, settings["epochs"]):
                model.train()
                order_rows = rows[torch.randperm(len(rows), generator=shuffle)]
                losses = []
                for k in range(steps_per_epoch):
                    step = epoch * steps_per_epoch + k
                    for group in optimizer.param_groups:
                        group["lr"] = learning_rate(step, total_steps, warmup, settings["lr"])
                    batch = order_rows[k * batch_size : (k + 1) * batch_size]
                    loss = bind_loss(
                        encoder,
                        bound,
                        data,
                        anchor_embeddings,
                        labels,
                        batch,
                        settings["temperature"],
                        settings["augment"],
                        class_targets,
                    )
                    optimizer.zero_grad(set_to_none=True)
                    if loss.requires_grad:
                        loss.backward()
                        optimizer.step()
                        if average is not None:
                            update_average(average, params, settings["ema"])
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
                log(f"epoch {epoch + 1}/{settings['epochs']}: mean loss {history[-1]:.4f}; {describe(val_history[-1])}")
                elapsed = earlier + time.time() - started
                save_state(
                    state_file,
                    params,
                    optimizer,
                    order,
                    shuffle,
                    epoch + 1,
                    history,
                    val_history,
                    before,
                    elapsed,
                    device,
                    average,
                )
        if average is not None:  # the encoder keeps the averaged weights
            copy_weights(params, average)
        model.eval()
        model.requires_grad_(False)
    return {"before": before, "history": history, "val_history": val_history, "earlier_seconds": earlier}


def describe(metrics: dict[str, dict[str, float]]) -> str:
    """One line of `epoch_metrics`, e.g. "held-out audio: same-label R@1 52.8 %, class-mean cosine 0.369"."""
    parts = []
    for m, values in metrics.items():
        if "label_r1_to_anchor" in values:
            parts.append(
                f"held-out {m}: same-label R@1 {100 * values['label_r1_to_anchor']:.1f} %, "
                f"class-mean cosine {values['cos_class_means']:.3f}"
            )
        elif "r1_to_anchor" in values:
            parts.append(f"held-out {m}: R@1 {100 * values['r1_to_anchor']:.1f} %")
    return "; ".join(parts) or "no held-out rows"


def epoch_metrics(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The held-out metrics kept for every epoch: retrieval both ways (same-label when labelled) and the
    class-mean cosine, per bound modality."""
    keep = ("label_r1_to_anchor", "label_r1_from_anchor", "cos_class_means", "r1_to_anchor")
    return {m: {k: v for k, v in values.items() if k in keep} for m, values in metrics.items()}


# ----------------------------------------------------------------------------------------------------
# the per-epoch state in .OUT.partial/: safetensors only (trainable parameters, AdamW state, RNG states)


def save_state(
    path, params, optimizer, order, shuffle, epoch, history, val_history, before, seconds, device, average=None
) -> None:
    tensors = {f"param.{n}": p.detach().cpu() for n, p in params.items()}
    tensors.update({f"ema.{n}": v.detach().cpu() for n, v in (average or {}).items()})
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"adamw.{order[i]}.{key}"] = torch.as_tensor(value).detach().cpu()
    tensors["rng.shuffle"] = shuffle.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    metadata = {
        "epoch": str(epoch),
        "history": json.dumps(history),
        "val_history": json.dumps(val_history),
        "before": json.dumps(before),
        "seconds": str(seconds),
    }
    atomic_save_tensors(path, tensors, metadata=metadata)


def load_state(
    path, params, optimizer, order, shuffle, device, average=None
) -> tuple[int, list[float], list[dict], dict, float]:
    tensors, metadata = read_tensors(path, "bind checkpoint")
    copy_weights(params, {n: tensors[f"param.{n}"] for n in params})
    for n, v in (average or {}).items():
        v.copy_(tensors[f"ema.{n}"])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for i, n in enumerate(order):
        prefix = f"adamw.{n}."
        entries = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if entries:
            state[i] = entries
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    shuffle.set_state(tensors["rng.shuffle"])
    torch.set_rng_state(tensors["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    epoch = int(metadata["epoch"])
    history, val_history = json.loads(metadata["history"]), json.loads(metadata["val_history"])
    return epoch, history, val_history, json.loads(metadata["before"]), float(metadata["seconds"])


# ----------------------------------------------------------------------------------------------------
# held-out metrics


def embed_clips(encoder: Encoder, modality: str, x: torch.Tensor) -> torch.Tensor:
    """`encoder.embed(modality, x)` `[B, D]` on the CPU, where rows of `x` `[B, S, ...]` whose S clips are all
    equal are embedded from their first clip alone: the same embedding (the mean of equal clip embeddings),
    for a third of the work. A split whose recordings are mostly short but not all (fsdd-mnist val: 2 of
    500 are longer than 2 s) keeps all clips only where they differ (`one_clip_if_repeated` is all or none)."""
    if x.ndim < 5 or x.shape[1] < 2:
        return encoder.embed(modality, x).cpu()
    equal = (x == x[:, :1]).flatten(1).all(1)  # [B]
    parts = {}
    if bool(equal.any()):
        parts["equal"] = encoder.embed(modality, x[equal][:, :1]).cpu()
    if bool((~equal).any()):
        parts["other"] = encoder.embed(modality, x[~equal]).cpu()
    z = torch.empty(len(x), next(iter(parts.values())).shape[1])
    if "equal" in parts:
        z[equal.cpu()] = parts["equal"]
    if "other" in parts:
        z[~equal.cpu()] = parts["other"]
    return z


def mean_cosine(x: torch.Tensor) -> float:
    """Mean cosine between distinct rows of unit vectors `x` `[N, D]` (1 = all one direction)."""
    n = len(x)
    if n < 2:
        return float("nan")
    total = x.sum(0)
    return float((total @ total - n) / (n * (n - 1)))


@torch.no_grad()
def held_out_metrics(
    encoder: Encoder,
    modality: str,
    data: dict[str, Any],
    anchor_embeddings: torch.Tensor,
    labels: torch.Tensor,
    val_rows: list[int],
    batch_size: int,
) -> dict[str, float]:
    """Cross-modal retrieval between `modality` and the anchor on the held-out rows that have both.

    `r1_to_anchor`: share of rows whose nearest anchor embedding is their own pair (chance 1/rows);
    `r1_from_anchor` the other way; `label_r1_*`: the nearest one has the row's label; `cos_same_class` /
    `cos_other_class`: mean cosine between a row's embedding and the anchor embeddings of rows with the
    same / another label; `cos_class_means` / `cos_class_means_other`: cosine between a class's mean
    embedding and the same / another class's mean anchor embedding, averaged over classes (pairs of
    classes). Label metrics need labels.

    The two cosines answer different questions. The row-level one equals |mean z_c|·|mean a_c|·cos(means)
    averaged over classes, so it stays small whenever one side is spread within a class (the centred
    outputs of a random anchor tower are nearly orthogonal even within a class), however well the
    classes line up. The class-mean one asks only whether the classes line up.
    """
    rows = rows_of(data, modality, torch.tensor(val_rows, dtype=torch.int64))
    if len(rows) < 2:
        return {"rows": len(rows)}
    encoder.model.eval()
    z = torch.cat(
        [
            embed_clips(encoder, modality, inputs_of(data, modality, chunk).to(encoder.device))
            for chunk in rows.split(batch_size)
        ]
    )
    a = anchor_embeddings[rows]
    similarity = z @ a.T  # [n, n]: bound row i vs anchor row j
    own = torch.arange(len(rows))
    to_anchor, from_anchor = similarity.argmax(1), similarity.argmax(0)
    metrics = {
        "rows": len(rows),
        "chance_r1": 1 / len(rows),
        "r1_to_anchor": float((to_anchor == own).float().mean()),
        "r1_from_anchor": float((from_anchor == own).float().mean()),
    }
    y = labels[rows]
    if bool((y >= 0).all()):
        same = y[:, None] == y[None, :]
        metrics["label_r1_to_anchor"] = float((y[to_anchor] == y).float().mean())
        metrics["label_r1_from_anchor"] = float((y[from_anchor] == y).float().mean())
        metrics["cos_same_class"] = float(similarity[same].mean())
        metrics["cos_other_class"] = float(similarity[~same].mean()) if bool((~same).any()) else float("nan")
        metrics.update(class_mean_cosines(z, a, y))
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}


def class_mean_cosines(z: torch.Tensor, a: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Cosines between the class means of `z` `[n, D]` and of `a` `[n, D]` (rows paired, `labels` `[n]`).

    `cos_class_means`: mean over classes c of cos(mean z_c, mean a_c); `cos_class_means_other`: mean over
    ordered pairs c != c' of cos(mean z_c, mean a_c') (nan with one class).
    """
    classes = labels.unique()
    one_hot = (labels[None, :] == classes[:, None]).float()  # [C, n]
    z_means = F.normalize(one_hot @ z, dim=-1)  # [C, D]; the sum points where the mean does
    a_means = F.normalize(one_hot @ a, dim=-1)
    cosines = z_means @ a_means.T  # [C, C]
    diagonal = torch.eye(len(classes), dtype=torch.bool)
    other = float(cosines[~diagonal].mean()) if len(classes) > 1 else float("nan")
    return {"cos_class_means": float(cosines.diagonal().mean()), "cos_class_means_other": other}


# ----------------------------------------------------------------------------------------------------
# the output file


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
