"""Recipe: condense an embedding store into a synthetic set (`ibdc condense`).

`run_condense(CondenseConfig)` reads top to bottom (`condense(store, out, **options)` is its keyword form):
1. open the store, check the request against it (modalities, DPC vs the smallest class, encoder);
2. give every class its own random stream, seeded from (seed, class id), and split the classes over
   the processes (class c -> process c mod N): N processes compute exactly what one process computes;
3. per class (`condense_class`, one `ClassJob` in a `Condensation` shared by all classes): select real
   rows (`random`/`herding`/`kcenter`), or initialise synthetic rows and optimise them against the
   class's real embeddings with the method's configured loss (`imagebinddc`/`dm`/`avdd`; methods are
   found by name in `ibdc_cli.methods.REGISTRY`), in the embedding space or, through the frozen encoder,
   in the model-input space. The real side always comes from the store: it never changes, so it is never
   recomputed per step (with --freq-bank, its CFs are cached in a `losses.FrequencyBank`);
4. each finished class is saved as a part file (and long classes checkpoint every few iterations) in
   `.OUT.partial/`, so an interrupted run resumes with --resume;
5. the main process merges the classes into one .safetensors file with every setting in its metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import resource
import shutil
import sys
import time
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ibdc_cli import losses, tracking
from ibdc_cli.config import (  # noqa: F401 (CondenseConfig and PRESETS: importable from the recipe too)
    PRESETS,
    SYNTHESIS_METHODS,
    CondenseConfig,
    Guide,
    Init,
    Method,
    Optimizer,
    Space,
    command_line,
)
from ibdc_cli.data.preprocess import INPUT_SHAPES
from ibdc_cli.errors import IbdcError
from ibdc_cli.methods import CondensationMethod, get_method
from ibdc_cli.methods.selection import select
from ibdc_cli.runtime import (
    announce,
    autocast,
    encoder_words,
    log,
    process_state,
    progress_bar,
    raise_job_error,
    resolve_device,
    start_output_job,
)
from ibdc_cli.space import fit_space_map_streaming, map_embeddings
from ibdc_cli.store import (
    Store,
    atomic_save_tensors,
    drop_damaged,
    open_store,
    partial_dir,
    read_tensors,
    save_synthetic_set,
)
from ibdc_cli.training_state import load_training_state, save_training_state

# The choices live with the options in ibdc_cli/config.py; these names stay importable from here.
METHODS = typing.get_args(Method)
SPACES = typing.get_args(Space)
INITS = typing.get_args(Init)
OPTIMIZERS = typing.get_args(Optimizer)
GUIDES = typing.get_args(Guide)


@dataclass
class CondenseResult:
    path: Path
    rows: int
    seconds: float
    final_loss: float | None
    metadata: dict[str, Any] = field(default_factory=dict)


def class_generator(seed: int, class_id: int) -> torch.Generator:
    """The random stream of one class: independent of the process count and of the other classes."""
    state = np.random.SeedSequence([seed, class_id]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


# ----------------------------------------------------------------------------------------------------
# the recipe


def run_condense(config: CondenseConfig) -> CondenseResult:
    """Condense the store `config.store` into the synthetic set `config.out`; see the module docstring.

    `config.log_with` (trackers of `ibdc_cli.tracking`: csv, tensorboard, wandb) logs each step's loss
    terms and seconds per class to `config.log_dir` (default: `OUT-logs/` beside the output)."""
    started = time.time()
    config.check()
    state = process_state(config.device)
    if config.guide == "convnet" and config.freq_bank:
        log("--guide convnet redraws its networks every step, so real CFs cannot be cached: --freq-bank 0", state)
        config = replace(config, freq_bank=0)
    device = resolve_device(state, config.device)
    store, out = open_store(config.store), Path(config.out)
    _check_request(store, out, config, state, device)
    space_maps = _fit_space_maps(store, config, state)
    labels, class_names, pseudo, data = _classes(store, config, space_maps)
    counts = torch.bincount(labels, minlength=len(class_names)).tolist()
    dpc_of = _check_dpc(counts, class_names, config)
    run = Condensation.build(config, device, space_maps, store=store)

    with contextlib.ExitStack() as stack:
        work = partial_dir(out)
        start_output_job(
            stack, state, out, work, {"store": store.fingerprint(), "config": config.settings()}, config.resume
        )
        classes = [c for c, n in enumerate(counts) if n]
        todo = _classes_to_do(classes, state, work, config.resume)
        error = None
        try:
            data = data if data is not None else _own_rows(store, config, todo, space_maps, state)
            per_class = _rows_per_class(data["labels"], len(class_names))
            bank = _frequency_bank(run, {m: data[m].shape[1] for m in config.modalities})
            logs = Path(config.log_dir) if config.log_dir is not None else out.parent / f"{out.stem}-logs"
            steps = len(todo) * (config.iterations if run.method.kind == "synthesis" else 1)
            with (
                tracking.run(
                    list(config.log_with), out.stem, logs, {"store": str(store.path), **config.settings()}, state
                ),
                progress_bar(f"condense {config.method}", steps, state, fields="loss {task.fields[loss]}") as advance,
            ):
                for c in todo:
                    job = _class_job(run, c, data, per_class[c], dpc_of[c], bank, work)
                    tensors, history = condense_class(run, job, advance)
                    _save_class(work, job, tensors, history, class_names, state.process_index)
        except IbdcError as exc:
            error = exc
        # Bad input in any process stops every process and leaves nothing half-written, but a resumed run
        # never deletes the finished work it was asked to continue.
        raise_job_error(state, work, error, keep=config.resume)
        result = None
        if state.is_main_process:
            result = _write_synthetic_set(out, work, classes, run, started, class_names=class_names, pseudo=pseudo)
            shutil.rmtree(work, ignore_errors=True)
        state.wait_for_everyone()
        return result or CondenseResult(path=out, rows=0, seconds=time.time() - started, final_loss=None)


def condense(
    store_path: str | Path, out: str | Path, config: CondenseConfig | None = None, **options: Any
) -> CondenseResult:
    """`run_condense` in keyword form: condense the store at `store_path` into the set `out`.

    `config` (default: `CondenseConfig()`, ibdc's defaults) with `options` replaced, any field of
    `CondenseConfig` by name, e.g. `condense("stores/train", "syn.safetensors", dpc=5, device="cpu")`.
    """
    base = config if config is not None else CondenseConfig()
    return run_condense(replace(base, store=str(store_path), out=str(out), **options))


def _check_request(store: Store, out: Path, config: CondenseConfig, state, device: torch.device) -> None:
    """The output path and the request against the store, before any work; then the run's first line."""
    if out.is_dir():
        raise IbdcError(f"--out {out} is a directory; a synthetic set is one .safetensors file")
    if out.exists() and not config.overwrite:
        raise IbdcError(f"{out} exists; choose another --out or pass --overwrite")
    if out.suffix != ".safetensors":
        raise IbdcError(f"--out {out}: a synthetic set is written as a .safetensors file")
    announce(
        "condense",
        state,
        device=device,
        encoder=encoder_words(store.encoder),
        precision=config.precision,
        method=config.method,
        store=store.path,
        out=out,
    )
    missing = [m for m in config.modalities if m not in store.modalities]
    if missing:
        raise IbdcError(f"store {store.path} has no {missing[0]!r} embeddings (it has: {', '.join(store.modalities)})")
    if _is_labeled(store) and config.clusters:
        raise IbdcError(f"--clusters forms pseudo-classes for a store without labels; store {store.path} has labels")


def _is_labeled(store: Store) -> bool:
    return store.index.get("labeled", bool(store.class_names))


def _fit_space_maps(store: Store, config: CondenseConfig, state) -> dict[str, Any]:
    """The --space-map of each modality, fitted on all of the store's rows, streamed shard by shard."""
    began = time.perf_counter()
    maps = {
        m: fit_space_map_streaming(lambda m=m: (shard[m] for shard in store.shards([m])), config.space_map)
        for m in config.modalities
    }
    if config.space_map != "none":
        seconds = time.perf_counter() - began
        log(f"space map {config.space_map}: fitted on the store's {store.num_rows} rows in {seconds:.1f} s", state)
    return maps


def _own_rows(store: Store, config: CondenseConfig, classes: list[int], space_maps, state) -> dict[str, Any]:
    """The rows of `classes` (this process's), in the condensation space."""
    data = store.load(config.modalities, classes=classes, transforms=_transforms(space_maps))
    mib = sum(data[m].numel() * 4 for m in config.modalities) / 2**20
    log(f"read {len(data['labels'])} rows of {len(classes)} classes ({mib:.0f} MiB) for this process", state)
    return data


def _transforms(space_maps) -> dict[str, Any]:
    return {m: functools.partial(map_embeddings, space_map=space_map) for m, space_map in space_maps.items()}


def _classes(store: Store, config: CondenseConfig, space_maps):
    """Every row's class id `[N]`, the class names, how a store without labels was split (`pseudo`), and
    for such a store its rows in the condensation space (k-means needs them all; a labelled store's rows
    are read later, each process its own classes' only): `(labels, class_names, pseudo, data or None)`."""
    if _is_labeled(store):
        return store.load([])["labels"], store.class_names, {}, None
    # condensation is class-conditional: one pseudo-class, or k-means ones (--clusters)
    from ibdc_cli.methods.clusters import pseudo_classes

    data = store.load(config.modalities, transforms=_transforms(space_maps))
    data["labels"], class_names, pseudo = pseudo_classes(data, config.modalities, config.clusters, config.seed)
    return data["labels"], class_names, pseudo, data


def _rows_per_class(labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    return [torch.nonzero(labels == c).flatten() for c in range(num_classes)]


def _check_dpc(counts: list[int], class_names: list[str], config: CondenseConfig) -> list[int]:
    smallest = min((n for n in counts if n), default=0)
    if config.dpc > smallest and not config.allow_fewer:
        c = counts.index(smallest)
        raise IbdcError(
            f"--dpc {config.dpc} is more than class {class_names[c]!r} has ({smallest} real rows); lower --dpc, "
            "or pass --allow-fewer to give such classes one synthetic row per real row"
        )
    return [min(config.dpc, n) for n in counts]


def _classes_to_do(classes: list[int], state, work: Path, resume: bool) -> list[int]:
    """This process's classes (class c -> process c mod N) that have no finished part file yet."""
    mine = [c for c in classes if c % state.num_processes == state.process_index]
    if resume:
        drop_damaged([work / f"{kind}-{c:05d}.safetensors" for c in mine for kind in ("class", "state")], log)
    todo = [c for c in mine if not (work / f"class-{c:05d}.safetensors").exists()]
    if len(todo) < len(mine):
        log(f"resuming: {len(mine) - len(todo)} of {len(mine)} classes already done", state)
    return todo


def _frequency_bank(run: Condensation, dims: dict[str, int]) -> losses.FrequencyBank | None:
    """--freq-bank B fixed frequency draws (seeded by --seed alone; `losses.FrequencyBank`), whose real-side
    CFs each class adds when its turn comes; None without --freq-bank, or for a method that draws none."""
    config = run.config
    if not config.freq_bank or not isinstance(run.loss, losses.ImageBindDCLoss):
        return None
    return losses.FrequencyBank.draw(
        config.freq_bank,
        dims,
        config.num_freqs,
        config.sigma,
        joint=config.joint_form == "cf" and len(config.modalities) > 1,
        generator=torch.Generator().manual_seed(config.seed),
        device=run.device,
    )


def _class_job(run: Condensation, c: int, data, rows: torch.Tensor, dpc: int, bank, work: Path) -> ClassJob:
    """Class `c`'s job: its real embeddings on the device, what its steps match, its random stream."""
    config = run.config
    real = {m: data[m][rows].to(run.device) for m in config.modalities}
    manifest_rows = data["row"][rows]
    target = real
    if config.guide == "convnet" and run.method.kind == "synthesis":
        # The ConvNet is redrawn every step, so its real side has to be recomputed from real inputs.
        inputs = _real_inputs(run.store, config, manifest_rows, config.modalities)
        target = {m: v.to(run.device) for m, v in inputs.items()}
    return ClassJob(
        class_id=c,
        real=real,
        target=target,
        rows=manifest_rows,
        dpc=dpc,
        generator=class_generator(config.seed, c),
        bank=bank,
        state_file=work / f"state-{c:05d}.safetensors",
    )


def _save_class(work: Path, job: ClassJob, tensors: dict[str, torch.Tensor], history, class_names, process: int):
    """The finished class as its part file (then its checkpoint goes); non-finite rows are an error."""
    tensors["labels"] = torch.full((job.dpc,), job.class_id, dtype=torch.int64)
    if not all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()):
        raise IbdcError(
            f"condensing class {class_names[job.class_id]!r} diverged: the synthetic rows hold NaN or Inf "
            "(lower --lr or --sigma); nothing was written"
        )
    atomic_save_tensors(
        work / f"class-{job.class_id:05d}.safetensors",
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        metadata={
            "history": json.dumps(history),
            "seconds": json.dumps(job.seconds),
            "process": str(process),  # and its peak memory so far: the set records each process's peak
            "peak_mib": str(round(_peak_rss_mib(), 1)),
        },
    )
    (work / f"state-{job.class_id:05d}.safetensors").unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------
# one class


@dataclass
class Condensation:
    """What every class of one run shares: the config, its method and configured loss, the device, the
    space maps, and for --space input the frozen encoder and the store (its real inputs)."""

    config: CondenseConfig
    method: CondensationMethod
    loss: Any
    """The configured loss of a synthesis method (`method.loss.from_config(config)`); None for a selection."""
    device: torch.device
    space_maps: dict[str, Any]
    encoder: Any = None
    store: Store | None = None

    @classmethod
    def build(cls, config: CondenseConfig, device, space_maps, *, store: Store | None = None, encoder=None):
        """The run of `config` on `device`; the store's own encoder is loaded for --space input with the
        ImageBind guide (unless `encoder` is given), and `space_maps` move to the device."""
        method = get_method(config.method)
        if encoder is None and config.space == "input" and config.guide == "imagebind":
            encoder = _input_space_encoder(store, config, device)
        return cls(
            config=config,
            method=method,
            loss=method.loss.from_config(config) if method.kind == "synthesis" else None,
            device=torch.device(device),
            space_maps={m: None if v is None else v.to(device) for m, v in space_maps.items()},
            encoder=encoder,
            store=store,
        )


@dataclass
class ClassJob:
    """One class's condensation: its real rows and its own random stream (`class_generator`)."""

    class_id: int
    real: dict[str, torch.Tensor]
    """The class's store embeddings `{m: [n, D]}` (selection, initialisation)."""
    target: dict[str, torch.Tensor]
    """What the synthetic rows are matched against each step: `real`, or real inputs (--guide convnet)."""
    rows: torch.Tensor | None
    """The class's manifest rows (model inputs for --space input); None in embedding space."""
    dpc: int
    generator: torch.Generator
    bank: losses.FrequencyBank | None = None
    state_file: Path | None = None
    """Where a long class checkpoints (--checkpoint-every) and resumes from; None: never."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Where the class's time went: "bank" (its real CFs) and "steps" (the optimisation), filled in."""


def condense_class(run: Condensation, job: ClassJob, advance=None) -> tuple[dict[str, torch.Tensor], list]:
    """The synthetic (or selected) tensors of one class and its loss history; `advance(n, loss=...)` is
    told each step (a progress bar)."""
    advance = advance or (lambda *args, **kwargs: None)
    config = run.config
    if run.method.kind == "selection":
        chosen = run.method.select({m: v.cpu() for m, v in job.real.items()}, job.dpc, job.generator)
        advance(1, loss="-")
        selected = {m: job.real[m][chosen] for m in config.modalities}
        if config.space == "input":
            selected.update(_real_inputs(run.store, config, job.rows[chosen], _input_modalities(config)))
        return selected, []

    bank_started = time.perf_counter()
    if job.bank is not None:  # the class's real CFs under the bank's draws, while it is condensed
        job.bank.add_class(job.class_id, job.real)
    steps_started = time.perf_counter()
    job.seconds["bank"] = round(steps_started - bank_started, 4)
    params, optimizer = start_synthesis(run, job)
    start, history = _load_class_state(job.state_file, params, optimizer, job.generator)
    for iteration in range(start, config.iterations):
        began = time.perf_counter()
        terms = optimisation_step(run, job, params, optimizer)
        history.append(terms)
        seconds = {"seconds": time.perf_counter() - began}
        tracking.log(
            {f"class{job.class_id:03d}/{name}": value for name, value in {**terms, **seconds}.items()}, step=iteration
        )
        advance(1, loss=f"{terms['total']:.4f}")
        done = iteration + 1
        if (
            job.state_file
            and config.checkpoint_every
            and done % config.checkpoint_every == 0
            and done < config.iterations
        ):
            save_training_state(job.state_file, params, optimizer, {"class": job.generator}, {"history": history})
    job.seconds["steps"] = round(time.perf_counter() - steps_started, 4)
    if job.bank is not None:
        job.bank.drop_class(job.class_id)
    return _synthetic_tensors(params, config), history


def start_synthesis(run: Condensation, job: ClassJob) -> tuple[dict[str, torch.Tensor], torch.optim.Optimizer]:
    """The class's initial synthetic rows (leaf tensors: embedding vectors `[dpc, D]`, or model inputs
    `[dpc, *input shape]`) and their optimiser."""
    config, real, dpc, generator = run.config, job.real, job.dpc, job.generator
    n = next(iter(real.values())).shape[0]
    if config.init == "herding":
        chosen = select("herding", {m: v.cpu() for m, v in real.items()}, dpc, generator)
    else:
        chosen = torch.randperm(n, generator=generator)[:dpc]
    params = {}
    input_modalities = _input_modalities(config)
    real_inputs = (
        _real_inputs(run.store, config, job.rows[chosen], input_modalities)
        if input_modalities and config.init != "noise"
        else {}
    )
    for m in config.modalities:
        if m in input_modalities:
            if config.init == "noise":
                value = torch.randn((dpc, *INPUT_SHAPES[m]), generator=generator)
            else:
                value = real_inputs[m]
        elif config.init == "noise":
            value = torch.randn((dpc, real[m].shape[1]), generator=generator)
        else:
            value = real[m][chosen].cpu()
        params[m] = value.to(next(iter(real.values())).device).clone().requires_grad_(True)
    values = list(params.values())
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(values, lr=config.learning_rate())
    else:
        optimizer = torch.optim.SGD(values, lr=config.learning_rate(), momentum=0.5)
    return params, optimizer


def optimisation_step(run: Condensation, job: ClassJob, params, optimizer) -> dict[str, float]:
    """One optimisation step of one class: a real batch, the synthetic rows' embeddings (or ConvNet
    features), the method's loss, backward, the optimiser's step; returns the loss terms as floats."""
    config = run.config
    batch = _real_batch(job.target, config.real_batch, job.generator)
    if config.guide == "convnet" and config.space == "input":
        from ibdc_cli.encoders.convnet import random_guides

        guides = random_guides(config.modalities, job.generator, next(iter(params.values())).device)
        with torch.no_grad():
            batch = {m: guides[m](batch[m]) for m in config.modalities}
        syn = {m: guides[m](params[m]) for m in config.modalities}
    else:
        syn = _synthetic_embeddings(params, run)
    terms = run.loss(batch, syn, generator=job.generator, bank=job.bank, class_id=job.class_id)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in terms.items()}


def _input_modalities(config: CondenseConfig) -> list[str]:
    """Modalities optimised as model inputs; text can't be optimised as tokens, so it stays an embedding."""
    if config.space != "input":
        return []
    return [m for m in config.modalities if m != "text"]


def _synthetic_embeddings(params, run: Condensation) -> dict[str, torch.Tensor]:
    """Unit-norm embeddings of the current synthetic rows. Embedding-space rows are parametrised
    normalised (SPEC §3): terms linear in a row's norm would otherwise reward blowing it up."""
    inputs = _input_modalities(run.config)
    embeddings = {}
    for m in run.config.modalities:
        if m in inputs:
            with autocast(params[m].device, run.config.precision):
                raw = run.encoder.embed(m, params[m])
            embeddings[m] = map_embeddings(raw.float(), run.space_maps[m])
        else:
            embeddings[m] = torch.nn.functional.normalize(params[m], dim=-1)
    return embeddings


def _synthetic_tensors(params, config: CondenseConfig) -> dict[str, torch.Tensor]:
    inputs = _input_modalities(config)
    return {
        m: params[m].detach() if m in inputs else torch.nn.functional.normalize(params[m].detach(), dim=-1)
        for m in config.modalities
    }


def _real_batch(real: dict[str, torch.Tensor], size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`size` real rows of the class, the same rows for every modality (rows stay paired); all if size=0."""
    n = next(iter(real.values())).shape[0]
    if size == 0 or n <= size:
        return real
    index = torch.randperm(n, generator=generator)[:size].to(next(iter(real.values())).device)
    return {m: v[index] for m, v in real.items()}


# ----------------------------------------------------------------------------------------------------
# checkpoints of one class: safetensors only (parameters, optimiser state, random stream, history)


def _load_class_state(path: Path | None, params, optimizer, generator) -> tuple[int, list]:
    if path is None or not path.exists():
        return 0, []
    metadata = load_training_state(path, params, optimizer, {"class": generator}, what="condensation checkpoint")
    return len(metadata["history"]), metadata["history"]


# ----------------------------------------------------------------------------------------------------
# input space: the frozen encoder, real inputs for initialisation


def _input_space_encoder(store: Store, config: CondenseConfig, device):
    """The store's own encoder (never another one: the real side comes from the store)."""
    from ibdc_cli.encoders.imagebind import load_encoder, same_encoder

    recorded = store.encoder
    preset = config.model or recorded["preset"]
    if preset != recorded["preset"]:
        raise IbdcError(f"--model {preset}: store {store.path} was embedded with {recorded['preset']}")
    if recorded["weights"] != "random-init" and not config.checkpoint:
        raise IbdcError(
            f"store {store.path} was embedded with checkpoint sha256 {recorded['weights'][:12]}…; pass that "
            "file with --checkpoint for --space input"
        )
    encoder = load_encoder(
        preset,
        checkpoint=config.checkpoint,
        random_init=recorded["weights"] == "random-init",
        seed=recorded.get("seed") or 0,
    )
    if not same_encoder(encoder.describe(), recorded):
        raise IbdcError(
            f"--checkpoint is not the encoder that made store {store.path} "
            f"(store: {recorded['weights'][:12]}…, given: {encoder.describe()['weights'][:12]}…)"
        )
    encoder.to(device)
    return encoder


def _real_inputs(store: Store, config: CondenseConfig, rows: torch.Tensor, modalities: list[str]):
    """Preprocessed model inputs `{m: [n, *input shape]}` of the store rows `rows` (for init and selections),
    read again from the source the store records (`data.sources`), or from `--manifest`."""
    from ibdc_cli.data.sources import open_source

    source = open_source(store.index.get("manifest") or {}, modalities, config.manifest, str(store.path))
    read = dict(source.inputs([int(r) for r in rows], modalities))
    return {m: torch.stack([read[int(r)][m] for r in rows]) for m in modalities}


# ----------------------------------------------------------------------------------------------------
# the output file


def _write_synthetic_set(out, work, classes, run: Condensation, started, *, class_names, pseudo) -> CondenseResult:
    """Merge the classes' part files into the synthetic set `out`, every setting in its metadata."""
    config, store, encoder = run.config, run.store, run.encoder
    parts = [read_tensors(work / f"class-{c:05d}.safetensors", "partial condensation") for c in classes]
    tensors = {name: torch.cat([p[0][name] for p in parts]) for name in parts[0][0]}
    for m, space_map in run.space_maps.items():
        if space_map is not None:
            tensors.update(space_map.tensors(m))
    histories = [json.loads(p[1].get("history", "[]")) for p in parts]
    timings = [json.loads(p[1].get("seconds", "{}")) for p in parts]
    per_class = {k: round(sum(t.get(k, 0.0) for t in timings) / len(timings), 4) for k in ("bank", "steps")}
    peaks: dict[int, float] = {0: _peak_rss_mib()}
    for _, meta in parts:
        if "process" in meta:
            process = int(meta["process"])
            peaks[process] = max(peaks.get(process, 0.0), float(meta["peak_mib"]))
    history = _sum_histories(histories)
    seconds = time.time() - started
    kind = "selection" if run.method.kind == "selection" else "synthetic"
    tensor_spaces = {m: ("input" if m in _input_modalities(config) else "embedding") for m in config.modalities}
    metadata = {
        "kind": kind,
        "method": config.method,
        "space": config.space,
        "tensor_spaces": tensor_spaces,
        "space_map": config.space_map,
        "modalities": config.modalities,
        "dpc": config.dpc,
        "rows_per_class": {class_names[c]: int(p[0]["labels"].numel()) for c, p in zip(classes, parts, strict=True)},
        "class_names": class_names,
        **pseudo,  # stores without labels: "pseudo_labels" ("none" or "kmeans") and "clusters"
        "encoder": encoder.describe() if encoder is not None else store.encoder,
        "settings": {**config.settings(), "lr": config.learning_rate()},
        "config": {**config.recorded(), "store": str(store.path.resolve())},
        "seed": config.seed,
        "iterations": config.iterations if kind == "synthetic" else 0,
        "loss_history": history,
        "final_loss": history["total"][-1] if history.get("total") else None,
        "wall_time_s": round(seconds, 3),
        "peak_memory_mib": round(_peak_rss_mib(), 1),
        "peak_memory_mib_per_process": [round(peaks[p], 1) for p in sorted(peaks)],
        "seconds_per_class": per_class,  # mean over classes: its bank CFs, its optimisation steps
        "source_store": {"path": str(store.path.resolve()), "fingerprint": store.fingerprint()},
        "command": reproduce_command(store.path, config, out),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_synthetic_set(out, tensors, metadata)
    return CondenseResult(
        path=out,
        rows=int(tensors["labels"].numel()),
        seconds=seconds,
        final_loss=metadata["final_loss"],
        metadata=metadata,
    )


def _sum_histories(histories: list[list[dict[str, float]]]) -> dict[str, list[float]]:
    """Per-iteration loss terms summed over classes (the objective is a sum over classes)."""
    histories = [h for h in histories if h]
    if not histories:
        return {}
    length = min(len(h) for h in histories)
    return {key: [round(sum(h[i][key] for h in histories), 6) for i in range(length)] for key in histories[0][0]}


def _peak_rss_mib() -> float:
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 1024 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reproduce_command(store_path: Path, config: CondenseConfig, out: Path | None = None) -> str:
    """The `ibdc condense` command line that makes this set again (options left at their defaults, or at
    the values of the set's --preset, omitted; how it runs — device, resume, trackers — left out)."""
    defaults = replace(CondenseConfig.from_preset(config.preset, modalities=[]), preset=None)
    runs = tuple(f.name for f in dataclasses.fields(config) if f.metadata["kind"] == "run")
    line = command_line(replace(config, store=str(store_path)), defaults, skip=runs)
    return line if out is None else f"{line} --out {out}"
