"""Recipe: evaluate synthetic sets (or selections) on a real test store (`ibdc evaluate`).

Protocols (SPEC §4), each a `protocol.Protocol` run by the one runner `protocol.run`:
- `linear` (default) and `mlp` (`heads`): one head per modality on frozen unit-norm embeddings, trained on
  the synthetic rows only; late fusion = mean of the heads' softmaxes; top-1 accuracy on the test store.
  Input-space sets (`--space input`) are first embedded by the encoder recorded in the file.
- `convnet` (`convnet`): ConvNets trained from scratch on input-space synthetic data, tested on the real
  test manifest.
- `retrieval` (`retrieval`): paired data without labels: projection heads trained with symmetric InfoNCE
  on the synthetic pairs, Recall@1/5/10 both ways on the test store's pairs.

Every protocol uses a fixed schedule (epochs, learning rate, weight decay are settings, never tuned on
the test split); the test split is read only to score the trained models. `--seeds N` repeats training
with N seeds (initialisation and batch order) and reports mean ± std. Several sets of one configuration
(condensation seeds, `load_sets`) give mean ± std over sets × head seeds, with each set's mean, so the
spread between condensation seeds is seen apart from the head seeds'. `--train STORE` trains the same
models on the whole real training store (once: it does not depend on the sets), for the ratio
synthetic / whole.

Example::

    result = evaluate(["dm-0.safetensors", "dm-1.safetensors"], "stores/test", seeds=3)
    result["mean"], result["std"], result["set_std"], len(result["runs"])   # runs: 2 sets x 3 seeds = 6
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ibdc_cli.config import EvaluateConfig
from ibdc_cli.config import Protocol as Protocol_
from ibdc_cli.errors import IbdcError
from ibdc_cli.evaluation.convnet import ConvnetProtocol, ConvnetSchedule
from ibdc_cli.evaluation.heads import HeadSchedule, HeadsProtocol
from ibdc_cli.evaluation.protocol import Protocol, format_accuracy, load_sets, run
from ibdc_cli.evaluation.retrieval import RetrievalProtocol, RetrievalSchedule, format_retrieval
from ibdc_cli.runtime import check_precision, single_device
from ibdc_cli.store import open_store

__all__ = [
    "PROTOCOLS",
    "ConvnetSchedule",
    "HeadSchedule",
    "RetrievalSchedule",
    "evaluate",
    "run_evaluate",
    "format_accuracy",
    "format_retrieval",
    "load_sets",
]

PROTOCOLS = typing.get_args(Protocol_)  # the choices live with the option in ibdc_cli/config.py


def evaluate(
    synthetic: str | Path | Sequence[str | Path],
    test_store: str | Path,
    *,
    schedule: HeadSchedule | ConvnetSchedule | RetrievalSchedule | None = None,
    train_store: str | Path | None = None,
    modalities: list[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Keyword form of `run_evaluate`: `options` are `EvaluateConfig` fields (protocol, seeds, checkpoint,
    test_manifest, train_manifest, device, precision), with its defaults."""
    sets = [synthetic] if isinstance(synthetic, (str, Path)) else list(synthetic)
    config = EvaluateConfig(
        sets=[str(s) for s in sets],
        test=str(test_store),
        train=None if train_store is None else str(train_store),
        **options,
    )
    return run_evaluate(config, schedule=schedule, modalities=modalities)


def run_evaluate(
    config: EvaluateConfig,
    *,
    schedule: HeadSchedule | ConvnetSchedule | RetrievalSchedule | None = None,
    modalities: list[str] | None = None,
) -> dict[str, Any]:
    """Scores of models trained on `config.sets` and tested on `config.test`: mean ± std over sets x seeds.

    The heads (or ConvNets, and the encoder of input-space sets) run on `config.device` ("auto": CUDA when
    available), their forward passes under `config.precision`'s autocast (fp32, bf16, fp16); `schedule` is
    the protocol's (another kind, or None, is its default, with `config.epochs` when given); `modalities`
    (default: the set's) are the ones scored.

    Several sets must be of one configuration (condensation seeds; see `load_sets`).
    Returns `{"protocol", "metric", "sets", "seeds", "method", "dpc", "modalities", "test_rows", "schedule",
    "mean", "std", "runs": [{"set", "seed", "value"}], "per_set", "set_std"}` (`summarize_sets`), and with
    `config.train` `"whole_mean", "whole_std", "whole_runs"` (one per seed) and `"ratio"`; convnet adds
    `"test_manifest"`. Retrieval returns one such block per recall in `"metrics"` (`RetrievalProtocol.result`).
    `"config"` is the resolved config (`EvaluateConfig.recorded`).
    """
    protocol, seeds, precision = config.protocol, config.seeds, config.precision
    if protocol not in PROTOCOLS:
        raise IbdcError(f"--protocol {protocol!r} is not one of: {', '.join(PROTOCOLS)}")
    if seeds < 1:
        raise IbdcError("--seeds must be at least 1")
    check_precision(precision)
    torch_device = single_device(config.device)
    if config.test is None:
        raise IbdcError("evaluate needs a test store (--test)")
    sets = load_sets(config.sets)
    first = sets[0]
    modalities = modalities or first.modalities
    schedule_type = {"convnet": ConvnetSchedule, "retrieval": RetrievalSchedule}.get(protocol, HeadSchedule)
    if not isinstance(schedule, schedule_type):
        schedule = schedule_type() if config.epochs is None else schedule_type(epochs=config.epochs)
    member: Protocol
    if protocol == "retrieval":  # paired data without labels; runs on the CPU in float32
        member = RetrievalProtocol(schedule, first, modalities)
    elif protocol == "convnet":
        manifests = {"test": config.test_manifest, "train": config.train_manifest}
        member = ConvnetProtocol(
            schedule, first, modalities, manifests=manifests, device=torch_device, precision=precision
        )
    else:
        member = HeadsProtocol(
            protocol,
            schedule,
            first,
            modalities,
            checkpoint=config.checkpoint,
            device=torch_device,
            precision=precision,
        )
    result = run(member, sets, open_store(config.test), seeds=seeds, train_store=config.train)
    return {**result, "config": config.recorded()}
