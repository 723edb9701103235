"""The `ibdc` command line: one thin function per command (options -> library call -> output).

Exit codes: 0 success, 2 usage or input error (one line naming the file/row/option), 1 a bug or runtime
failure, 130 interrupted (the job can be resumed with --resume).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import click
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


@app.callback()
def _root(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No logs or progress bars on stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the ibdc version and exit.")] = False,
) -> None:
    global _debug
    _debug = _debug or debug
    set_quiet(quiet)
    if version:
        print(__version__)
        raise typer.Exit()


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
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (encoder init for random-init presets, sampling).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
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
    seed: SeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per forward pass.")] = 32,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes decoding media.")] = 2,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option("--precision", help="fp32, bf16 or fp16 (autocast).")] = "fp32",
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
        stderr.print(f"skipped row {item['row']}: {item['reason']}")
    print(f"wrote {result.store} ({result.rows} rows, {len(result.skipped)} skipped, {result.seconds:.1f} s)")


@app.command(no_args_is_help=True)
def inspect(
    path: Annotated[Path, typer.Argument(help="An embedding store directory.")],
    as_json: JsonOpt = False,
) -> None:
    """Describe an embedding store: modalities, dims, rows per class, encoder, preprocessing, provenance.

    Example: ibdc inspect stores/train --json
    """
    from ibdc_cli.report import describe_store, print_store

    info = describe_store(path)
    if as_json:
        _print_json(info)
    else:
        print_store(info)


@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to build the demo (default: the cache, $IBDC_CACHE).")
    ] = None,
    per_class: Annotated[
        int | None, typer.Option("--per-class", help="Rows per class and split, for a quicker demo (default: all).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the built-in demo: build av-digits, embed train and test with imagebind_tiny, describe the stores.

    Example: ibdc demo --out demo-out
    """
    from ibdc_cli.demo import ensure_demo_stores
    from ibdc_cli.report import describe_store

    paths = ensure_demo_stores(out, per_class=per_class)
    stores = {split: describe_store(paths[split]) for split in ("train", "test")}
    if as_json:
        _print_json({"data": str(paths["data"]), **{k: v for k, v in stores.items()}})
        return
    print(f"av-digits media and manifests: {paths['data']}")
    for split, info in stores.items():
        dims = ", ".join(f"{m} {d}-d" for m, d in info["modalities"].items())
        print(f"{split} store: {info['path']}  ({info['rows']} rows, {len(info['class_names'])} classes, {dims})")
    print(f"next: ibdc inspect {stores['train']['path']}")


@datasets_app.command("av-digits", no_args_is_help=True)
def datasets_av_digits(
    out: Annotated[Path, typer.Argument(help="Directory to write images/, audio/, train.csv, test.csv into.")],
    per_class: Annotated[
        int | None,
        typer.Option("--per-class", help="At most this many rows per class and split (default: all)."),
    ] = None,
    seed: SeedOpt = 0,
) -> None:
    """Audio-visual digits: scikit-learn's handwritten digits paired with espeak-ng spoken names.

    Speaker-disjoint train/test manifests with columns image, audio, text, label.

    Example: ibdc datasets av-digits data/av-digits
    """
    from ibdc_cli.data.benchmark import build_av_digits

    paths = build_av_digits(out, per_class=per_class, seed=seed)
    for split, path in paths.items():
        print(f"{split}: {path}")


@datasets_app.command("spoken-numbers", no_args_is_help=True)
def datasets_spoken_numbers(
    out: Annotated[Path, typer.Argument(help="Directory to write audio/, train.csv, test.csv into.")],
    count: Annotated[int | None, typer.Option("--count", help="At most this many rows in all (default: all).")] = None,
    seed: SeedOpt = 0,
) -> None:
    """Spoken numbers 0-999 paired with their text, speaker-disjoint, for audio-text retrieval.

    Example: ibdc datasets spoken-numbers data/spoken-numbers
    """
    from ibdc_cli.data.benchmark import build_spoken_numbers

    paths = build_spoken_numbers(out, count=count, seed=seed)
    for split, path in paths.items():
        print(f"{split}: {path}")


def _reorder_global_flags(args: list[str]) -> list[str]:
    flags = [a for a in args if a in GLOBAL_FLAGS]
    return flags + [a for a in args if a not in GLOBAL_FLAGS]


def main(args: list[str] | None = None) -> None:
    """Console-script entry point: runs the app and maps errors to exit codes."""
    global _debug
    args = list(sys.argv[1:] if args is None else args)
    _debug = "--debug" in args or os.environ.get("IBDC_DEBUG") == "1"
    try:
        # Typer turns Ctrl-C into exit code 130 and returns exit codes when not standalone.
        code = app(args=_reorder_global_flags(args), prog_name="ibdc", standalone_mode=False)
    except IbdcError as exc:
        if _debug:
            traceback.print_exc()
        stderr.print(f"ibdc: error: {exc}", markup=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        code = 130
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    if code == 130:
        stderr.print("ibdc: interrupted; rerun the same command with --resume to continue", markup=False)
    sys.exit(code if isinstance(code, int) else 0)
