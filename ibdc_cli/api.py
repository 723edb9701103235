"""Recipe: the Python API on tensors (`import ibdc_cli as ibdc`; docs/api.md).

Embeddings made anywhere (any encoder, any pipeline) are condensed and evaluated by the same recipes
the CLI runs: `condense_embeddings` writes the tensors to a temporary embedding store (`write_store`),
runs `run_condense` on it (the call behind `ibdc condense`) and returns the synthetic set in memory;
`evaluate_set` runs `run_evaluate` (the call behind `ibdc evaluate`) on a set and a test store, or on
test tensors written to a temporary store. Bad input raises `IbdcError` naming what is wrong, before
any work. A set condensed here is bit-identical to `ibdc condense` on a store that `write_store` made
from the same tensors, with the same options (tests/test_api.py checks it).

    import ibdc_cli as ibdc

    synthetic = ibdc.condense_embeddings({"audio": a, "image": v}, labels, dpc=10)    # a, v: [N, D]
    synthetic.tensors["audio"].shape, synthetic.labels.shape                          # [C*10, D], [C*10]
    report = ibdc.evaluate_set(synthetic, ({"audio": a_test, "image": v_test}, test_labels))
    report["mean"], report["std"]                                                     # top-1 accuracy, %
"""

from __future__ import annotations

import dataclasses
import operator
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ibdc_cli.condense import CondenseResult, run_condense
from ibdc_cli.config import CondenseConfig, EvaluateConfig
from ibdc_cli.errors import IbdcError
from ibdc_cli.evaluation import ConvnetSchedule, HeadSchedule, RetrievalSchedule, run_evaluate
from ibdc_cli.runtime import distributed_env
from ibdc_cli.store import Store, open_store, save_synthetic_set, write_store
from ibdc_cli.synthetic_set import SyntheticSet
from ibdc_cli.version import __version__

__all__ = [
    "condense_embeddings",
    "evaluate_set",
    "write_store",
    "open_store",
    "Store",
    "SyntheticSet",
    "CondenseConfig",
    "CondenseResult",
    "EvaluateConfig",
    "IbdcError",
    "run_condense",
    "run_evaluate",
    "__version__",
]

IN_MEMORY = Path("<in memory>")
"""The `path` of a set `condense_embeddings` returns without `out`: it has no file (the temporary one is gone)."""

# Tensor names a store shard or a synthetic set uses itself; a modality cannot be called so.
RESERVED_NAMES = ("labels", "row")

Labels = torch.Tensor | Sequence[int] | Sequence[str]


# ------------------------------------------------------------------------------------------- condense


def condense_embeddings(
    embeddings: Mapping[str, torch.Tensor],
    labels: Labels | None,
    config: CondenseConfig | None = None,
    *,
    class_names: Sequence[str] | None = None,
    encoder: dict[str, Any] | None = None,
    out: str | Path | None = None,
    **options: Any,
) -> SyntheticSet:
    """Condense paired embeddings into a synthetic set, as `ibdc condense` condenses a store.

    `embeddings`: `{modality: [N, D_m]}` floating-point tensors (any float dtype; read as float32, on the
    CPU), row i of every modality one example. `labels`: `[N]` class ids (an int tensor or a sequence of
    ints) into `class_names` (default `"0"`, `"1"`, ... up to the largest id); or `[N]` strings, the class
    names themselves: then `class_names` defaults to the sorted distinct strings (pass it to choose the
    order); or None for pairs without labels (condensed as one pseudo-class, or `clusters=K`).

    The options are those of `ibdc condense` (`CondenseConfig` fields: `dpc`, `method`, `iterations`,
    `seed`, `device`, ...). Without `config` they start from `CondenseConfig`'s defaults with
    `modalities` = every key of `embeddings` (`preset="paper"` starts from a preset, as
    `CondenseConfig.from_preset`); with `config`, they replace its fields (`dataclasses.replace`). The
    config's `store` and `out` are ignored: the tensors are written to a temporary store, which is
    deleted on return. Only the embedding space can be condensed here (`space="embedding"`): model inputs
    need a store of media made by `ibdc embed`. It runs in one process (for torchrun or accelerate launch,
    write a store with `write_store` and run `ibdc condense` on it).

    `encoder`: the record of what made the vectors, kept in the store and the set (default
    `{"preset": "external", "weights": "external"}`); sets and test stores are evaluated together only
    when their records agree, so give the `Store.encoder` of a store the vectors came from, if any.
    `out`: also keep the set's file at this path (the `overwrite` option replaces an existing one).

    Returns the `SyntheticSet` with its tensors in memory: `tensors[m]` `[M, D_m]` (M = rows over all
    classes, `dpc` per class), `labels` `[M]`, the space maps (`center.<m>` `[D_m]`, `whiten.<m>`
    `[D_m, D_m]`), and its metadata (settings, loss history, ...). Its `path` is `out`, or
    `ibdc_cli.api.IN_MEMORY` without one.

    Raises IbdcError before any work for embeddings of different row counts, a non-finite value, a
    label out of range, a requested modality the embeddings lack, an unknown option.

    Example::

        import torch, ibdc_cli as ibdc

        audio, image = torch.randn(60, 32), torch.randn(60, 32)        # 60 rows, 3 classes
        labels = torch.arange(60) % 3
        synthetic = ibdc.condense_embeddings({"audio": audio, "image": image}, labels, dpc=2, iterations=20)
        synthetic.tensors["audio"].shape, synthetic.labels.tolist()    # (6, 32), [0, 0, 1, 1, 2, 2]
    """
    where = "condense_embeddings"
    embeddings = _checked_embeddings(embeddings, where)
    rows = next(iter(embeddings.values())).shape[0]
    ids, names = _checked_labels(labels, rows, class_names, where)
    config = _condense_config(config, embeddings, options, where, keeps_file=out is not None)
    if encoder is not None and not (isinstance(encoder, dict) and {"preset", "weights"} <= set(encoder)):
        raise IbdcError(f"{where}: encoder must be a dict with 'preset' and 'weights' (a Store.encoder): {encoder!r}")
    with tempfile.TemporaryDirectory(prefix="ibdc-condense-") as tmp:
        store = write_store(Path(tmp) / "store", embeddings, ids, class_names=names, encoder=encoder)
        target = Path(out) if out is not None else Path(tmp) / "synthetic.safetensors"
        run_condense(dataclasses.replace(config, store=str(store.path), out=str(target)))
        loaded = SyntheticSet.load(target)
        # safetensors maps the file: copy the tensors, so that nothing of `tmp` stays mapped once it is deleted.
        tensors = {name: tensor.clone() for name, tensor in loaded.tensors.items()}
        metadata = loaded.metadata
        del loaded
    return SyntheticSet(Path(out) if out is not None else IN_MEMORY, tensors, metadata)


def _condense_config(
    config: CondenseConfig | None,
    embeddings: dict[str, torch.Tensor],
    options: dict[str, Any],
    where: str,
    *,
    keeps_file: bool,
) -> CondenseConfig:
    """The config to run: `config` (or the defaults, or a preset) with `options` on top, checked."""
    if "store" in options:
        raise IbdcError(
            f"{where}: the embeddings are the store; to condense a store on disk call "
            "run_condense(CondenseConfig(store=PATH, ...))"
        )
    _check_option_names(options, CondenseConfig, where)
    if isinstance(options.get("modalities"), str):
        options["modalities"] = [m.strip() for m in options["modalities"].split(",") if m.strip()]
    if config is None:
        options.setdefault("modalities", list(embeddings))
        config = CondenseConfig.from_preset(options.pop("preset", None), **options)
    elif not isinstance(config, CondenseConfig):
        raise IbdcError(f"{where}: config must be a CondenseConfig, not {type(config).__name__}")
    else:
        if options.get("preset", config.preset) != config.preset:
            raise IbdcError(
                f"{where}: preset={options['preset']!r} would not apply the preset's settings to the given config; "
                f"start from CondenseConfig.from_preset({options['preset']!r}, ...) instead"
            )
        config = dataclasses.replace(config, **options)
    if not config.modalities:
        raise IbdcError(f"{where}: no modalities to condense")
    missing = [m for m in config.modalities if m not in embeddings]
    if missing:
        raise IbdcError(
            f"{where}: unknown modality {missing[0]!r}: the embeddings have {', '.join(map(repr, embeddings))}"
        )
    if distributed_env():
        raise IbdcError(
            f"{where} runs in one process: under torchrun or accelerate launch, write the tensors with write_store "
            "and run `ibdc condense` (or run_condense) on that store"
        )
    if config.log_with and config.log_dir is None and not keeps_file:
        raise IbdcError(f"{where}: log_with needs a log_dir (the temporary folder beside the set is deleted)")
    if config.space != "embedding":
        raise IbdcError(
            f"{where} condenses embeddings (space='embedding'), not space={config.space!r}: model inputs need a "
            "store of media made by `ibdc embed` (call run_condense on it); with preset='paper' pass "
            "space='embedding' to use its other settings on vectors"
        )
    config.check()
    return config


# ------------------------------------------------------------------------------------------- evaluate


def evaluate_set(
    synthetic: SyntheticSet | str | Path | Sequence[SyntheticSet | str | Path],
    test: str | Path | Store | tuple[Mapping[str, torch.Tensor], Labels | None],
    config: EvaluateConfig | None = None,
    *,
    train: str | Path | Store | tuple[Mapping[str, torch.Tensor], Labels | None] | None = None,
    modalities: list[str] | None = None,
    schedule: HeadSchedule | ConvnetSchedule | RetrievalSchedule | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train heads on a synthetic set and score them on real test rows, as `ibdc evaluate` does.

    `synthetic`: a `SyntheticSet` (e.g. from `condense_embeddings`), the path of a set's file, or a list of
    them (sets of one configuration, e.g. condensation seeds: mean ± std over sets × head seeds).
    `test` (and `train`, for the whole-data result and the ratio): an embedding store's path, an opened
    `Store`, or a pair `(embeddings, labels)`: `{modality: [N, D_m]}` tensors with `[N]` class ids into the
    (first) set's `class_names`, or `[N]` class-name strings, or None for pairs without labels (the
    `retrieval` protocol). Such tensors are taken to be in the same embedding space as the set's training
    embeddings (their temporary store records the set's encoder) and are mapped by the set's space maps,
    as a store's are.

    The options are those of `ibdc evaluate` (`EvaluateConfig` fields: `protocol`, `seeds`, `epochs`,
    `device`, ...), with its defaults, or replacing the fields of `config`; `modalities` (default: the
    set's) and `schedule` are `run_evaluate`'s.

    Returns `run_evaluate`'s report, a dict: `"protocol"`, `"metric"`, `"sets"`, `"seeds"`, `"method"`,
    `"dpc"`, `"modalities"`, `"test_rows"`, `"schedule"`, `"mean"`, `"std"` (in %), `"runs"` (one
    `{"set", "seed", "value"}` per set × seed), `"per_set"`, `"set_std"`, with `train`
    `"whole_mean"`, `"whole_std"`, `"whole_runs"` and `"ratio"`, and `"config"`; `retrieval` reports one
    such block per recall under `"metrics"`. Sets held in memory and test tensors are named in it by the
    set's `path` (`"<in memory>"`) and `"<test tensors>"` / `"<train tensors>"`.

    Example::

        report = ibdc.evaluate_set(synthetic, ({"audio": audio_test, "image": image_test}, test_labels),
                                   seeds=2, epochs=50)
        report["mean"], report["std"], [run["value"] for run in report["runs"]]
    """
    where = "evaluate_set"
    for name in ("sets", "test"):
        if name in options:
            raise IbdcError(f"{where}: give the sets as `synthetic` and the test rows as `test`, not {name}=")
    _check_option_names(options, EvaluateConfig, where)
    if config is not None and not isinstance(config, EvaluateConfig):
        raise IbdcError(f"{where}: config must be an EvaluateConfig, not {type(config).__name__}")
    sets = [synthetic] if isinstance(synthetic, (SyntheticSet, str, Path)) else list(synthetic)
    if not sets:
        raise IbdcError(f"{where}: no synthetic set given")
    for item in sets:
        if not isinstance(item, (SyntheticSet, str, Path)):
            raise IbdcError(f"{where}: a synthetic set is a SyntheticSet or a file path, not {type(item).__name__}")
    with tempfile.TemporaryDirectory(prefix="ibdc-evaluate-") as tmp:
        tmp = Path(tmp)
        shown: dict[str, str] = {}  # temporary path -> the name the report gives it
        paths = []
        for i, item in enumerate(sets):
            if isinstance(item, SyntheticSet):
                path = tmp / f"set-{i}.safetensors"
                save_synthetic_set(path, {k: v.detach().cpu() for k, v in item.tensors.items()}, item.metadata)
                name = str(item.path)
                taken = set(shown.values())
                _name_temporary(shown, path, name if name not in taken else f"{name} #{i}")
            else:
                path = Path(item)
            paths.append(str(path))
        first = sets[0] if isinstance(sets[0], SyntheticSet) else SyntheticSet.load(paths[0])
        test_path = _store_of(test, tmp / "test", first, "test", shown, where)
        train_path = None if train is None else _store_of(train, tmp / "train", first, "train", shown, where)
        given = {"sets": paths, "test": test_path, "train": train_path, **options}
        if train is None and config is not None:
            given.pop("train")
        config = EvaluateConfig(**given) if config is None else dataclasses.replace(config, **given)
        report = run_evaluate(config, schedule=schedule, modalities=modalities)
    return _renamed(report, shown)


def _store_of(test: Any, path: Path, first: SyntheticSet, split: str, shown: dict[str, str], where: str) -> str:
    """The path of the store `test` names, is, or (a pair of tensors) is written to at `path`."""
    if isinstance(test, (str, Path)):
        return str(test)
    if isinstance(test, Store):
        return str(test.path)
    if isinstance(test, (tuple, list)) and len(test) == 2:
        embeddings = _checked_embeddings(test[0], f"{where}: {split}")
        rows = next(iter(embeddings.values())).shape[0]
        names = first.class_names if test[1] is not None else None  # ids into the set's classes
        ids, names = _checked_labels(test[1], rows, names, f"{where}: {split}")
        write_store(path, embeddings, ids, class_names=names, encoder=first.encoder)
        _name_temporary(shown, path, f"<{split} tensors>")
        return str(path)
    raise IbdcError(
        f"{where}: {split} must be a store path, an opened Store or an (embeddings, labels) pair, "
        f"not {type(test).__name__}"
    )


def _name_temporary(shown: dict[str, str], path: Path, name: str) -> None:
    shown[str(path)] = shown[str(path.resolve())] = name


def _renamed(value: Any, shown: dict[str, str]) -> Any:
    """`value` (a report) with every string that is a temporary path replaced by its shown name."""
    if isinstance(value, dict):
        return {k: _renamed(v, shown) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, shown) for v in value]
    if isinstance(value, str):
        return shown.get(value, value)
    return value


# ------------------------------------------------------------------------------------------- checks


def _check_option_names(options: dict[str, Any], cls: type, where: str) -> None:
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [name for name in options if name not in known]
    if unknown:
        raise IbdcError(
            f"{where}: unknown option {unknown[0]!r}; the options are {cls.__name__} fields: {', '.join(known)}"
        )


def _checked_embeddings(embeddings: Any, where: str) -> dict[str, torch.Tensor]:
    """`{modality: [N, D] float tensor}` with the same N everywhere, every value finite; else IbdcError."""
    if not isinstance(embeddings, Mapping) or not embeddings:
        raise IbdcError(f"{where}: embeddings must be a non-empty dict {{modality: [N, D] tensor}}")
    checked = {}
    for name, x in embeddings.items():
        if not isinstance(name, str) or not name or name in RESERVED_NAMES or "," in name or "." in name:
            raise IbdcError(
                f"{where}: {name!r} cannot name a modality (a non-empty string without ',' or '.', "
                f"not {' or '.join(map(repr, RESERVED_NAMES))})"
            )
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(x)
            except (TypeError, ValueError, RuntimeError):
                raise IbdcError(f"{where}: embeddings[{name!r}] is a {type(x).__name__}, not a tensor") from None
        if x.ndim != 2 or x.shape[1] < 1:
            raise IbdcError(
                f"{where}: embeddings[{name!r}] has shape {tuple(x.shape)}; each modality is one [N, D] matrix"
            )
        if not x.is_floating_point():
            raise IbdcError(f"{where}: embeddings[{name!r}] holds {x.dtype}; embeddings are floating point")
        checked[name] = x.detach()
    counts = {name: x.shape[0] for name, x in checked.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name} {n}" for name, n in counts.items())
        raise IbdcError(
            f"{where}: the modalities have different row counts ({listed}); row i of every modality is one example"
        )
    if not next(iter(counts.values())):
        raise IbdcError(f"{where}: the embeddings have no rows")
    for name, x in checked.items():
        finite = torch.isfinite(x).all(dim=1)
        if not bool(finite.all()):
            row = int((~finite).nonzero()[0, 0])
            raise IbdcError(f"{where}: embeddings[{name!r}] holds NaN or Inf (first at row {row})")
    return checked


def _checked_labels(
    labels: Any, rows: int, class_names: Sequence[str] | None, where: str
) -> tuple[torch.Tensor | None, list[str]]:
    """`labels` as `[rows]` int64 ids into the returned class names (None, []: no labels); else IbdcError."""
    if class_names is not None:
        class_names = list(class_names)
        if not all(isinstance(n, str) for n in class_names) or len(set(class_names)) != len(class_names):
            raise IbdcError(f"{where}: class_names must be distinct strings, not {class_names!r}")
    if labels is None:
        return None, []
    if isinstance(labels, torch.Tensor):
        if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise IbdcError(
                f"{where}: labels must be a 1-D tensor of integer class ids, not {labels.dtype} of shape "
                f"{tuple(labels.shape)}"
            )
        values: list[Any] = labels.tolist()
    else:
        try:
            values = list(labels)
        except TypeError:
            raise IbdcError(f"{where}: labels must be a 1-D tensor or sequence, not {type(labels).__name__}") from None
    if len(values) != rows:
        raise IbdcError(f"{where}: {len(values)} labels for {rows} rows; give one label per row")
    strings = [isinstance(v, str) for v in values]
    if any(strings):
        if not all(strings):
            raise IbdcError(f"{where}: labels mix strings and other values (row {strings.index(False)})")
        names = class_names if class_names is not None else sorted(set(values))
        index = {name: i for i, name in enumerate(names)}
        for row, value in enumerate(values):
            if value not in index:
                raise IbdcError(f"{where}: label {value!r} at row {row} is not one of the class_names {names!r}")
        return torch.tensor([index[v] for v in values], dtype=torch.int64), list(names)
    ids = []
    for row, value in enumerate(values):
        try:
            if isinstance(value, bool):
                raise TypeError
            ids.append(operator.index(value))
        except TypeError:
            raise IbdcError(
                f"{where}: label {value!r} at row {row} is not an integer class id (labels are ints or strings)"
            ) from None
    classes = len(class_names) if class_names is not None else max(ids) + 1
    for row, value in enumerate(ids):
        if not 0 <= value < classes:
            known = f"class_names has {classes}" if class_names is not None else "class ids start at 0"
            raise IbdcError(
                f"{where}: label {value} at row {row} is out of range: class ids are 0..{classes - 1} ({known})"
            )
    names = class_names if class_names is not None else [str(c) for c in range(classes)]
    return torch.tensor(ids, dtype=torch.int64), list(names)
