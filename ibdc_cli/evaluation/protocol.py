"""The one interface of the evaluation protocols, and what they share: the runner, the set loader, summaries.

A protocol (`heads.HeadsProtocol` for linear/mlp, `convnet.ConvnetProtocol`, `retrieval.RetrievalProtocol`)
says how a model is trained on a synthetic set and scored on a real store, in four steps:

    synthetic_features(synthetic)               -> (features, labels)   what the model trains on
    store_features(store, synthetic, split)     -> (features, labels)   a real store's rows, in the set's space
    train(features, labels, seed)               -> model
    score(model, features, labels)              -> {metric: value}

`features` is `{modality: [N, ...]}` (row i of every modality is one example) and `labels` `[N]` class
ids, or None for paired data without labels. `run` does the rest, the same for every protocol: the
checks (`check`, by default `SyntheticSet.check_against`), every set x seed, the whole-data models with
`--train` (trained once: the sets share their space maps), and mean ± std over sets x seeds.

Example::

    sets = load_sets(["dm-0.safetensors", "dm-1.safetensors"])
    linear = HeadsProtocol("linear", HeadSchedule(), sets[0], sets[0].modalities)
    result = run(linear, sets, open_store("stores/test"), seeds=3)
    result["mean"], result["std"], result["set_std"], len(result["runs"])   # runs: 2 sets x 3 seeds = 6
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ibdc_cli.errors import IbdcError
from ibdc_cli.runtime import log
from ibdc_cli.store import Store, _flatten, open_store
from ibdc_cli.synthetic_set import SyntheticSet

Features = dict[str, torch.Tensor]  # {modality: [N, ...]}, rows paired across modalities

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
    "peak_memory_mib_per_process",
    "seconds_per_class",
    "created",
    "command",
    "ibdc_version",
    "source_store.path",
    "settings.checkpoint",
    "settings.manifest",
    "settings.checkpoint_every",
    # the recorded config repeats the settings, plus the store's path
    "config.seed",
    "config.store",
    "config.checkpoint",
    "config.manifest",
    "config.checkpoint_every",
)


class Protocol:
    """How one protocol trains on a synthetic set and scores on a real store (see the module docstring).

    A protocol is made for the sets of one evaluation (their first set, the chosen `modalities` and the
    fixed `schedule`); `run` calls its steps. `metric` names what `score` returns for one-metric protocols,
    `models` and `rows` word the whole-data log line.
    """

    name: str
    metric: str
    models = "heads"
    rows = "rows"
    modalities: list[str]
    schedule: Any

    def check(self, synthetic: SyntheticSet, store: Store) -> None:
        """Raise IbdcError unless `synthetic` can be scored on `store`."""
        synthetic.check_against(store, self.modalities)

    def synthetic_features(self, synthetic: SyntheticSet) -> tuple[Features, torch.Tensor | None]:
        """The set's rows as the model trains on them, and their labels `[M]` (None: pairs only)."""
        raise NotImplementedError

    def store_features(self, store: Store, synthetic: SyntheticSet, split: str) -> tuple[Features, torch.Tensor | None]:
        """A real store's rows as the model sees them, in `synthetic`'s space; `split` is "test" or "train"."""
        raise NotImplementedError

    def train(self, features: Features, labels: torch.Tensor | None, seed: int) -> Any:
        """A model trained with the fixed schedule on `features`; `seed` sets its initialisation and batch order."""
        raise NotImplementedError

    def score(self, model: Any, features: Features, labels: torch.Tensor | None) -> dict[str, float]:
        """`{metric: value in %}` of `model` on the (test) rows `features`."""
        raise NotImplementedError

    def described(self) -> dict[str, Any]:
        """Fields of the result that only this protocol has (placed before its schedule)."""
        return {}

    def result(
        self,
        sets: list[SyntheticSet],
        seeds: int,
        test_rows: int,
        metrics: dict[str, dict[str, Any]],
        train_rows: int | None,
    ) -> dict[str, Any]:
        """The JSON result of a one-metric protocol: what was evaluated, then `metrics[self.metric]`."""
        first = sets[0]
        return {
            "protocol": self.name,
            "metric": self.metric,
            "sets": [str(s.path) for s in sets],
            "seeds": seeds,
            "method": first.method,
            "dpc": first.dpc,
            "modalities": self.modalities,
            "test_rows": test_rows,
            **self.described(),
            "schedule": vars(self.schedule),
            **metrics[self.metric],
        }


def run(
    protocol: Protocol,
    sets: list[SyntheticSet],
    test: Store,
    *,
    seeds: int,
    train_store: str | Path | None = None,
) -> dict[str, Any]:
    """Train `protocol`'s model on each of `sets` with seeds 0..`seeds`-1 and score it on `test`.

    Every metric is summarised over sets x seeds (`summarize_sets`); with `train_store` the same models are
    trained on the whole store, once (the sets share their space maps, `load_sets` checks), and each
    metric gets `whole_data_fields`. Returns `protocol.result(...)`.
    """
    for synthetic in sets:
        protocol.check(synthetic, test)
    runs: dict[str, list[dict[str, Any]]] = {}
    for synthetic in sets:
        features, labels = protocol.synthetic_features(synthetic)
        test_features, test_labels = protocol.store_features(test, synthetic, "test")
        for name, values in _train_and_score(protocol, features, labels, test_features, test_labels, seeds).items():
            runs.setdefault(name, []).extend(
                {"set": str(synthetic.path), "seed": seed, "value": value} for seed, value in enumerate(values)
            )
    metrics = {name: summarize_sets(values) for name, values in runs.items()}
    train_rows = None
    if train_store is not None:
        first = sets[0]
        train = open_store(train_store)
        first.check_against(train, protocol.modalities, what=train_store)
        train_features, train_labels = protocol.store_features(train, first, "train")
        test_features, test_labels = protocol.store_features(test, first, "test")
        train_rows = _rows(train_features)
        log(f"training the same {protocol.models} on the whole store {train.path} ({train_rows} {protocol.rows})")
        whole = _train_and_score(protocol, train_features, train_labels, test_features, test_labels, seeds)
        for name, values in whole.items():
            metrics[name].update(whole_data_fields(metrics[name]["mean"], values))
    return protocol.result(sets, seeds, _rows(test_features), metrics, train_rows)


def _train_and_score(protocol, features, labels, test_features, test_labels, seeds: int) -> dict[str, list[float]]:
    """`{metric: [value of seed 0, 1, ...]}` of models trained on `features` and scored on the test rows."""
    scores: dict[str, list[float]] = {}
    for seed in range(seeds):
        model = protocol.train(features, labels, seed)
        for name, value in protocol.score(model, test_features, test_labels).items():
            scores.setdefault(name, []).append(value)
    return scores


def _rows(features: Features) -> int:
    return int(next(iter(features.values())).shape[0])


# ------------------------------------------------------------------------------------ the sets


def load_sets(synthetic: str | Path | Sequence[str | Path]) -> list[SyntheticSet]:
    """Each set to evaluate together, checked to be one configuration.

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
    sets = [SyntheticSet.load(path) for path in paths]
    first = sets[0]
    reference = _configuration(first.metadata)
    seeds = {first.metadata.get("seed"): first.path}
    for synthetic in sets[1:]:
        path, tensors = synthetic.path, synthetic.tensors
        config = _configuration(synthetic.metadata)
        differing = sorted(
            (k for k in reference.keys() | config.keys() if reference.get(k, "(none)") != config.get(k, "(none)")),
            key=lambda k: (not k.startswith("settings."), k),  # name the user's option first
        )
        if differing:
            key = differing[0]
            mine, theirs = _short(config.get(key, "(none)")), _short(reference.get(key, "(none)"))
            what = f"--{key.removeprefix('settings.').replace('_', '-')}" if key.startswith("settings.") else key
            raise IbdcError(
                f"{path} was made with {what} {mine}, {first.path} with {theirs}; sets evaluated together may "
                "differ only in --seed"
            )
        maps = sorted(n for n in first.tensors.keys() | tensors.keys() if n.startswith(("center.", "whiten.")))
        for name in maps:
            this, reference_map = tensors.get(name), first.tensors.get(name)
            same_shape = this is not None and reference_map is not None and this.shape == reference_map.shape
            if not same_shape or not torch.allclose(this, reference_map, rtol=1e-4, atol=1e-6):
                raise IbdcError(
                    f"{path}: its space map {name} differs from that of {first.path} (fitted on other data?)"
                )
        seed = synthetic.metadata.get("seed")
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


# ------------------------------------------------------------------------------------ summaries


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
    for entry in runs:
        by_set.setdefault(entry["set"], []).append(entry["value"])
    per_set = []
    for path, values in by_set.items():
        summary = summarize_runs(values)
        per_set.append({"set": path, "mean": summary["mean"], "std": summary["std"]})
    means = [s["mean"] for s in per_set]
    return {
        **summarize_runs([entry["value"] for entry in runs]),
        "runs": runs,
        "per_set": per_set,
        "set_std": statistics.pstdev(means) if len(means) > 1 else 0.0,
    }


def whole_data_fields(synthetic_mean: float, whole_runs: list[float]) -> dict[str, Any]:
    """The whole-data result of a metric (`--train`) and the ratio synthetic / whole."""
    whole = summarize_runs(whole_runs)
    return {
        "whole_mean": whole["mean"],
        "whole_std": whole["std"],
        "whole_runs": whole_runs,
        "ratio": synthetic_mean / whole["mean"] if whole["mean"] else None,
    }


def spread_words(sets: int, seeds: int) -> str:
    """What a mean ± std is taken over, for people: "3 sets × 3 head seeds", or head seeds only."""
    heads = f"{seeds} head seed{'s' if seeds != 1 else ''}"
    return f"{sets} sets × {heads}" if sets > 1 else f"1 set × {heads}: spread over head seeds only"


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
