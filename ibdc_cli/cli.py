"""The `ibdc` command line: one thin function per command (options -> library call -> output).

Exit codes: 0 success, 2 usage or input error (one line naming the file/row/option), 1 a bug or runtime
failure, 130 interrupted (the job can be resumed with --resume).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
import traceback
from inspect import Parameter, Signature
from pathlib import Path
from typing import Annotated

import typer

from ibdc_cli import __version__, config
from ibdc_cli.config import BindConfig, CondenseConfig, EmbedConfig, EvaluateConfig, ManifestConfig
from ibdc_cli.console import set_quiet, stderr
from ibdc_cli.errors import IbdcError

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


# Options every recipe command has besides its config's fields: declared once here.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Read options from a TOML, YAML or JSON file, or the config recorded in a synthetic set or bind "
        "checkpoint (.safetensors); options on the command line override it.",
        metavar="FILE",
    ),
]
PrintConfigOpt = Annotated[
    bool, typer.Option("--print-config", help="Print the resolved options as TOML and exit without running.")
]
CheckpointOpt = Annotated[
    Path | None, typer.Option("--checkpoint", help=EmbedConfig.field_named("checkpoint").metadata["help"])
]


def _print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _typer_parameter(f: dataclasses.Field, cls: type[config.Config]) -> Parameter:
    """The Typer parameter of one config field: its flag, help, default and (for Literal fields) choices."""
    meta = f.metadata
    choices = config.choices_of(f, cls)
    want = config.base_type(f, cls)
    default = config._default_of(f)
    required = default is dataclasses.MISSING
    if meta["comma_list"] and not meta["argument"]:  # a list written a,b
        kind = str if required or default else str | None
        default = ",".join(default) or None if isinstance(default, list) else default
    elif want is list:  # a list argument: evaluate's sets
        kind = list[str]
    else:
        kind = want | None if default is None else want
    if required:  # required, but it may come from --config FILE: `config.resolve` checks it is given
        kind, default = kind | None, None
    extra: dict = {"help": meta["help"] + (" (required)" if required else ""), "hidden": meta["hidden"]}
    if choices:
        extra["metavar"] = "[" + "|".join(choices) + "]"
        extra["autocompletion"] = _completer(choices)
    elif meta["metavar"]:
        extra["metavar"] = meta["metavar"]
    if meta["argument"]:
        extra["metavar"] = f.name.upper()
        info = typer.Argument(show_default=default is not None, **extra)
    else:
        names = [config.flag_of(f)]
        if meta["negative"]:
            names = [f"{names[0]}/--no-{names[0].removeprefix('--')}"]
        if meta["short"]:
            names.append(meta["short"])
        info = typer.Option(*names, **extra)
    return Parameter(
        f.name,
        Parameter.KEYWORD_ONLY,
        annotation=Annotated[kind, info],
        default=default,
    )


def _completer(choices: tuple[str, ...]):
    def complete(incomplete: str) -> list[str]:
        return [c for c in choices if c.startswith(incomplete)]

    return complete


def recipe_command(cls: type[config.Config], **command_options):
    """Register `run(config, as_json)` as `ibdc COMMAND`, with one option per field of `cls` plus --config,
    --print-config and --json. The options given on the command line override --config FILE, which
    overrides the preset (condense) and the defaults."""

    def register(run):
        params = [Parameter("ctx", Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
        params += [_typer_parameter(f, cls) for f in dataclasses.fields(cls)]
        params += [
            Parameter(name, Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
            for name, annotation, default in (
                ("config_file", ConfigOpt, None),
                ("print_config", PrintConfigOpt, False),
                ("as_json", JsonOpt, False),
            )
        ]

        def command(ctx: typer.Context, **values):
            config_file, print_config, as_json = (values.pop(k) for k in ("config_file", "print_config", "as_json"))
            # By name: Typer ships its own copy of click, whose ParameterSource is not click.core's.
            given = {k: v for k, v in values.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
            for f in dataclasses.fields(cls):
                if f.metadata["comma_list"] and isinstance(given.get(f.name), str):
                    given[f.name] = [v.strip() for v in given[f.name].split(",") if v.strip()]
                if isinstance(given.get(f.name), Path):
                    given[f.name] = str(given[f.name])
            from_file = config.read_config_file(config_file, cls) if config_file is not None else {}
            resolved = config.resolve(cls, from_file, given)
            if "modalities" in given or "modalities" in from_file:
                from ibdc_cli.data.manifest import parse_modalities

                resolved = dataclasses.replace(resolved, modalities=parse_modalities(resolved.modalities))
            if print_config:
                sys.stdout.write(config.dump_toml(resolved.to_dict()))
                return
            run(resolved, as_json)

        command.__signature__ = Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__ = run.__name__
        command.__doc__ = run.__doc__
        app.command(cls.COMMAND, **command_options)(command)
        return run

    return register


@recipe_command(EmbedConfig, no_args_is_help=True)
def embed(config: EmbedConfig, as_json: bool) -> None:
    """Embed a manifest with a frozen ImageBind encoder into an embedding store.

    Example: ibdc embed data/train.csv --modalities image,audio --model imagebind_tiny --out stores/train
    """
    from ibdc_cli.embed import run_embed
    from ibdc_cli.runtime import distributed_env

    result = run_embed(config)
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


@recipe_command(ManifestConfig, no_args_is_help=True)
def manifest(config: ManifestConfig, as_json: bool) -> None:
    """Write a manifest of a folder of media: DIR/<label>/<stem>.<ext> or DIR/<modality>/<label>/<stem>.<ext>.

    Files of one stem make one row; rows are sorted by label, then stem; hidden files are ignored; an
    unknown file type, a stem missing a modality, or a stem under two labels exits 2 naming it.

    Example: ibdc manifest photos/ --modalities image,audio --out photos.csv
    """
    from ibdc_cli.data.folders import write_folder_manifest

    rows = write_folder_manifest(config)
    labels = len({row["label"] for row in rows})
    if as_json:
        _print_json({"out": config.out, "rows": len(rows), "labels": labels, "columns": list(rows[0])})
        return
    print(f"wrote {config.out} ({len(rows)} rows, {labels} labels)")


@recipe_command(CondenseConfig)
def condense(config: CondenseConfig, as_json: bool) -> None:
    """Condense a store into a few synthetic examples per class.

    Example: ibdc condense stores/train --modalities audio,image --dpc 20 --out syn.safetensors

    Example: ibdc condense stores/train --modalities audio,image --dpc 1 --preset paper --iterations 100

    Example: ibdc condense --config syn.safetensors --out again.safetensors   (the set's recorded config)
    """
    from ibdc_cli.condense import run_condense
    from ibdc_cli.demo import default_store

    config.check()
    if config.store is None:
        config = dataclasses.replace(config, store=str(default_store()))
    result = run_condense(config)
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
        "store": config.store,
    }
    if as_json:
        _print_json(summary)
        return
    loss = "" if result.final_loss is None else f", final loss {result.final_loss:.4f}"
    print(
        f"wrote {result.path} ({result.rows} rows, {config.method}, {config.space} space, {result.seconds:.1f} s{loss})"
    )


@recipe_command(EvaluateConfig, no_args_is_help=True)
def evaluate(config: EvaluateConfig, as_json: bool) -> None:
    """Train heads on synthetic sets and report top-1 accuracy (or recall@k) on a real test store (mean ± std).

    Example: ibdc evaluate syn.safetensors --test stores/test --train stores/train --seeds 3

    Example: ibdc evaluate syn-0.safetensors syn-1.safetensors syn-2.safetensors --test stores/test

    Example: ibdc evaluate pairs.safetensors --test stores/sn-test --protocol retrieval --train stores/sn-train
    """
    from ibdc_cli.demo import default_store
    from ibdc_cli.evaluation import format_accuracy, format_retrieval, run_evaluate

    if config.test is None:
        config = dataclasses.replace(config, test=str(default_store("test")))
    result = run_evaluate(config)
    if as_json:
        _print_json(result)
        return
    print(format_retrieval(result) if config.protocol == "retrieval" else format_accuracy(result))


@recipe_command(BindConfig, no_args_is_help=True)
def bind(config: BindConfig, as_json: bool) -> None:
    """Bind modalities to a frozen anchor tower (as ImageBind binds them to images): an aligned encoder.

    Example: ibdc bind data/train.csv --modalities image,audio --anchor image --epochs 30 --out enc.safetensors
    """
    from ibdc_cli.bind import format_report, run_bind

    result = run_bind(config)
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
            help="Write a synthetic set's rows into this new directory (--format chooses how); as files: images "
            "as PNG plus a grid, audio as spectrogram PNG and WAV (approximate inverse of the mel fbank), "
            "embeddings as .npy, labels.csv and index.csv.",
        ),
    ] = None,
    export_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="What --export writes: files (PNG, WAV, .npy, CSV), hf (a Hugging Face dataset, save_to_disk: "
            "label, each modality's rows as stored and mapped back to the encoder's space, images and audio as "
            "Image/Audio) or parquet (the same table as train.parquet); hf and parquet add ibdc.json.",
            metavar="[files|hf|parquet]",
            autocompletion=_completer(("files", "hf", "parquet")),
        ),
    ] = "files",
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
    map_embeddings: Annotated[
        Path | None,
        typer.Option(
            "--map-embeddings",
            help="An [N, D] .npy file of your own embeddings (from the set's encoder) to map into the set's "
            "space, where its rows train heads; written to --out. Needs --modality.",
            metavar="IN.npy",
        ),
    ] = None,
    modality: Annotated[str | None, typer.Option("--modality", help="The modality of --map-embeddings.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Where --map-embeddings writes the mapped rows.", metavar="OUT.npy")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --plot file, --export directory or --out file.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Describe a synthetic set (method, settings, loss curve, how to reproduce it) or an embedding store.

    With --plot, also draw it (input-space rows are embedded with the set's encoder; --checkpoint names
    its weights if they moved); with --export, also write its rows as PNG, WAV, .npy and CSV files, or
    (--format hf|parquet) as a Hugging Face dataset or a Parquet table.

    Example: ibdc inspect syn.safetensors

    Example: ibdc inspect syn.safetensors --plot syn.png --projection tsne

    Example: ibdc inspect syn.safetensors --export syn-files/

    Example: ibdc inspect syn.safetensors --export syn-hf/ --format hf

    Example: ibdc inspect syn.safetensors --map-embeddings mine.npy --modality audio --out mine-mapped.npy
    """
    from ibdc_cli import report
    from ibdc_cli.inspect import inspect_path

    info = inspect_path(
        path,
        plot=plot,
        export=export,
        export_format=export_format,
        real=real,
        projection=projection,
        per_class=real_per_class,
        checkpoint=checkpoint,
        overwrite=overwrite,
        map_embeddings=map_embeddings,
        modality=modality,
        map_out=out,
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
    if export is not None and export_format == "files":
        kinds = ", ".join(f"{n} {kind}" for kind, n in info["export"]["kinds"].items())
        print(f"wrote {export}/ ({kinds}; list in index.csv)")
    elif export is not None:
        what = {"hf": "Hugging Face dataset", "parquet": "Parquet table train.parquet"}[export_format]
        columns = ", ".join(info["export"]["columns"])
        print(f"wrote {export}/ ({what}: {info['export']['rows']} rows; columns {columns}; metadata in ibdc.json)")
    if map_embeddings is not None:
        mapped = info["mapped"]
        print(f"wrote {out} ({mapped['rows']} {modality} rows in the set's space, [N, {mapped['dim']}] float32)")


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
