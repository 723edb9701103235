"""Recipe: evaluate a synthetic set (or selection) on a real test store (`ibdc evaluate`).

Protocols (SPEC §4):
- `linear` (default) and `mlp`: one head per modality on frozen unit-norm embeddings, trained on the
  synthetic rows only; late fusion = mean of the heads' softmaxes; top-1 accuracy on the test store.
  Input-space sets (`--space input`) are first embedded by the encoder recorded in the file.
- `convnet`: ConvNets trained from scratch on input-space synthetic data, tested on the real test
  manifest (`ibdc_cli.convnet_eval`).
- `retrieval`: paired data without labels: projection heads trained with symmetric InfoNCE on the
  synthetic pairs, Recall@1/5/10 both ways on the test store's pairs (`ibdc_cli.retrieval`).

Every protocol uses a fixed schedule (epochs, learning rate, weight decay are settings, never tuned on
the test split); the test split is read only to score the trained heads. `--seeds N` repeats training
with N seeds (head initialisation and batch order) and reports mean ± std. Several sets of one
configuration (condensation seeds, `load_sets`) give mean ± std over sets × head seeds, with each set's
mean, so the spread between condensation seeds is seen apart from the head seeds'. `--train STORE`
trains the same heads on the whole real training store (once: it does not depend on the sets), for the
ratio synthetic / whole.

Example::

    result = evaluate(["dm-0.safetensors", "dm-1.safetensors"], "stores/test", seeds=3)
    result["mean"], result["std"], result["set_std"], len(result["runs"])   # runs: 2 sets x 3 seeds = 6
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ibdc_cli.encoders.imagebind import same_encoder
from ibdc_cli.errors import IbdcError
from ibdc_cli.runtime import autocast, check_precision, log, single_device
from ibdc_cli.space import SpaceMap, map_embeddings, space_maps_of_set
from ibdc_cli.store import Store, _flatten, load_synthetic_set, open_store

PROTOCOLS = ("linear", "mlp", "convnet", "retrieval")
# Metadata in which sets of one configuration may differ: the condensation seed and what each run records
# about itself. Paths are left out too: the encoder's SHA-256 and the store's fingerprint identify what they
# name, and how often a run saved its state does not change its rows.
PER_RUN_FIELDS = (
    "seed",
    "settings.seed",
    "loss_history",
    "final_loss",
    "wall_time_s",
    "peak_memory_mib",
    "created",
    "command",
    "ibdc_version",
    "source_store.path",
    "settings.checkpoint",
    "settings.manifest",
    "settings.checkpoint_every",
)
SyntheticSet = tuple[Path, dict[str, torch.Tensor], dict[str, Any]]


@dataclass
class HeadSchedule:
    """The fixed training schedule of the evaluation heads (Adam, mini-batches of 256).

    Chosen on validation data, never a test split: first by 5-fold cross-validation of whole-data training
    on the av-digits train store, then re-checked on the fsdd-mnist val split for whole data and for
    training sets of 10 to 200 rows (`benchmarks/head_schedule.py`, docs/benchmarks.md): among lr
    {0.1, 0.01, 0.001} x weight decay {0, 5e-4, 5e-3}, lr 0.01 with 5e-4 is best on whole data and within
    1.1 points of the best on every small set. 5e-4 is also the weight decay of DC/DM's evaluation."""

    epochs: int = 300
    lr: float = 0.01
    weight_decay: float = 5e-4
    hidden: int = 256  # mlp only
    batch_size: int = 256


def _head(protocol: str, dim: int, classes: int, hidden: int) -> torch.nn.Module:
    if protocol == "linear":
        return torch.nn.Linear(dim, classes)
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes))


def train_heads(
    features: dict[str, torch.Tensor],
    labels: torch.Tensor,
    num_classes: int,
    *,
    protocol: str,
    schedule: HeadSchedule,
    seed: int,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> dict[str, torch.nn.Module]:
    """One head per modality, trained with cross-entropy on `features[m]` `[N, D]` and `labels` `[N]`, on
    `device`, its forward passes under `precision`'s autocast (the loss in float32)."""
    heads = {}
    device = torch.device(device)
    labels = labels.to(device)
    for index, (modality, x) in enumerate(features.items()):
        generator = torch.Generator().manual_seed(seed * 1000 + index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + index)
            head = _head(protocol, x.shape[1], num_classes, schedule.hidden).to(device)
        optimizer = torch.optim.Adam(head.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
        x = F.normalize(x.float(), dim=-1).to(device)
        for _ in range(schedule.epochs):
            order = torch.randperm(len(x), generator=generator).to(device)
            for start in range(0, len(x), schedule.batch_size):
                batch = order[start : start + schedule.batch_size]
                with autocast(device, precision):
                    logits = head(x[batch])
                loss = F.cross_entropy(logits.float(), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        heads[modality] = head.eval()
    return heads


@torch.no_grad()
def fused_accuracy(
    heads: dict[str, torch.nn.Module], features: dict[str, torch.Tensor], labels: torch.Tensor, precision: str = "fp32"
) -> float:
    """Top-1 accuracy of late fusion: the mean of the per-modality softmaxes (on the heads' device)."""
    probs = []
    for m, head in heads.items():
        device = next(head.parameters()).device
        with autocast(device, precision):
            logits = head(F.normalize(features[m].float(), dim=-1).to(device))
        probs.append(F.softmax(logits.float(), dim=-1).cpu())
    return float((torch.stack(probs).mean(0).argmax(-1) == labels.cpu()).float().mean())


def summarize_runs(values: list[float]) -> dict[str, Any]:
    """`{"mean", "std" (population), "runs"}` of one metric over seeds."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "runs": values,
    }


def summarize_sets(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary of one metric over sets x head seeds, from `runs` `[{"set", "seed", "value"}]`.

    `{"mean", "std" (population, over all runs), "runs", "per_set": [{"set", "mean", "std"}], "set_std"}`;
    `set_std` is the std of the per-set means, the spread between condensation seeds (0.0 for one set).
    """
    by_set: dict[str, list[float]] = {}
    for run in runs:
        by_set.setdefault(run["set"], []).append(run["value"])
    per_set = []
    for path, values in by_set.items():
        summary = summarize_runs(values)
        per_set.append({"set": path, "mean": summary["mean"], "std": summary["std"]})
    means = [s["mean"] for s in per_set]
    return {
        **summarize_runs([run["value"] for run in runs]),
        "runs": runs,
        "per_set": per_set,
        "set_std": statistics.pstdev(means) if len(means) > 1 else 0.0,
    }


def spread_words(sets: int, seeds: int) -> str:
    """What a mean ± std is taken over, for people: "3 sets × 3 head seeds", or head seeds only."""
    heads = f"{seeds} head seed{'s' if seeds != 1 else ''}"
    return f"{sets} sets × {heads}" if sets > 1 else f"1 set × {heads}: spread over head seeds only"


def load_sets(synthetic: str | Path | Sequence[str | Path]) -> list[SyntheticSet]:
    """`(path, tensors, metadata)` of each set to evaluate together, checked to be one configuration.

    Sets of one configuration (e.g. `ibdc condense --seed 0`, `1`, `2`) have the same metadata but for
    `PER_RUN_FIELDS`, the same space-map tensors (so one whole-data result serves them all) and
    different seeds; anything else raises IbdcError naming the set and the setting.
    """
    paths = [Path(synthetic)] if isinstance(synthetic, str | Path) else [Path(p) for p in synthetic]
    if not paths:
        raise IbdcError("evaluate needs at least one synthetic set")
    seen: dict[Path, Path] = {}
    for path in paths:
        if path.resolve() in seen:
            raise IbdcError(f"{path} is given twice; each set counts once in mean ± std")
        seen[path.resolve()] = path
    sets = [(path, *load_synthetic_set(path)) for path in paths]
    first, first_tensors, first_meta = sets[0]
    reference = _configuration(first_meta)
    seeds = {first_meta.get("seed"): first}
    for path, tensors, meta in sets[1:]:
        config = _configuration(meta)
        differing = sorted(
            (k for k in reference.keys() | config.keys() if reference.get(k, "(none)") != config.get(k, "(none)")),
            key=lambda k: (not k.startswith("settings."), k),  # name the user's option first
        )
        if differing:
            key = differing[0]
            mine, theirs = _short(config.get(key, "(none)")), _short(reference.get(key, "(none)"))
            what = f"--{key.removeprefix('settings.').replace('_', '-')}" if key.startswith("settings.") else key
            raise IbdcError(
                f"{path} was made with {what} {mine}, {first} with {theirs}; sets evaluated together may differ "
                "only in --seed"
            )
        for name in sorted(n for n in first_tensors.keys() | tensors.keys() if n.startswith(("center.", "whiten."))):
            this, reference_map = tensors.get(name), first_tensors.get(name)
            same_shape = this is not None and reference_map is not None and this.shape == reference_map.shape
            if not same_shape or not torch.allclose(this, reference_map, rtol=1e-4, atol=1e-6):
                raise IbdcError(f"{path}: its space map {name} differs from that of {first} (fitted on other data?)")
        seed = meta.get("seed")
        if seed is not None and seed in seeds:
            raise IbdcError(
                f"{path} and {seeds[seed]} both have --seed {seed}: sets evaluated together differ in --seed"
            )
        seeds[seed] = path
    return sets


def _configuration(meta: dict[str, Any]) -> dict[str, Any]:
    flat = _flatten(meta)
    return {k: v for k, v in flat.items() if not any(k == f or k.startswith(f + ".") for f in PER_RUN_FIELDS)}


def _short(value: Any, width: int = 60) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def whole_data_fields(synthetic_mean: float, whole_runs: list[float]) -> dict[str, Any]:
    """The whole-data result of a metric (`--train`) and the ratio synthetic / whole."""
    whole = summarize_runs(whole_runs)
    return {
        "whole_mean": whole["mean"],
        "whole_std": whole["std"],
        "whole_runs": whole_runs,
        "ratio": synthetic_mean / whole["mean"] if whole["mean"] else None,
    }


def set_class_ids(store: Store, class_names: list[str], labels: torch.Tensor) -> torch.Tensor:
    """A store's `labels` as the synthetic set's class ids, matched by class name."""
    if not store.index.get("labeled", bool(store.class_names)):
        raise IbdcError(
            f"store {store.path} has no labels, and the set's accuracy needs them (for paired data without "
            "labels use --protocol retrieval)"
        )
    unknown = [n for n in store.class_names if n not in class_names]
    if unknown:
        raise IbdcError(f"store {store.path} has class {unknown[0]!r}, which the synthetic set does not have")
    mapping = torch.tensor([class_names.index(n) for n in store.class_names], dtype=torch.long)
    return mapping[labels.long()]


def evaluate(
    synthetic: str | Path | Sequence[str | Path],
    test_store: str | Path,
    *,
    protocol: str = "linear",
    seeds: int = 3,
    schedule: HeadSchedule | None = None,
    train_store: str | Path | None = None,
    modalities: list[str] | None = None,
    checkpoint: str | Path | None = None,
    test_manifest: str | Path | None = None,
    train_manifest: str | Path | None = None,
    device: str = "auto",
    precision: str = "fp32",
) -> dict[str, Any]:
    """Accuracy of heads trained on `synthetic` and tested on `test_store`: mean ± std over sets x seeds.

    The heads (or ConvNets, and the encoder of input-space sets) run on `device` ("auto": CUDA when
    available), their forward passes under `precision`'s autocast (fp32, bf16, fp16).

    `synthetic` is one set or several of one configuration (condensation seeds; see `load_sets`).
    Returns `{"protocol", "metric", "sets", "seeds", "method", "dpc", "modalities", "test_rows", "schedule",
    "mean", "std", "runs": [{"set", "seed", "value"}], "per_set", "set_std"}` (`summarize_sets`), and with
    `train_store` `"whole_mean", "whole_std", "whole_runs"` (one per seed) and `"ratio"`.
    """
    schedule = schedule or HeadSchedule()
    if protocol not in PROTOCOLS:
        raise IbdcError(f"--protocol {protocol!r} is not one of: {', '.join(PROTOCOLS)}")
    if seeds < 1:
        raise IbdcError("--seeds must be at least 1")
    check_precision(precision)
    torch_device = single_device(device)
    if protocol == "retrieval":  # paired data without labels: recall@k both ways (ibdc_cli.retrieval)
        from ibdc_cli.retrieval import RetrievalSchedule, evaluate_retrieval

        return evaluate_retrieval(
            synthetic,
            test_store,
            seeds=seeds,
            train_store=train_store,
            schedule=schedule if isinstance(schedule, RetrievalSchedule) else None,
            modalities=modalities,
        )
    sets = load_sets(synthetic)
    meta = sets[0][2]
    test = open_store(test_store)
    modalities = modalities or list(meta["modalities"])
    if protocol == "convnet":
        from ibdc_cli.convnet_eval import ConvnetSchedule, evaluate_convnet

        return evaluate_convnet(
            sets,
            test,
            modalities,
            seeds=seeds,
            schedule=schedule if isinstance(schedule, ConvnetSchedule) else ConvnetSchedule(),
            train_store=train_store,
            test_manifest=test_manifest,
            train_manifest=train_manifest,
            device=torch_device,
            precision=precision,
        )
    class_names = list(meta["class_names"])

    def score(features, labels, test_data, test_labels, seed: int) -> float:
        """Accuracy (%) on the test rows of heads trained with `seed` on `features` and `labels`."""
        heads = train_heads(
            features,
            labels,
            len(class_names),
            protocol=protocol,
            schedule=schedule,
            seed=seed,
            device=torch_device,
            precision=precision,
        )
        return 100.0 * fused_accuracy(heads, test_data, test_labels, precision)

    runs = []
    for path, tensors, set_meta in sets:
        _check_compatible(set_meta, test, modalities, path)
        features = _synthetic_features(tensors, set_meta, modalities, path, checkpoint, torch_device, precision)
        _check_set_shapes(path, features, tensors["labels"], len(class_names), test)
        test_data, test_labels = _store_features(test, modalities, class_names, space_maps_of_set(tensors, modalities))
        syn_labels = tensors["labels"].long()
        for seed in range(seeds):
            accuracy = score(features, syn_labels, test_data, test_labels, seed)
            runs.append({"set": str(path), "seed": seed, "value": accuracy})
    result: dict[str, Any] = {
        "protocol": protocol,
        "metric": "top-1 accuracy (%)",
        "sets": [str(path) for path, _, _ in sets],
        "seeds": seeds,
        "method": meta.get("method"),
        "dpc": meta.get("dpc"),
        "modalities": modalities,
        "test_rows": int(test_labels.numel()),
        "schedule": vars(schedule),
        **summarize_sets(runs),
    }
    if train_store is not None:
        # the sets share their space maps (load_sets checks), so the whole-data heads are trained once
        space_maps = space_maps_of_set(sets[0][1], modalities)
        train = open_store(train_store)
        _check_compatible(meta, train, modalities, train_store)
        train_data, train_labels = _store_features(train, modalities, class_names, space_maps)
        test_data, test_labels = _store_features(test, modalities, class_names, space_maps)
        log(f"training the same heads on the whole store {train.path} ({train_labels.numel()} rows)")
        whole = [score(train_data, train_labels, test_data, test_labels, seed) for seed in range(seeds)]
        result.update(whole_data_fields(result["mean"], whole))
    return result


def format_accuracy(result: dict[str, Any]) -> str:
    """An accuracy result (`linear`, `mlp`, `convnet`) for people: mean ± std, what the spread is over,
    each set's mean when there are several, and the whole-data line with `--train`."""
    spread = spread_words(len(result["sets"]), result["seeds"])
    lines = [
        f"{result['method']} dpc {result['dpc']}: {result['mean']:.2f} ± {result['std']:.2f} % "
        f"({result['protocol']}, {spread}, {result['test_rows']} test rows)"
    ]
    if len(result["sets"]) > 1:
        means = ", ".join(f"{s['mean']:.2f}" for s in result["per_set"])
        lines.append(f"per set: {means} %   std between sets {result['set_std']:.2f}")
    if "whole_mean" in result:
        ratio = "-" if result["ratio"] is None else f"{result['ratio']:.3f}"
        lines.append(f"whole data: {result['whole_mean']:.2f} ± {result['whole_std']:.2f} %   ratio {ratio}")
    return "\n".join(lines)


def _synthetic_features(
    tensors, meta, modalities, path, checkpoint=None, device="cpu", precision="fp32"
) -> dict[str, torch.Tensor]:
    missing = [m for m in modalities if m not in tensors]
    if missing:
        raise IbdcError(f"synthetic set {path} has no {missing[0]!r} (it has: {', '.join(meta['modalities'])})")
    spaces = meta.get("tensor_spaces", {})
    inputs = [m for m in modalities if spaces.get(m) == "input"]
    features = {m: tensors[m] for m in modalities}
    if inputs:
        features.update(embed_synthetic_inputs(tensors, meta, inputs, path, checkpoint, device, precision))
    return features


@torch.no_grad()
def embed_synthetic_inputs(
    tensors, meta, modalities, path, checkpoint=None, device="cpu", precision="fp32"
) -> dict[str, torch.Tensor]:
    """Embeddings `[M, D]` of an input-space set's model inputs by the encoder recorded in the file, mapped
    into the set's space with its recorded maps (as `_store_features` maps the test store)."""
    encoder = recorded_encoder(meta, path, checkpoint).to(device)
    features = {}
    for m in modalities:
        x = tensors[m]
        chunks = []
        for i in range(0, len(x), 64):
            with autocast(torch.device(device), precision):
                chunks.append(encoder.embed(m, x[i : i + 64].to(device)).float().cpu())
        embedded = torch.cat(chunks)
        features[m] = map_embeddings(embedded, space_maps_of_set(tensors, [m]).get(m))
    return features


def recorded_encoder(meta: dict, path, checkpoint=None):
    """The encoder recorded in a synthetic set's metadata (preset, seed, checkpoint SHA-256). Its
    checkpoint is `checkpoint`, else the file recorded in the settings, else `$IBDC_CHECKPOINT`."""
    from ibdc_cli.encoders.imagebind import Encoder, build_model, load_encoder, resolve_checkpoint
    from ibdc_cli.store import file_sha256

    recorded = meta["encoder"]
    if recorded.get("weights") == "random-init":
        seed = recorded.get("seed") or 0
        encoder = Encoder(build_model(recorded["preset"], seed), recorded["preset"], None, seed)
    else:
        sha = str(recorded.get("weights"))
        file = resolve_checkpoint(checkpoint or meta.get("settings", {}).get("checkpoint"))
        if file is None or not file.is_file():
            raise IbdcError(
                f"{path} holds model inputs of encoder checkpoint sha256 {sha[:12]}…, whose file "
                f"{file or '(none recorded)'} is missing; pass it with --checkpoint PATH"
            )
        if file_sha256(file) != sha:
            raise IbdcError(
                f"checkpoint {file} is not the encoder {path} was made with (sha256 {file_sha256(file)[:12]}… vs "
                f"{sha[:12]}…); pass the right file with --checkpoint PATH"
            )
        encoder = load_encoder(recorded["preset"], checkpoint=file)
    if not same_encoder(encoder.describe(), recorded):
        raise IbdcError(f"the encoder recorded in {path} cannot be rebuilt ({recorded})")
    return encoder


def _check_compatible(meta: dict, store: Store, modalities: list[str], what) -> None:
    if not same_encoder(meta["encoder"], store.encoder):
        raise IbdcError(
            f"{what} and store {store.path} come from different encoders "
            f"({meta['encoder'].get('preset')}/{str(meta['encoder'].get('weights'))[:12]} vs "
            f"{store.encoder.get('preset')}/{str(store.encoder.get('weights'))[:12]}, dims "
            f"{meta['encoder'].get('out_dim')} vs {store.encoder.get('out_dim')})"
        )
    missing = [m for m in modalities if m not in store.modalities]
    if missing:
        raise IbdcError(f"store {store.path} has no {missing[0]!r} embeddings (it has: {', '.join(store.modalities)})")


def _check_set_shapes(path, features: dict[str, torch.Tensor], labels: torch.Tensor, classes: int, store) -> None:
    """The set's embeddings are `[M, D]` with the store's D, its labels `[M]` class ids."""
    for m, x in features.items():
        if x.ndim != 2 or x.shape[1] != store.modalities[m]:
            raise IbdcError(
                f"{path}: its {m!r} rows have shape {tuple(x.shape)}, but store {store.path} has dimension "
                f"{store.modalities[m]}"
            )
        if x.shape[0] != labels.shape[0]:
            raise IbdcError(f"{path}: {x.shape[0]} {m!r} rows but {labels.shape[0]} labels")
    if labels.ndim != 1 or labels.is_floating_point() or bool(((labels < 0) | (labels >= classes)).any()):
        raise IbdcError(f"{path}: its labels must be class ids 0..{classes - 1} (one per row)")


def _store_features(store: Store, modalities: list[str], class_names: list[str], space_maps: dict[str, SpaceMap]):
    """A store's embeddings, mapped into the synthetic set's space (ibdc_cli/space.py), with its labels mapped to the
    synthetic set's class ids by class name."""
    data = store.load(modalities)
    labels = set_class_ids(store, class_names, data["labels"])
    features = {m: map_embeddings(data[m], space_maps.get(m)) for m in modalities}
    return features, labels
