"""The `ibdc` command line: one thin function per command (options -> library call -> output).

Exit codes: 0 success, 2 usage or input error (one line naming the file/row/option), 1 a bug or runtime
failure, 130 interrupted (the job can be resumed with --resume).
"""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from ibdc_cli import __version__
from ibdc_cli.errors import IbdcError
from ibdc_cli.runtime import set_quiet, stderr

app = typer.Typer(
    name="ibdc",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help=(
        "Condense multimodal datasets into a few synthetic examples per class (ImageBindDC).\n\n"
        "Workflow: [bold]ibdc embed[/] a manifest into a store, then condense, evaluate, inspect.\n\n"
        "Example: ibdc datasets av-digits data/ && "
        "ibdc embed data/train.csv --modalities image,audio --out stores/train"
    ),
)
datasets_app = typer.Typer(no_args_is_help=True, help="Build the built-in benchmark datasets (real media files).")
app.add_typer(datasets_app, name="datasets")

# Accepted anywhere on the command line (moved in front of the command by `main`).
GLOBAL_FLAGS = ("--quiet", "-q", "--debug")
_debug = False


def _print_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No logs or progress bars on stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the ibdc version and exit.")
    ] = False,
) -> None:
    global _debug
    _debug = _debug or debug
    set_quiet(quiet)


# Options shared by several commands, so that names and help stay the same everywhere.
ModalitiesOpt = Annotated[
    str,
    typer.Option(
        "--modalities",
        "-m",
        help="Comma-separated modalities, e.g. image,audio (of image, audio, text, depth, thermal; 'vision' = image).",
    ),
]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="Encoder preset: imagebind_tiny (small, random-init) or "
        "imagebind_huge (needs --checkpoint or --random-init).",
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="Encoder weights (.pth state dict as Meta publishes it, or an "
        "`ibdc bind` .safetensors); default $IBDC_CHECKPOINT.",
    ),
]
RandomInitOpt = Annotated[
    bool,
    typer.Option("--random-init", help="Allow random weights for imagebind_huge (as the paper does for NYU-v2)."),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
PrecisionOpt = Annotated[
    str, typer.Option("--precision", help="fp32, bf16 or fp16: the model's forward passes under autocast.")
]
LogWithOpt = Annotated[
    str | None,
    typer.Option(
        "--log-with",
        help="Experiment tracking (off by default): csv, tensorboard or wandb, comma-separated; loss terms and "
        "step times per step.",
    ),
]
LogDirOpt = Annotated[
    Path | None, typer.Option("--log-dir", help="Where --log-with writes (default: OUT-logs/ beside --out).")
]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="auto, cpu, cuda or cuda:N (under accelerate/torchrun: each process's own device)."),
]


def _print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


@app.command(no_args_is_help=True)
def embed(
    manifest: Annotated[Path, typer.Argument(help="CSV or JSONL manifest: a column per modality, label, optional id.")],
    modalities: ModalitiesOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Store directory to create.")],
    model: ModelOpt = "imagebind_tiny",
    checkpoint: CheckpointOpt = None,
    random_init: RandomInitOpt = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of a random-init encoder's weights.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per forward pass.")] = 32,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes decoding media.")] = 2,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted embed of the same job.")] = False,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip rows whose media cannot be read, and list them.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing store at --out.")] = False,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", help="Rows per resumable chunk.")] = 1024,
    as_json: JsonOpt = False,
) -> None:
    """Embed a manifest with a frozen ImageBind encoder into an embedding store.

    Example: ibdc embed data/train.csv --modalities image,audio --model imagebind_tiny --out stores/train
    """
    from ibdc_cli.data.manifest import parse_modalities
    from ibdc_cli.embed import embed_manifest

    result = embed_manifest(
        manifest,
        parse_modalities(modalities),
        out,
        model=model,
        checkpoint=checkpoint,
        random_init=random_init,
        seed=seed,
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,
        resume=resume,
        skip_bad=skip_bad,
        overwrite=overwrite,
        chunk_rows=chunk_rows,
    )
    from ibdc_cli.runtime import distributed_env

    if distributed_env() and int(os.environ.get("RANK", "0")) != 0:
        return
    summary = {
        "store": str(result.store),
        "rows": result.rows,
        "skipped": result.skipped,
        "seconds": round(result.seconds, 2),
    }
    if as_json:
        _print_json(summary)
        return
    for item in result.skipped:
        row = item["row"]
        stderr.print(f"skipped row {row}: {item['reason'].removeprefix(f'row {row}: ')}", markup=False)
    print(f"wrote {result.store} ({result.rows} rows, {len(result.skipped)} skipped, {result.seconds:.1f} s)")


@app.command()
def condense(
    ctx: typer.Context,
    store: Annotated[
        Path | None,
        typer.Argument(
            help="Embedding store (from `ibdc embed`); default $IBDC_STORE, else the built-in demo store "
            "(av-digits, built and embedded on first use: a few minutes, needs espeak-ng)."
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="default (ibdc's measured defaults, also when omitted) or paper (the paper's configuration: input "
            "space, its cross/joint terms, Eq. 3, fresh frequencies, no space map; docs/method.md lists it). "
            "Options given on the command line override the preset.",
        ),
    ] = None,
    modalities: ModalitiesOpt = "image,audio",
    dpc: Annotated[int, typer.Option("--dpc", help="Synthetic data points per class.")] = 20,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Synthetic set to write (.safetensors); default syn.safetensors.")
    ] = None,
    method: Annotated[
        str, typer.Option("--method", help="imagebinddc (default), dm, avdd, or a selection: random, herding, kcenter.")
    ] = "imagebinddc",
    space: Annotated[
        str,
        typer.Option("--space", help="embedding: optimise vectors in the joint space; input: optimise model inputs."),
    ] = "embedding",
    iterations: Annotated[int, typer.Option("--iterations", help="Optimisation steps per class.")] = 150,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Learning rate (default 0.05 in embedding space, 0.01 for inputs).")
    ] = None,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adam or sgd (momentum 0.5).")] = "adam",
    real_batch: Annotated[int, typer.Option("--real-batch", help="Real rows of a class per step (0 = all).")] = 256,
    num_freqs: Annotated[int, typer.Option("--num-freqs", help="Frequencies K of the characteristic function.")] = 4096,
    sigma: Annotated[float, typer.Option("--sigma", help="Frequencies are drawn from N(0, sigma^2 I).")] = 1.0,
    cf_reduction: Annotated[
        str,
        typer.Option(
            "--cf-reduction", help="ncfm: mean sqrt(a*amp+b*phase) (authors' code); eq3: mean(a*amp+b*phase)."
        ),
    ] = "eq3",
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the CF amplitude term.")] = 0.5,
    beta: Annotated[float, typer.Option("--beta", help="Weight of the CF phase term.")] = 0.5,
    lambda_uni: Annotated[float, typer.Option("--lambda-uni", help="Weight of the uni-modal term.")] = 1.0,
    lambda_cross: Annotated[
        float, typer.Option("--lambda-cross", help="Weight of the cross-modal term (avdd: of implicit cross matching).")
    ] = 1.0,
    lambda_joint: Annotated[
        float,
        typer.Option("--lambda-joint", help="Weight of the joint-modal term (avdd: of cross-modal gap matching)."),
    ] = 1.0,
    cross_form: Annotated[
        str,
        typer.Option("--cross-form", help="none (default: the paper form measurably hurt), paper (Eq. 8-11), hybrid."),
    ] = "none",
    joint_form: Annotated[
        str,
        typer.Option(
            "--joint-form",
            help="cf (CFD of the concatenated modalities; default), paper (Eq. 12-13, dot), paper-cos, none.",
        ),
    ] = "cf",
    freq_bank: Annotated[
        int,
        typer.Option(
            "--freq-bank", help="Use B fixed frequency draws with cached real CFs (0 = fresh each step, the paper)."
        ),
    ] = 16,
    init: Annotated[
        str, typer.Option("--init", help="Initialise synthetic rows from real, noise or herding.")
    ] = "real",
    space_map: Annotated[
        str,
        typer.Option(
            "--space-map",
            help="The space matched: whiten (normalize(C^-1/2 (x - mean)), the store's statistics; default), "
            "center (normalize(x - mean)) or none (the raw embeddings).",
        ),
    ] = "whiten",
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the per-class random streams (init, real batches, frequencies).")
    ] = 0,
    allow_fewer: Annotated[
        bool, typer.Option("--allow-fewer", help="A class with fewer real rows than --dpc gets one row per real row.")
    ] = False,
    clusters: Annotated[
        int,
        typer.Option(
            "--clusters",
            help="Stores without labels: 0 = all rows are one class, so --dpc is the number of pairs (default); "
            "K = K pseudo-classes by k-means on the joint embedding, --dpc pairs each.",
        ),
    ] = 0,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", help="Save a resumable state every N iterations of a class (0 = off).")
    ] = 50,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run with the same settings.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")] = False,
    model: Annotated[
        str | None, typer.Option("--model", help="Input space: encoder preset (default: the store's).")
    ] = None,
    checkpoint: CheckpointOpt = None,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="Input space: the training manifest (default: the store's).")
    ] = None,
    guide: Annotated[
        str,
        typer.Option(
            "--guide",
            help="Input space: imagebind (the frozen encoder) or convnet (a random ConvNet redrawn every step).",
        ),
    ] = "imagebind",
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="Input space: fp32, bf16 or fp16 autocast for the encoder's passes (the losses stay float32).",
        ),
    ] = "fp32",
    device: DeviceOpt = "auto",
    log_with: LogWithOpt = None,
    log_dir: LogDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Condense a store into a few synthetic examples per class.

    Example: ibdc condense stores/train --modalities audio,image --dpc 20 --out syn.safetensors

    Example: ibdc condense stores/train --modalities audio,image --dpc 1 --preset paper --iterations 100
    """
    from ibdc_cli.condense import CondenseConfig
    from ibdc_cli.condense import condense as run_condense
    from ibdc_cli.data.manifest import parse_modalities
    from ibdc_cli.demo import default_store
    from ibdc_cli.tracking import parse_log_with

    options = dict(
        dpc=dpc,
        method=method,
        space=space,
        iterations=iterations,
        lr=lr,
        optimizer=optimizer,
        real_batch=real_batch,
        num_freqs=num_freqs,
        sigma=sigma,
        cf_reduction=cf_reduction,
        alpha=alpha,
        beta=beta,
        lambda_uni=lambda_uni,
        lambda_cross=lambda_cross,
        lambda_joint=lambda_joint,
        cross_form=cross_form,
        joint_form=joint_form,
        freq_bank=freq_bank,
        init=init,
        space_map=space_map,
        seed=seed,
        allow_fewer=allow_fewer,
        clusters=clusters,
        checkpoint_every=checkpoint_every,
        guide=guide,
        precision=precision,
        model=model,
        checkpoint=str(checkpoint) if checkpoint else None,
        manifest=str(manifest) if manifest else None,
    )
    # A preset sets the options left at their defaults; the ones given on the command line win. (By name:
    # Typer ships its own copy of click, whose ParameterSource is not click.core's.)
    given = {k: v for k, v in options.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
    config = CondenseConfig.from_preset(preset, modalities=parse_modalities(modalities), **given)
    config.check()
    store = store if store is not None else default_store()
    out = out or Path("syn.safetensors")
    result = run_condense(
        store,
        out,
        config,
        device=device,
        resume=resume,
        overwrite=overwrite,
        log_with=parse_log_with(log_with),
        log_dir=log_dir,
    )
    if not result.metadata:  # not the main process
        return
    summary = {
        "out": str(result.path),
        "rows": result.rows,
        "method": config.method,
        "space": config.space,
        "dpc": config.dpc,
        "seconds": round(result.seconds, 2),
        "final_loss": result.final_loss,
        "store": str(store),
    }
    if as_json:
        _print_json(summary)
        return
    loss = "" if result.final_loss is None else f", final loss {result.final_loss:.4f}"
    print(
        f"wrote {result.path} ({result.rows} rows, {config.method}, {config.space} space, {result.seconds:.1f} s{loss})"
    )


@app.command(no_args_is_help=True)
def evaluate(
    sets: Annotated[
        list[Path],
        typer.Argument(
            help="Synthetic set or selection (.safetensors from `ibdc condense`); several sets of one configuration "
            "(condensation seeds) give mean ± std over sets × head seeds.",
            show_default=False,
        ),
    ],
    test: Annotated[
        Path | None,
        typer.Option("--test", help="Real test store; default: the built-in demo test store (built on first use)."),
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="linear (per-modality linear heads, late fusion), mlp, or convnet (ConvNets trained from scratch "
            "on an input-space set, tested on the test store's manifest), or retrieval (paired data without "
            "labels: InfoNCE projection heads, recall@1/5/10 both ways).",
        ),
    ] = "linear",
    seeds: Annotated[
        int, typer.Option("--seeds", help="Training runs with different head seeds per set; reports mean ± std.")
    ] = 3,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            help="Epochs of the fixed training schedule (default: 300 for heads, 20 for convnet, 100 for retrieval).",
        ),
    ] = None,
    train: Annotated[
        Path | None, typer.Option("--train", help="Also train on this whole real store: whole-data result and ratio.")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="Input-space sets: the encoder checkpoint to embed them with (default: the file recorded in the "
            "set, then $IBDC_CHECKPOINT).",
        ),
    ] = None,
    test_manifest: Annotated[
        Path | None,
        typer.Option("--test-manifest", help="convnet: the test store's manifest (default: the path it records)."),
    ] = None,
    train_manifest: Annotated[
        Path | None,
        typer.Option("--train-manifest", help="convnet: the --train store's manifest (default: the path it records)."),
    ] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    as_json: JsonOpt = False,
) -> None:
    """Train heads on synthetic sets and report top-1 accuracy (or recall@k) on a real test store (mean ± std).

    Example: ibdc evaluate syn.safetensors --test stores/test --train stores/train --seeds 3

    Example: ibdc evaluate syn-0.safetensors syn-1.safetensors syn-2.safetensors --test stores/test

    Example: ibdc evaluate pairs.safetensors --test stores/sn-test --protocol retrieval --train stores/sn-train
    """
    from ibdc_cli.convnet_eval import ConvnetSchedule
    from ibdc_cli.demo import default_store
    from ibdc_cli.evaluate import HeadSchedule, format_accuracy
    from ibdc_cli.evaluate import evaluate as run_evaluate

    test = test if test is not None else default_store("test")
    from ibdc_cli.retrieval import RetrievalSchedule, format_retrieval

    schedule_type = {"convnet": ConvnetSchedule, "retrieval": RetrievalSchedule}.get(protocol, HeadSchedule)
    schedule = schedule_type() if epochs is None else schedule_type(epochs=epochs)
    result = run_evaluate(
        sets,
        test,
        protocol=protocol,
        seeds=seeds,
        schedule=schedule,
        train_store=train,
        checkpoint=checkpoint,
        test_manifest=test_manifest,
        train_manifest=train_manifest,
        device=device,
        precision=precision,
    )
    if as_json:
        _print_json(result)
        return
    print(format_retrieval(result) if protocol == "retrieval" else format_accuracy(result))


@app.command(no_args_is_help=True)
def bind(
    manifest: Annotated[
        Path, typer.Argument(help="CSV or JSONL manifest of paired rows: a column per modality, optional label.")
    ],
    modalities: ModalitiesOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Encoder checkpoint to write (.safetensors).")],
    anchor: Annotated[
        str, typer.Option("--anchor", help="The modality whose tower stays frozen; the others are bound to it.")
    ] = "image",
    model: ModelOpt = "imagebind_tiny",
    checkpoint: CheckpointOpt = None,
    random_init: RandomInitOpt = False,
    seed: SeedOpt = 0,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training rows.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Pairs per step (InfoNCE negatives).")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Peak AdamW learning rate (linear warm-up, cosine decay).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 0.05,
    warmup_epochs: Annotated[float, typer.Option("--warmup-epochs", help="Epochs of linear warm-up.")] = 1.0,
    temperature: Annotated[float, typer.Option("--temperature", help="InfoNCE temperature.")] = 0.07,
    label_positives: Annotated[
        bool,
        typer.Option("--label-positives", help="Count rows of the same label as positives, not only the same row."),
    ] = False,
    targets: Annotated[
        str,
        typer.Option(
            "--targets",
            help="What a bound row is pulled towards: rows (the batch's anchor embeddings, as CLIP and ImageBind "
            "train) or class-means (the anchor's class means over the training rows; needs labels).",
        ),
    ] = "rows",
    anchor_map: Annotated[
        str,
        typer.Option(
            "--anchor-map",
            help="The anchor's map, fitted on the training rows and saved in the checkpoint: whiten, center "
            "or none (a random tower's outputs differ along one direction; whitening lets its class structure "
            "show).",
        ),
    ] = "whiten",
    augment: Annotated[
        bool,
        typer.Option(
            "--augment/--no-augment",
            help="Randomly vary the trained audio tower's inputs (a delay, a mel shift and a gain).",
        ),
    ] = True,
    ema: Annotated[
        float,
        typer.Option(
            "--ema",
            help="Decay of an exponential moving average of the trained weights, kept and saved instead of "
            "the last step's (0: off).",
        ),
    ] = 0.0,
    val_manifest: Annotated[
        Path | None,
        typer.Option(
            "--val-manifest",
            help="Manifest of held-out rows (another speaker, say) for the before/after metrics; "
            "then every row of MANIFEST trains.",
        ),
    ] = None,
    val_fraction: Annotated[
        float,
        typer.Option("--val-fraction", help="Without --val-manifest: share of rows held out (seeded) for the metrics."),
    ] = 0.1,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes decoding media.")] = 2,
    device: DeviceOpt = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted bind of the same job.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")] = False,
    log_with: LogWithOpt = None,
    log_dir: LogDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Bind modalities to a frozen anchor tower (as ImageBind binds them to images): an aligned encoder.

    Example: ibdc bind data/train.csv --modalities image,audio --anchor image --epochs 30 --out enc.safetensors
    """
    from ibdc_cli.bind import bind_encoder, format_report
    from ibdc_cli.data.manifest import parse_modalities
    from ibdc_cli.tracking import parse_log_with

    result = bind_encoder(
        manifest,
        parse_modalities(modalities),
        anchor,
        out,
        model=model,
        checkpoint=checkpoint,
        random_init=random_init,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        temperature=temperature,
        label_positives=label_positives,
        targets=targets,
        anchor_map=anchor_map,
        augment=augment,
        ema=ema,
        val_manifest=val_manifest,
        val_fraction=val_fraction,
        workers=workers,
        device=device,
        resume=resume,
        overwrite=overwrite,
        log_with=parse_log_with(log_with),
        log_dir=log_dir,
    )
    if not result.metadata:  # not the main process
        return
    if as_json:
        meta = result.metadata
        keys = (
            "preset",
            "anchor",
            "bound",
            "rows",
            "val_manifest",
            "metrics",
            "loss_history",
            "held_out_history",
            "wall_time_s",
            "settings",
        )
        _print_json({"out": str(result.out), **{k: meta[k] for k in keys}})
        return
    print(format_report(result))


@app.command(no_args_is_help=True)
def inspect(
    path: Annotated[Path, typer.Argument(help="A synthetic set (.safetensors) or an embedding store directory.")],
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Write a PNG: real vs synthetic embeddings per modality in 2-D, coloured by class, and the loss "
            "curves (for a store: its embeddings per modality).",
        ),
    ] = None,
    export: Annotated[
        Path | None,
        typer.Option(
            "--export",
            help="Write a synthetic set's rows as files into this new directory: images as PNG plus a grid, "
            "audio as spectrogram PNG and WAV (approximate inverse of the mel fbank), embeddings as .npy, "
            "labels.csv and index.csv.",
        ),
    ] = None,
    real: Annotated[
        Path | None,
        typer.Option("--real", help="The real store drawn with --plot (default: the set's recorded source store)."),
    ] = None,
    projection: Annotated[
        str,
        typer.Option(
            "--projection",
            help="2-D projection of --plot: tsne (separates classes best, measured; seconds) or pca (instant).",
        ),
    ] = "tsne",
    real_per_class: Annotated[
        int, typer.Option("--real-per-class", help="At most this many real rows per class in --plot (drawn at random).")
    ] = 200,
    checkpoint: CheckpointOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --plot file or --export directory.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Describe a synthetic set (method, settings, loss curve, how to reproduce it) or an embedding store.

    With --plot, also draw it (input-space rows are embedded with the set's encoder; --checkpoint names
    its weights if they moved); with --export, also write its rows as PNG, WAV, .npy and CSV files.

    Example: ibdc inspect syn.safetensors

    Example: ibdc inspect syn.safetensors --plot syn.png --projection tsne

    Example: ibdc inspect syn.safetensors --export syn-files/
    """
    from ibdc_cli import report
    from ibdc_cli.inspect import inspect_path

    info = inspect_path(
        path,
        plot=plot,
        export=export,
        real=real,
        projection=projection,
        per_class=real_per_class,
        checkpoint=checkpoint,
        overwrite=overwrite,
    )
    if as_json:
        _print_json(info)
        return
    if info["kind"] == "store":
        report.print_store(info)
    else:
        report.print_synthetic(info)
    if plot is not None:
        print(f"wrote plot {plot} (panels: {', '.join(info['plot']['panels'])}; {projection})")
    if export is not None:
        kinds = ", ".join(f"{n} {kind}" for kind, n in info["export"]["kinds"].items())
        print(f"wrote {export}/ ({kinds}; list in index.csv)")


@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to build the demo (default: the cache, $IBDC_CACHE).")
    ] = None,
    per_class: Annotated[
        int | None, typer.Option("--per-class", help="Rows per class and split, for a quicker demo (default: all).")
    ] = None,
    dpc: Annotated[int, typer.Option("--dpc", help="Synthetic data points per class.")] = 10,
    seeds: Annotated[int, typer.Option("--seeds", help="Evaluation runs per set.")] = 3,
    iterations: Annotated[
        int | None, typer.Option("--iterations", help="Condensation steps per class (default: condense's).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole workflow on the built-in av-digits data and print what it achieved.

    Builds av-digits, embeds train and test with imagebind_tiny, condenses audio+image with imagebinddc
    and with random real rows, evaluates both against training on the whole data, and draws the
    imagebinddc set against the real rows (a PNG, as `ibdc inspect --plot` does).

    Example: ibdc demo --out demo-out
    """
    from ibdc_cli.demo import run_demo
    from ibdc_cli.report import print_demo

    result = run_demo(out, per_class=per_class, dpc=dpc, seeds=seeds, iterations=iterations)
    if as_json:
        _print_json(result)
    else:
        print_demo(result)


@app.command("env")
def env(as_json: JsonOpt = False) -> None:
    """Print what this installation runs on: versions, devices, threads, world size (for bug reports).

    Example: ibdc env
    """
    from ibdc_cli.runtime import environment

    facts = environment()
    if as_json:
        _print_json(facts)
        return
    for key, value in facts.items():
        print(f"{key + ':':<22}{value}")


OverwriteBuildOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace a different earlier build in OUT (default: refuse, exit 2).")
]


@datasets_app.command("fsdd-mnist", no_args_is_help=True)
def datasets_fsdd_mnist(
    out: Annotated[Path, typer.Argument(help="Directory to write audio/, images/, train/val/test.csv into.")],
    source: Annotated[
        Path | None,
        typer.Option(
            "--source",
            help="Local folder with recordings/*.wav and the MNIST IDX files (default: download the pinned files).",
        ),
    ] = None,
    test_speaker: Annotated[str, typer.Option("--test-speaker", help="The FSDD speaker of the test split.")] = (
        "yweweler"
    ),
    val_speaker: Annotated[str, typer.Option("--val-speaker", help="The FSDD speaker of the val split.")] = "theo",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the image drawn for each recording.")] = 0,
    mirror: Annotated[
        str | None,
        typer.Option("--mirror", help="Download from this base URL (files by name) instead of GitHub and CVDF."),
    ] = None,
    per_class: Annotated[
        int | None,
        typer.Option(
            "--per-class", help="At most this many recordings per digit and split (default: all): a small build."
        ),
    ] = None,
    overwrite: OverwriteBuildOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Real spoken digits (FSDD) paired with real handwriting (MNIST): train/val/test sharing no speaker or image.

    Every speaker other than the val and test speakers trains. Columns id, image, audio, label.

    Example: ibdc datasets fsdd-mnist data/fsdd-mnist --source ../shared/data/fsdd-mnist
    """
    from ibdc_cli.data.fsdd_mnist import build_fsdd_mnist

    summary = build_fsdd_mnist(
        out,
        source=source,
        test_speaker=test_speaker,
        val_speaker=val_speaker,
        seed=seed,
        overwrite=overwrite,
        mirror=mirror,
        per_class=per_class,
    )
    if as_json:
        _print_json(summary)
        return
    for split, path in summary["manifests"].items():
        speakers = ", ".join(summary["speakers"][split])
        print(f"{split}: {path} ({summary['counts'][split]} rows; speakers {speakers})")
    print("licences: FSDD CC BY-SA 4.0, MNIST CC BY-SA 3.0 (share-alike; attribution in README.txt)")


@datasets_app.command("av-digits", no_args_is_help=True)
def datasets_av_digits(
    out: Annotated[Path, typer.Argument(help="Directory to write images/, audio/, train.csv, test.csv into.")],
    per_class: Annotated[
        int | None,
        typer.Option("--per-class", help="At most this many rows per class and split (default: all)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, speakers and captions.")] = 0,
    overwrite: OverwriteBuildOpt = False,
) -> None:
    """Audio-visual digits: scikit-learn's handwritten digits paired with espeak-ng spoken names.

    Speaker-disjoint train/test manifests with columns image, audio, text, label.

    Example: ibdc datasets av-digits data/av-digits
    """
    from ibdc_cli.data.benchmark import build_av_digits

    paths = build_av_digits(out, per_class=per_class, seed=seed, overwrite=overwrite)
    for split, path in paths.items():
        print(f"{split}: {path}")


@datasets_app.command("spoken-numbers", no_args_is_help=True)
def datasets_spoken_numbers(
    out: Annotated[Path, typer.Argument(help="Directory to write audio/, train.csv, test.csv into.")],
    count: Annotated[int | None, typer.Option("--count", help="At most this many rows in all (default: all).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split and speakers.")] = 0,
    overwrite: OverwriteBuildOpt = False,
) -> None:
    """Spoken numbers 0-999 paired with their text, speaker-disjoint, for audio-text retrieval.

    Example: ibdc datasets spoken-numbers data/spoken-numbers
    """
    from ibdc_cli.data.benchmark import build_spoken_numbers

    paths = build_spoken_numbers(out, count=count, seed=seed, overwrite=overwrite)
    for split, path in paths.items():
        print(f"{split}: {path}")


def _reorder_global_flags(args: list[str]) -> list[str]:
    flags = [a for a in args if a in GLOBAL_FLAGS]
    return flags + [a for a in args if a not in GLOBAL_FLAGS]


# Errors of the place the user asked ibdc to write (a read-only folder, a full disk): exit 2, one line.
UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def main(args: list[str] | None = None) -> None:
    """Console-script entry point: runs the app and maps errors to exit codes."""
    global _debug
    args = list(sys.argv[1:] if args is None else args)
    _debug = "--debug" in args or os.environ.get("IBDC_DEBUG") == "1"
    try:
        # Typer reports usage errors itself (exit 2) and turns Ctrl-C into exit code 130.
        app(args=_reorder_global_flags(args), prog_name="ibdc", standalone_mode=True)
    except IbdcError as exc:
        if _debug:
            traceback.print_exc()
        stderr.print(f"ibdc: error: {exc}", markup=False, soft_wrap=True)
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in UNWRITABLE:
            raise
        if _debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        stderr.print(f"ibdc: error: {where}{exc.strerror}", markup=False, soft_wrap=True)
        sys.exit(2)
    except SystemExit as exc:
        if exc.code == 130:
            stderr.print("ibdc: interrupted (embed and condense continue with --resume)", markup=False)
        raise
