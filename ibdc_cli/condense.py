"""Recipe: condense an embedding store into a synthetic set (`ibdc condense`).

Reads top to bottom:
1. open the store, check the request against it (modalities, DPC vs the smallest class, encoder);
2. give every class its own random stream, seeded from (seed, class id), and split the classes over
   the processes (class c -> process c mod N): N processes compute exactly what one process computes;
3. per class: select real rows (`random`/`herding`/`kcenter`), or initialise synthetic rows and
   optimise them against the class's real embeddings (`imagebinddc`/`dm`/`avdd`), in the embedding
   space or, through the frozen encoder, in the model-input space. The real side always comes from the
   store: it never changes, so it is never recomputed per step;
4. each finished class is saved as a part file (and long classes checkpoint every few iterations) in
   `.OUT.partial/`, so an interrupted run resumes with --resume;
5. the main process merges the classes into one .safetensors file with every setting in its metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import resource
import shutil
import sys
import time
import typing
from dataclasses import dataclass, field, replace
from functools import lru_cache
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
from ibdc_cli.methods.selection import SELECTION_METHODS, select
from ibdc_cli.runtime import (
    announce,
    autocast,
    encoder_words,
    log,
    process_state,
    progress_bar,
    resolve_device,
    shared_error,
    start_output_job,
)
from ibdc_cli.space import fit_space_map, map_embeddings
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


def condense(
    store_path: str | Path,
    out: str | Path,
    config: CondenseConfig,
    *,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    log_with: list[str] | tuple[str, ...] = (),
    log_dir: str | Path | None = None,
) -> CondenseResult:
    """Condense the store at `store_path` into the synthetic set `out`; see the module docstring.

    `log_with` (trackers of `ibdc_cli.tracking`: csv, tensorboard, wandb) logs each step's loss terms and
    seconds per class to `log_dir` (default: `OUT-logs/` beside `out`)."""
    started = time.time()
    out = Path(out)
    config.check()
    state = process_state(device)
    if config.guide == "convnet" and config.freq_bank:
        log("--guide convnet redraws its networks every step, so real CFs cannot be cached: --freq-bank 0", state)
        config = replace(config, freq_bank=0)
    torch_device = resolve_device(state, device)
    store = open_store(store_path)
    if out.is_dir():
        raise IbdcError(f"--out {out} is a directory; a synthetic set is one .safetensors file")
    if out.exists() and not overwrite:
        raise IbdcError(f"{out} exists; choose another --out or pass --overwrite")
    if out.suffix != ".safetensors":
        raise IbdcError(f"--out {out}: a synthetic set is written as a .safetensors file")
    announce(
        "condense",
        state,
        device=torch_device,
        encoder=encoder_words(store.encoder),
        precision=config.precision,
        method=config.method,
        store=store.path,
        out=out,
    )
    missing = [m for m in config.modalities if m not in store.modalities]
    if missing:
        raise IbdcError(f"store {store.path} has no {missing[0]!r} embeddings (it has: {', '.join(store.modalities)})")
    labeled = store.index.get("labeled", bool(store.class_names))
    if labeled and config.clusters:
        raise IbdcError(f"--clusters forms pseudo-classes for a store without labels; store {store.path} has labels")
    data = store.load(config.modalities)
    space_maps = {m: fit_space_map(data[m], config.space_map) for m in config.modalities}
    for m in config.modalities:
        data[m] = map_embeddings(data[m], space_maps[m])
    class_names, pseudo = store.class_names, {}
    if not labeled:  # condensation is class-conditional: one pseudo-class, or k-means ones (--clusters)
        from ibdc_cli.methods.clusters import pseudo_classes

        data["labels"], class_names, pseudo = pseudo_classes(data, config.modalities, config.clusters, config.seed)
    per_class = _rows_per_class(data["labels"], len(class_names))
    dpc_of = _check_dpc(per_class, class_names, config)
    use_imagebind = config.space == "input" and config.guide == "imagebind"
    encoder = _input_space_encoder(store, config, torch_device) if use_imagebind else None

    with contextlib.ExitStack() as stack:
        job = {"store": store.fingerprint(), "config": config.settings()}
        work = partial_dir(out)
        start_output_job(stack, state, out, work, job, resume)
        error = None

        space_maps = {m: None if v is None else v.to(torch_device) for m, v in space_maps.items()}
        classes = [c for c in range(len(class_names)) if per_class[c].numel()]
        mine = [c for c in classes if c % state.num_processes == state.process_index]
        if resume:
            drop_damaged([work / f"{kind}-{c:05d}.safetensors" for c in mine for kind in ("class", "state")], log)
        todo = [c for c in mine if not (work / f"class-{c:05d}.safetensors").exists()]
        if len(todo) < len(mine):
            log(f"resuming: {len(mine) - len(todo)} of {len(mine)} classes already done", state)
        bank = _frequency_bank(data, per_class, todo, config, torch_device) if config.freq_bank else None
        steps = config.iterations if config.method in SYNTHESIS_METHODS else 1
        try:
            logs = Path(log_dir) if log_dir is not None else out.parent / f"{out.stem}-logs"
            with (
                tracking.run(list(log_with), out.stem, logs, {"store": str(store.path), **config.settings()}, state),
                progress_bar(
                    f"condense {config.method}", len(todo) * steps, state, fields="loss {task.fields[loss]}"
                ) as advance,
            ):
                for c in todo:
                    real = {m: data[m][per_class[c]].to(torch_device) for m in config.modalities}
                    rows = data["row"][per_class[c]]
                    if config.guide == "convnet" and config.method in SYNTHESIS_METHODS:
                        # The ConvNet is redrawn every step, so its real side has to be recomputed from real inputs.
                        target = {
                            m: v.to(torch_device)
                            for m, v in _real_inputs(store, config, rows, config.modalities).items()
                        }
                    else:
                        target = real
                    tensors, history = _condense_class(
                        c,
                        real,
                        target,
                        rows,
                        dpc_of[c],
                        config,
                        store,
                        encoder,
                        space_maps,
                        bank,
                        work,
                        torch_device,
                        advance,
                    )
                    tensors["labels"] = torch.full((dpc_of[c],), c, dtype=torch.int64)
                    if not all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()):
                        raise IbdcError(
                            f"condensing class {class_names[c]!r} diverged: the synthetic rows hold NaN or Inf "
                            "(lower --lr or --sigma); nothing was written"
                        )
                    atomic_save_tensors(
                        work / f"class-{c:05d}.safetensors",
                        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                        metadata={"history": json.dumps(history)},
                    )
                    (work / f"state-{c:05d}.safetensors").unlink(missing_ok=True)
        except IbdcError as exc:
            error = exc
        error = shared_error(state, error)  # bad input in any process stops every process
        if error is not None:
            # Bad input found mid-run leaves nothing half-written, but a resumed run never deletes the
            # finished work it was asked to continue.
            if state.is_main_process and not resume:
                shutil.rmtree(work, ignore_errors=True)
            raise error
        result = None
        if state.is_main_process:
            result = _write_synthetic_set(
                out, work, classes, store, config, encoder, space_maps, started, class_names=class_names, pseudo=pseudo
            )
            shutil.rmtree(work, ignore_errors=True)
        state.wait_for_everyone()
        return result or CondenseResult(path=out, rows=0, seconds=time.time() - started, final_loss=None)


def _rows_per_class(labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    return [torch.nonzero(labels == c).flatten() for c in range(num_classes)]


def _check_dpc(per_class: list[torch.Tensor], class_names: list[str], config: CondenseConfig) -> list[int]:
    counts = [int(rows.numel()) for rows in per_class]
    smallest = min((n for n in counts if n), default=0)
    if config.dpc > smallest and not config.allow_fewer:
        c = counts.index(smallest)
        raise IbdcError(
            f"--dpc {config.dpc} is more than class {class_names[c]!r} has ({smallest} real rows); lower --dpc, "
            "or pass --allow-fewer to give such classes one synthetic row per real row"
        )
    return [min(config.dpc, n) for n in counts]


# ----------------------------------------------------------------------------------------------------
# one class


def _condense_class(c, real, target, rows, dpc, config, store, encoder, space_maps, bank, work, device, advance):
    """Synthetic (or selected) tensors of class `c` and its loss history.

    `real`: the class's store embeddings `{m: [n, D]}` (selection, initialisation); `target`: what the
    synthetic rows are matched against each step (the same embeddings, or real inputs for the ConvNet guide).
    """
    generator = class_generator(config.seed, c)
    if config.method in SELECTION_METHODS:
        chosen = select(config.method, {m: v.cpu() for m, v in real.items()}, dpc, generator)
        advance(1, loss="-")
        selected = {m: real[m][chosen] for m in config.modalities}
        if config.space == "input":
            selected.update(_real_inputs(store, config, rows[chosen], _input_modalities(config)))
        return selected, []

    params = _initial_params(real, rows, dpc, config, store, encoder, generator)
    optimizer = _make_optimizer(list(params.values()), config)
    state_file = work / f"state-{c:05d}.safetensors"
    start, history = _load_class_state(state_file, params, optimizer, generator)
    for iteration in range(start, config.iterations):
        began = time.perf_counter()
        terms = _step(target, params, config, encoder, space_maps, bank, c, generator, optimizer)
        history.append(terms)
        seconds = {"seconds": time.perf_counter() - began}
        tracking.log({f"class{c:03d}/{name}": value for name, value in {**terms, **seconds}.items()}, step=iteration)
        advance(1, loss=f"{terms['total']:.4f}")
        done = iteration + 1
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.iterations:
            _save_class_state(state_file, params, optimizer, generator, history)
    return _synthetic_tensors(params, config, encoder), history


def _initial_params(real, rows, dpc, config, store, encoder, generator) -> dict[str, torch.Tensor]:
    """Leaf tensors to optimise: embedding vectors `[dpc, D]`, or model inputs `[dpc, *input shape]`."""
    n = next(iter(real.values())).shape[0]
    if config.init == "herding":
        chosen = select("herding", {m: v.cpu() for m, v in real.items()}, dpc, generator)
    else:
        chosen = torch.randperm(n, generator=generator)[:dpc]
    params = {}
    input_modalities = _input_modalities(config)
    real_inputs = (
        _real_inputs(store, config, rows[chosen], input_modalities)
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
    return params


def _input_modalities(config: CondenseConfig) -> list[str]:
    """Modalities optimised as model inputs; text can't be optimised as tokens, so it stays an embedding."""
    if config.space != "input":
        return []
    return [m for m in config.modalities if m != "text"]


def _synthetic_embeddings(params, config, encoder, space_maps) -> dict[str, torch.Tensor]:
    """Unit-norm embeddings of the current synthetic rows. Embedding-space rows are parametrised
    normalised (SPEC §3): terms linear in a row's norm would otherwise reward blowing it up."""
    inputs = _input_modalities(config)
    embeddings = {}
    for m in config.modalities:
        if m in inputs:
            with autocast(params[m].device, config.precision):
                raw = encoder.embed(m, params[m])
            embeddings[m] = map_embeddings(raw.float(), space_maps[m])
        else:
            embeddings[m] = torch.nn.functional.normalize(params[m], dim=-1)
    return embeddings


def _synthetic_tensors(params, config, encoder) -> dict[str, torch.Tensor]:
    inputs = _input_modalities(config)
    return {
        m: params[m].detach() if m in inputs else torch.nn.functional.normalize(params[m].detach(), dim=-1)
        for m in config.modalities
    }


def _make_optimizer(params: list[torch.Tensor], config: CondenseConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate())
    return torch.optim.SGD(params, lr=config.learning_rate(), momentum=0.5)


def _step(real, params, config, encoder, space_maps, bank, class_id, generator, optimizer) -> dict[str, float]:
    """One optimisation step of one class; returns the loss terms as floats."""
    batch = _real_batch(real, config.real_batch, generator)
    if config.guide == "convnet" and config.space == "input":
        from ibdc_cli.encoders.convnet import random_guides

        guides = random_guides(config.modalities, generator, next(iter(params.values())).device)
        with torch.no_grad():
            batch = {m: guides[m](batch[m]) for m in config.modalities}
        syn = {m: guides[m](params[m]) for m in config.modalities}
        real = batch
    else:
        syn = _synthetic_embeddings(params, config, encoder, space_maps)
    if config.method == "dm":
        terms = {"total": losses.dm_loss(batch, syn)}
    elif config.method == "avdd":
        terms = losses.avdd_loss(batch, syn, lambda_icm=config.lambda_cross, lambda_cgm=config.lambda_joint)
    else:
        terms = _imagebinddc_terms(real, batch, syn, config, bank, class_id, generator)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in terms.items()}


def _real_batch(real: dict[str, torch.Tensor], size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`size` real rows of the class, the same rows for every modality (rows stay paired); all if size=0."""
    n = next(iter(real.values())).shape[0]
    if size == 0 or n <= size:
        return real
    index = torch.randperm(n, generator=generator)[:size].to(next(iter(real.values())).device)
    return {m: v[index] for m, v in real.items()}


def _imagebinddc_terms(real, batch, syn, config, bank, class_id, generator) -> dict[str, torch.Tensor]:
    device = next(iter(syn.values())).device
    needs_joint_cf = config.joint_form == "cf" and config.lambda_joint and len(config.modalities) > 1
    cf_options = dict(alpha=config.alpha, beta=config.beta, reduction=config.cf_reduction)
    real_cf = real_joint_cf = None
    if bank is not None:
        # A fixed bank of B frequency draws whose real-side CFs (over all the class's rows) are cached.
        b = int(torch.randint(len(bank["freqs"]), (1,), generator=generator))
        freqs = {m: bank["freqs"][b][m] for m in config.modalities}
        freqs_joint = bank["joint"][b] if needs_joint_cf else None
        real_cf = bank["real_cf"][class_id][b]
        real_joint_cf = bank["real_joint_cf"][class_id][b] if needs_joint_cf else None
    else:
        freqs = {m: _draw(config, syn[m].shape[1], generator, device) for m in config.modalities}
        total_dim = sum(syn[m].shape[1] for m in config.modalities)
        freqs_joint = _draw(config, total_dim, generator, device) if needs_joint_cf else None
    return losses.imagebinddc_loss(
        batch,
        syn,
        freqs=freqs,
        freqs_joint=freqs_joint,
        lambda_uni=config.lambda_uni,
        lambda_cross=config.lambda_cross,
        lambda_joint=config.lambda_joint,
        cross_form=config.cross_form,
        joint_form=config.joint_form,
        generator=generator,
        real_cf=real_cf,
        real_joint_cf=real_joint_cf,
        **cf_options,
    )


def _draw(config: CondenseConfig, dim: int, generator: torch.Generator, device) -> torch.Tensor:
    return losses.sample_frequencies(config.num_freqs, dim, config.sigma, generator=generator).to(device)


def _frequency_bank(data, per_class, classes: list[int], config: CondenseConfig, device) -> dict[str, Any]:
    """B fixed frequency draws (seeded by --seed alone) and the real-side CFs of `classes` under each.

    The CFs cover all of a class's rows and are computed once; with a bank, a step's cost no longer grows
    with the number of real rows (the paired cross/joint terms use the bounded --real-batch)."""
    generator = torch.Generator().manual_seed(config.seed)
    dims = {m: data[m].shape[1] for m in config.modalities}
    joint = config.joint_form == "cf" and len(config.modalities) > 1
    total_dim = sum(dims.values())
    freqs = [{m: _draw(config, dims[m], generator, device) for m in config.modalities} for _ in range(config.freq_bank)]
    joint_freqs = [_draw(config, total_dim, generator, device) if joint else None for _ in range(config.freq_bank)]
    real_cf, real_joint_cf = {}, {}
    for c in classes:
        real = {m: data[m][per_class[c]].to(device) for m in config.modalities}
        real_cf[c] = [losses.modality_cfs(real, f) for f in freqs]
        if joint:
            concat = torch.cat([real[m] for m in config.modalities], dim=1)
            real_joint_cf[c] = [losses.characteristic_function(concat, jf) for jf in joint_freqs]
    return {"freqs": freqs, "joint": joint_freqs, "real_cf": real_cf, "real_joint_cf": real_joint_cf}


# ----------------------------------------------------------------------------------------------------
# checkpoints of one class: safetensors only (parameters, optimiser state, random stream, history)


def _save_class_state(path: Path, params, optimizer, generator, history) -> None:
    save_training_state(path, params, optimizer, {"class": generator}, {"history": history})


def _load_class_state(path: Path, params, optimizer, generator) -> tuple[int, list]:
    if not path.exists():
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
    """Preprocessed model inputs `{m: [n, *input shape]}` of the manifest rows `rows` (for init and selections)."""
    from ibdc_cli.data.preprocess import load

    manifest_path = Path(config.manifest or store.index["manifest"]["path"])
    if not manifest_path.exists():
        raise IbdcError(f"--space input needs the training manifest: {manifest_path} not found (pass --manifest)")
    expected = store.index["manifest"]["sha256"]
    # keyed on the file's mtime too, so an edited manifest is read (and checked) again
    key = (str(manifest_path), manifest_path.stat().st_mtime_ns, tuple(modalities), expected, str(store.path))
    manifest = _training_manifest(*key)
    return {m: torch.stack([load(m, manifest.rows[int(r)][m], manifest.base_dir) for r in rows]) for m in modalities}


@lru_cache(maxsize=4)
def _training_manifest(path: str, mtime_ns: int, modalities: tuple[str, ...], sha256: str, store_path: str):
    """The store's training manifest, read and checked once per run rather than once per class."""
    from ibdc_cli.data.manifest import read_manifest

    manifest = read_manifest(path, list(modalities), require_label=False)
    if manifest.sha256 != sha256:
        raise IbdcError(f"manifest {path} is not the one store {store_path} was made from (SHA-256 differs)")
    return manifest


# ----------------------------------------------------------------------------------------------------
# the output file


def _write_synthetic_set(
    out, work, classes, store, config, encoder, space_maps, started, *, class_names, pseudo
) -> CondenseResult:
    parts = [read_tensors(work / f"class-{c:05d}.safetensors", "partial condensation") for c in classes]
    tensors = {name: torch.cat([p[0][name] for p in parts]) for name in parts[0][0]}
    for m, space_map in space_maps.items():
        if space_map is not None:
            tensors.update(space_map.tensors(m))
    histories = [json.loads(p[1].get("history", "[]")) for p in parts]
    history = _sum_histories(histories)
    seconds = time.time() - started
    kind = "selection" if config.method in SELECTION_METHODS else "synthetic"
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


def run_condense(config: CondenseConfig) -> CondenseResult:
    """`condense` with every option, the store and the output from one `CondenseConfig` (the CLI's call)."""
    return condense(
        config.store,
        config.out,
        config,
        device=config.device,
        resume=config.resume,
        overwrite=config.overwrite,
        log_with=config.log_with,
        log_dir=config.log_dir,
    )
