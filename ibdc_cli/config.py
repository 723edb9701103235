"""Every option of every recipe, written once: its default, help text and choices.

Each recipe (embed, condense, bind, evaluate) has one config dataclass here. Its fields are the only
place where an option's default, help text and choices live: the Typer commands in `cli.py` are built
from them (`Literal` choices complete in the shell and are listed by `--help`), `reproduce_command`
writes a command line from them, `docs/commands/*.md` carry option tables generated from them
(`python -m ibdc_cli.config --docs`, checked by a test), and `--config FILE` / `--print-config` read
and write them. The module imports no torch, so `ibdc --help` starts fast.

A field's `kind` says what the value is:
- "setting": what the output is made from; recorded in it (a synthetic set's `settings` and `config`,
  a bind checkpoint's `settings`) and part of the job a `--resume` must match;
- "input": what is read (the store, the manifest), recorded in the `config` so it can be fed back;
- "run": where and how this run writes and runs (`--out`, `--device`, `--resume`, trackers); never
  recorded, so a set's config fed back as `--config` runs anywhere and writes elsewhere.

    >>> config = CondenseConfig(modalities=["audio", "image"], dpc=10)
    >>> config.settings()["num_freqs"]
    4096
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ibdc_cli.errors import IbdcError

Kind = Literal["setting", "input", "run"]

Method = Literal["imagebinddc", "dm", "avdd", "random", "herding", "kcenter"]
SYNTHESIS_METHODS: tuple[str, ...] = ("imagebinddc", "dm", "avdd")
SELECTION_METHODS: tuple[str, ...] = ("random", "herding", "kcenter")
Space = Literal["embedding", "input"]
Init = Literal["real", "noise", "herding"]
Optimizer = Literal["adam", "sgd"]
Guide = Literal["imagebind", "convnet"]
Reduction = Literal["eq3", "ncfm"]
CrossForm = Literal["none", "paper", "hybrid"]
JointForm = Literal["cf", "paper", "paper-cos", "none"]
SpaceMapName = Literal["whiten", "center", "none"]
Precision = Literal["fp32", "bf16", "fp16"]
BindPrecision = Literal["fp32", "bf16"]  # fp16 training would need loss scaling, which bind does not do
Preset = Literal["default", "paper"]
Protocol = Literal["linear", "mlp", "convnet", "retrieval"]
Targets = Literal["rows", "class-means"]
AudioFrontend = Literal["auto", "envelope", "logmel"]
Model = Literal["imagebind_tiny", "imagebind_huge"]
Tracker = Literal["csv", "tensorboard", "wandb"]
Layout = Literal["auto", "class", "paired"]


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    kind: Kind = "setting",
    flag: str | None = None,
    short: str | None = None,
    argument: bool = False,
    negative: bool = False,
    choices: Any = None,
    comma_list: bool = False,
    metavar: str | None = None,
    hidden: bool = False,
) -> Any:
    """A config field with what the command line needs to know about it.

    `flag`: the option's name (default `--field-name`); `short`: e.g. "-m"; `argument`: a positional
    argument instead of an option; `negative`: a boolean that also has `--no-NAME`; `choices`: a
    `Literal` of the allowed values (default: the field's own `Literal` type; for `comma_list` fields,
    the allowed items); `comma_list`: a `list[str]` written `a,b` on the command line.
    """
    metadata = dict(
        help=help,
        kind=kind,
        flag=flag,
        short=short,
        argument=argument,
        negative=negative,
        choices=choices,
        comma_list=comma_list,
        metavar=metavar,
        hidden=hidden,
    )
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# Options several recipes share: declared once, so names and help stay the same everywhere.


def modalities_option(default: Any = MISSING, help: str | None = None) -> Any:
    return option(
        default,
        help
        or "Comma-separated modalities, e.g. image,audio (of image, audio, text, depth, thermal; 'vision' = image).",
        short="-m",
        comma_list=True,
    )


def model_option(default: Any = "imagebind_tiny", help: str | None = None, kind: Kind = "setting") -> Any:
    return option(
        default,
        help
        or "Encoder preset: imagebind_tiny (small, random-init) or imagebind_huge (needs --checkpoint or "
        "--random-init).",
        kind=kind,
        choices=Model,
    )


def checkpoint_option(help: str | None = None, kind: Kind = "setting") -> Any:
    return option(
        None,
        help
        or "Encoder weights (.pth state dict as Meta publishes it, or an `ibdc bind` .safetensors); "
        "default $IBDC_CHECKPOINT.",
        kind=kind,
        metavar="PATH",
    )


def random_init_option() -> Any:
    return option(False, "Allow random weights for imagebind_huge (as the paper does for NYU-v2).")


def device_option() -> Any:
    return option(
        "auto", "auto, cpu, cuda or cuda:N (under accelerate/torchrun: each process's own device).", kind="run"
    )


def precision_option(help: str | None = None, kind: Kind = "setting") -> Any:
    return option("fp32", help or "fp32, bf16 or fp16: the model's forward passes under autocast.", kind=kind)


def workers_option(kind: Kind = "run") -> Any:
    return option(2, "DataLoader worker processes decoding media.", kind=kind)


def resume_option(what: str) -> Any:
    return option(False, f"Continue an interrupted {what} of the same job.", kind="run")


def overwrite_option(what: str) -> Any:
    return option(False, f"Replace an existing {what}.", kind="run")


def log_with_option() -> Any:
    return option(
        [],
        "Experiment tracking (off by default): csv, tensorboard or wandb, comma-separated; loss terms and step "
        "times per step.",
        kind="run",
        comma_list=True,
        choices=Tracker,
    )


def log_dir_option() -> Any:
    return option(None, "Where --log-with writes (default: OUT-logs/ beside --out).", kind="run", metavar="PATH")


class Config:
    """What the four recipe configs share: field facts, checks, settings, file I/O."""

    COMMAND: typing.ClassVar[str] = ""

    @classmethod
    def option_fields(cls) -> list[dataclasses.Field]:
        return list(fields(cls))

    @classmethod
    def field_named(cls, name: str) -> dataclasses.Field:
        for f in fields(cls):
            if f.name == name:
                return f
        raise KeyError(name)

    def settings(self) -> dict[str, Any]:
        """The fields of kind "setting", as recorded in the output."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.metadata["kind"] == "setting"}

    def recorded(self) -> dict[str, Any]:
        """The fields of kind "setting" and "input": the config recorded in the output, to feed back."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.metadata["kind"] != "run"}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def check_choices(self) -> None:
        """Every value with choices is one of them (the command line and Python callers alike)."""
        for f in fields(self):
            allowed = choices_of(f, type(self))
            if not allowed:
                continue
            value = getattr(self, f.name)
            values = value if f.metadata["comma_list"] else [value]
            for item in values:
                if item is not None and item not in allowed:
                    raise IbdcError(f"{flag_of(f)} {item!r} is not one of: {', '.join(allowed)}")


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _resolved_type(f: dataclasses.Field, cls: type) -> Any:
    return typing.get_type_hints(cls)[f.name]


def choices_of(f: dataclasses.Field, cls: type) -> tuple[str, ...]:
    """The allowed values of a field (its `choices` Literal, else its own Literal type), or ()."""
    literal = f.metadata["choices"] or _resolved_type(f, cls)
    if typing.get_origin(literal) is typing.Union:
        args = [a for a in typing.get_args(literal) if a is not type(None)]
        literal = args[0] if len(args) == 1 else None
    if typing.get_origin(literal) is Literal:
        return tuple(typing.get_args(literal))
    return ()


def base_type(f: dataclasses.Field, cls: type) -> type:
    """int, float, bool, str or list for a field (Optional and Literal unwrapped)."""
    kind = _resolved_type(f, cls)
    if typing.get_origin(kind) is typing.Union or type(kind).__name__ == "UnionType":
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = args[0]
    if typing.get_origin(kind) is Literal:
        return type(typing.get_args(kind)[0])
    if typing.get_origin(kind) is list:
        return list
    return kind


# ----------------------------------------------------------------------------------------------- condense


@dataclass(kw_only=True)
class CondenseConfig(Config):
    """Every option of `ibdc condense`; the settings are recorded verbatim in the synthetic set's metadata.

    The defaults are ibdc's, chosen by measurement on validation data (docs/method.md);
    `CondenseConfig.from_preset("paper", ...)` starts from the paper's configuration instead.
    """

    COMMAND: typing.ClassVar[str] = "condense"

    store: str | None = option(
        None,
        "Embedding store (from `ibdc embed`); default $IBDC_STORE, else the built-in demo store (av-digits, built "
        "and embedded on first use: a few minutes, needs espeak-ng).",
        kind="input",
        argument=True,
    )
    modalities: list[str] = modalities_option(["image", "audio"])
    dpc: int = option(20, "Synthetic data points per class.")
    out: str = option(
        "syn.safetensors", "Synthetic set to write (.safetensors).", kind="run", short="-o", metavar="PATH"
    )
    method: Method = option("imagebinddc", "imagebinddc, dm, avdd, or a selection: random, herding, kcenter.")
    space: Space = option("embedding", "embedding: optimise vectors in the joint space; input: optimise model inputs.")
    iterations: int = option(150, "Optimisation steps per class.")
    lr: float | None = option(None, "Learning rate (default 0.05 in embedding space, 0.01 for inputs).")
    optimizer: Optimizer = option("adam", "adam or sgd (momentum 0.5).")
    real_batch: int = option(256, "Real rows of a class per step (0 = all).")
    num_freqs: int = option(4096, "Frequencies K of the characteristic function.")
    sigma: float = option(1.0, "Frequencies are drawn from N(0, sigma^2 I).")
    cf_reduction: Reduction = option("eq3", "ncfm: mean sqrt(a*amp+b*phase) (authors' code); eq3: mean(a*amp+b*phase).")
    alpha: float = option(0.5, "Weight of the CF amplitude term.")
    beta: float = option(0.5, "Weight of the CF phase term.")
    lambda_uni: float = option(1.0, "Weight of the uni-modal term.")
    lambda_cross: float = option(1.0, "Weight of the cross-modal term (avdd: of implicit cross matching).")
    lambda_joint: float = option(1.0, "Weight of the joint-modal term (avdd: of cross-modal gap matching).")
    cross_form: CrossForm = option("none", "none (default: the paper form measurably hurt), paper (Eq. 8-11), hybrid.")
    joint_form: JointForm = option(
        "cf", "cf (CFD of the concatenated modalities; default), paper (Eq. 12-13, dot), paper-cos, none."
    )
    freq_bank: int = option(
        16, "Use B fixed frequency draws with cached real CFs (0 = fresh each step, the paper); not with convnet."
    )
    space_map: SpaceMapName = option(
        "whiten",
        "The space matched: whiten (normalize(C^-1/2 (x - mean)), the store's statistics; default), center "
        "(normalize(x - mean)) or none (the raw embeddings).",
    )
    init: Init = option("real", "Initialise synthetic rows from real, noise or herding.")
    seed: int = option(0, "Seed of the per-class random streams (init, real batches, frequencies).")
    allow_fewer: bool = option(False, "A class with fewer real rows than --dpc gets one row per real row.")
    clusters: int = option(
        0,
        "Stores without labels: 0 = all rows are one class, so --dpc is the number of pairs (default); K = K "
        "pseudo-classes by k-means on the joint embedding, --dpc pairs each.",
    )
    checkpoint_every: int = option(50, "Save a resumable state every N iterations of a class (0 = off).")
    guide: Guide = option(
        "imagebind", "Input space: imagebind (the frozen encoder) or convnet (a random ConvNet redrawn every step)."
    )
    precision: Precision = precision_option(
        "Input space: fp32, bf16 or fp16 autocast for the encoder's passes (the losses stay float32)."
    )
    model: str | None = model_option(None, "Input space: encoder preset (default: the store's).")
    checkpoint: str | None = checkpoint_option()
    manifest: str | None = option(
        None,
        "Input space: where the training rows' media are, a manifest, hf:DATASET or wds:SHARDS (default: the "
        "source the store records).",
        metavar="PATH",
    )
    preset: Preset | None = option(
        None,
        "default (ibdc's measured defaults, also when omitted) or paper (the paper's configuration: input space, "
        "its cross/joint terms, Eq. 3, fresh frequencies, no space map; docs/method.md lists it). Options given "
        "on the command line override the preset.",
    )
    resume: bool = resume_option("run")
    overwrite: bool = overwrite_option("--out file")
    device: str = device_option()
    log_with: list[str] = log_with_option()
    log_dir: str | None = log_dir_option()

    @classmethod
    def from_preset(cls, preset: str | None, **overrides: Any) -> CondenseConfig:
        """The settings of `preset` (a `PRESETS` name; None = "default"), then `overrides` on top.

        Example: `CondenseConfig.from_preset("paper", modalities=["audio", "image"], iterations=100)`.
        """
        return cls(**{**preset_settings(preset), **overrides, "preset": preset})

    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.05 if self.space == "embedding" else 0.01

    def check(self) -> None:
        preset_settings(self.preset)
        self.check_choices()
        positive = {"dpc": self.dpc, "num-freqs": self.num_freqs}
        for name, value in positive.items():
            if value < 1:
                raise IbdcError(f"--{name} must be at least 1, not {value}")
        if self.iterations < 0 or self.real_batch < 0 or self.freq_bank < 0 or self.checkpoint_every < 0:
            raise IbdcError("--iterations, --real-batch, --freq-bank and --checkpoint-every must not be negative")
        weights = {
            "alpha": self.alpha,
            "beta": self.beta,
            "lambda-uni": self.lambda_uni,
            "lambda-cross": self.lambda_cross,
            "lambda-joint": self.lambda_joint,
        }
        for name, value in {"sigma": self.sigma, "lr": self.learning_rate(), **weights}.items():
            if not math.isfinite(value):
                raise IbdcError(f"--{name} must be a finite number, not {value}")
        if self.sigma <= 0 or self.learning_rate() <= 0:
            raise IbdcError("--sigma and --lr must be positive")
        for name, value in weights.items():
            if value < 0:
                raise IbdcError(f"--{name} must not be negative, not {value}")
        if self.guide == "convnet":
            if self.space != "input":
                raise IbdcError("--guide convnet optimises model inputs: use it with --space input")
            if "text" in self.modalities:
                raise IbdcError("--guide convnet has no text network; drop text from --modalities")


PRESETS: dict[str, dict[str, Any]] = {
    # ibdc's defaults: CondenseConfig's, chosen by measurement (docs/method.md).
    "default": {},
    # The paper's configuration (Min et al., AAAI 2026). docs/method.md has a table with the source of each
    # value: the paper's section or equation, the authors' code, or "open, picked" with the reason.
    "paper": {
        "method": "imagebinddc",
        "space": "input",  # synthetic pixels and fbanks through the frozen encoder: the paper's main setting
        "guide": "imagebind",
        "cross_form": "paper",  # Eq. 8-11
        "joint_form": "paper",  # Eq. 12-13 with the printed dot product
        "lambda_uni": 1.0,
        "lambda_cross": 1.0,
        "lambda_joint": 1.0,
        "cf_reduction": "eq3",  # Eq. 3
        "alpha": 0.5,
        "beta": 0.5,
        "num_freqs": 4096,
        "sigma": 1.0,
        "freq_bank": 0,  # fresh frequencies every step
        "space_map": "none",  # the encoder's own space
        "init": "real",
        "optimizer": "sgd",  # momentum 0.5, as the authors' code
        "lr": 30.0,
        "iterations": 5000,
        "real_batch": 128,
    },
}
"""Named sets of CondenseConfig settings (`ibdc condense --preset NAME`); options given explicitly win."""


def preset_settings(preset: str | None) -> dict[str, Any]:
    if preset is not None and preset not in PRESETS:
        raise IbdcError(f"--preset {preset!r} is not one of: {', '.join(PRESETS)}")
    return PRESETS[preset or "default"]


# --------------------------------------------------------------------------------------------------- embed


@dataclass(kw_only=True)
class EmbedConfig(Config):
    """Every option of `ibdc embed`."""

    COMMAND: typing.ClassVar[str] = "embed"

    manifest: str = option(
        help="CSV or JSONL manifest: a column per modality, label, optional id; or hf:DATASET (a save_to_disk "
        "folder, Parquet files, or a Hub name); or wds:SHARDS (a folder of .tar, NAME-{000..009}.tar, a glob).",
        kind="input",
        argument=True,
    )
    modalities: list[str] = modalities_option()
    out: str = option(help="Store directory to create.", kind="run", short="-o", metavar="PATH")
    split: str | None = option(
        None, "hf: the split to embed (default: the only one, else train).", kind="input", metavar="NAME"
    )
    image_column: str | None = option(
        None,
        "hf: the image column (default: image); wds: its member extension (default: docs/commands/embed.md).",
        kind="input",
        metavar="NAME",
    )
    audio_column: str | None = option(
        None,
        "hf: the audio column (default: audio); wds: its member extension (default: docs/commands/embed.md).",
        kind="input",
        metavar="NAME",
    )
    text_column: str | None = option(
        None,
        "hf: the text column (default: text); wds: its member extension (default: docs/commands/embed.md).",
        kind="input",
        metavar="NAME",
    )
    depth_column: str | None = option(
        None,
        "hf: the depth column (default: depth); wds: its member extension (default: docs/commands/embed.md).",
        kind="input",
        metavar="NAME",
    )
    thermal_column: str | None = option(
        None,
        "hf: the thermal column (default: thermal); wds: its member extension (default: docs/commands/embed.md).",
        kind="input",
        metavar="NAME",
    )
    label_column: str | None = option(
        None,
        "hf: the label column (default: label when there is one; else no labels); wds: its member extension "
        "(default: cls, label).",
        kind="input",
        metavar="NAME",
    )
    model: Model = model_option()
    checkpoint: str | None = checkpoint_option()
    random_init: bool = random_init_option()
    seed: int = option(0, "Seed of a random-init encoder's weights.")
    batch_size: int = option(32, "Rows per forward pass.", kind="run")
    workers: int = workers_option()
    device: str = device_option()
    precision: Precision = precision_option()
    resume: bool = resume_option("embed")
    skip_bad: bool = option(False, "Skip rows whose media cannot be read, and list them.")
    overwrite: bool = overwrite_option("store at --out")
    chunk_rows: int = option(1024, "Rows per resumable chunk.", kind="run")
    shard_rows: int = option(16384, "Rows per store shard.", kind="run", hidden=True)


# ------------------------------------------------------------------------------------------------ manifest


@dataclass(kw_only=True)
class ManifestConfig(Config):
    """Every option of `ibdc manifest`: a manifest from folders of media files (rules in ibdc_cli/data/folders.py)."""

    COMMAND: typing.ClassVar[str] = "manifest"

    dir: str = option(
        help="Folder of media: DIR/<label>/<stem>.<ext> (class folders) or DIR/<modality>/<label>/<stem>.<ext> "
        "(paired folders).",
        kind="input",
        argument=True,
    )
    modalities: list[str] = modalities_option()
    out: str = option(
        help="Manifest to write (.csv or .jsonl); media paths in it are relative to its folder.",
        kind="run",
        short="-o",
        metavar="PATH",
    )
    layout: Layout = option(
        "auto",
        "class, paired, or auto: paired when DIR holds exactly one folder per modality (image/, audio/, ...).",
    )
    allow_unpaired: bool = option(
        False, "Write an empty cell for a stem that lacks a modality's file (default: refuse, naming it)."
    )
    overwrite: bool = overwrite_option("--out file")


# ---------------------------------------------------------------------------------------------------- bind


@dataclass(kw_only=True)
class BindConfig(Config):
    """Every option of `ibdc bind`; the settings are recorded in the encoder checkpoint."""

    COMMAND: typing.ClassVar[str] = "bind"

    manifest: str = option(
        help="CSV or JSONL manifest of paired rows: a column per modality, optional label.",
        kind="input",
        argument=True,
    )
    modalities: list[str] = modalities_option()
    out: str = option(help="Encoder checkpoint to write (.safetensors).", kind="run", short="-o", metavar="PATH")
    anchor: str = option("image", "The modality whose tower stays frozen; the others are bound to it.")
    model: Model = model_option()
    checkpoint: str | None = checkpoint_option()
    random_init: bool = random_init_option()
    seed: int = option(0, "Random seed.")
    epochs: int = option(50, "Passes over the training rows.")
    batch_size: int = option(32, "Pairs per step (InfoNCE negatives).")
    lr: float = option(1e-3, "Peak AdamW learning rate (linear warm-up, cosine decay).")
    weight_decay: float = option(0.05, "AdamW weight decay.")
    warmup_epochs: float = option(1.0, "Epochs of linear warm-up.")
    temperature: float = option(0.2, "InfoNCE temperature.")
    label_positives: bool = option(False, "Count rows of the same label as positives, not only the same row.")
    targets: Targets = option(
        "rows",
        "What a bound row is pulled towards: rows (the batch's anchor embeddings, as CLIP and ImageBind train) or "
        "class-means (the anchor's class means over the training rows; needs labels).",
    )
    anchor_map: SpaceMapName = option(
        "whiten",
        "The anchor's map, fitted on the training rows and saved in the checkpoint: whiten, center or none (a "
        "random tower's outputs differ along one direction; whitening lets its class structure show).",
    )
    audio_frontend: AudioFrontend = option(
        "auto",
        "What a bound audio tower reads: envelope (the spectral envelope of the voiced frames, stretched over the "
        "window), logmel (ImageBind's own input) or auto (envelope from random init, else the starting "
        "checkpoint's). Saved in the checkpoint.",
    )
    augment: bool = option(
        True,
        "Randomly vary the trained audio tower's inputs (a delay, a mel shift and a gain; the envelope frontend "
        "undoes the delay and the gain).",
        negative=True,
    )
    ema: float = option(
        0.995,
        "Decay of an exponential moving average of the trained weights, kept and saved instead of the last step's "
        "(0: off).",
    )
    precision: BindPrecision = precision_option(
        "fp32 or bf16 autocast for the trained towers' passes in the training steps (the loss, the weights, the "
        "optimiser and the held-out metrics stay float32)."
    )
    val_manifest: str | None = option(
        None,
        "Manifest of held-out rows (another speaker, say) for the before/after metrics; then every row of MANIFEST "
        "trains.",
        kind="input",
        metavar="PATH",
    )
    val_fraction: float = option(0.1, "Without --val-manifest: share of rows held out (seeded) for the metrics.")
    workers: int = workers_option()
    device: str = device_option()
    resume: bool = resume_option("bind")
    overwrite: bool = overwrite_option("--out file")
    log_with: list[str] = log_with_option()
    log_dir: str | None = log_dir_option()


# ------------------------------------------------------------------------------------------------ evaluate


@dataclass(kw_only=True)
class EvaluateConfig(Config):
    """Every option of `ibdc evaluate`; the resolved config is part of its JSON report."""

    COMMAND: typing.ClassVar[str] = "evaluate"

    sets: list[str] = option(
        help="Synthetic set or selection (.safetensors from `ibdc condense`); several sets of one configuration "
        "(condensation seeds) give mean ± std over sets × head seeds.",
        kind="input",
        argument=True,
    )
    test: str | None = option(
        None,
        "Real test store; default: the built-in demo test store (built on first use).",
        kind="input",
        metavar="PATH",
    )
    protocol: Protocol = option(
        "linear",
        "linear (per-modality linear heads, late fusion), mlp, or convnet (ConvNets trained from scratch on an "
        "input-space set, tested on the test store's manifest), or retrieval (paired data without labels: InfoNCE "
        "projection heads, recall@1/5/10 both ways).",
    )
    seeds: int = option(3, "Training runs with different head seeds per set; reports mean ± std.")
    epochs: int | None = option(
        None, "Epochs of the fixed training schedule (default: 300 for heads, 20 for convnet, 100 for retrieval)."
    )
    train: str | None = option(
        None, "Also train on this whole real store: whole-data result and ratio.", kind="input", metavar="PATH"
    )
    checkpoint: str | None = checkpoint_option(
        "Input-space sets: the encoder checkpoint to embed them with (default: the file recorded in the set, then "
        "$IBDC_CHECKPOINT).",
        kind="input",
    )
    test_manifest: str | None = option(
        None,
        "convnet: the test store's source, a manifest, hf:DATASET or wds:SHARDS (default: the one it records).",
        kind="input",
        metavar="PATH",
    )
    train_manifest: str | None = option(
        None,
        "convnet: the --train store's source, a manifest, hf:DATASET or wds:SHARDS (default: the one it records).",
        kind="input",
        metavar="PATH",
    )
    device: str = device_option()
    precision: Precision = precision_option()


RECIPE_CONFIGS: dict[str, type[Config]] = {
    c.COMMAND: c for c in (EmbedConfig, CondenseConfig, BindConfig, EvaluateConfig, ManifestConfig)
}
# The docs page (under docs/) that carries each command's generated options table.
DOCS_PAGES = {
    "embed": "commands/embed.md",
    "condense": "commands/condense.md",
    "bind": "bind.md",
    "evaluate": "commands/evaluate.md",
    "manifest": "commands/manifest.md",
}


# ------------------------------------------------------------------------------------- config files


def read_config_file(path: str | Path, cls: type[Config]) -> dict[str, Any]:
    """The options of `cls` that FILE sets: a TOML, YAML or JSON table of option names (`dpc = 10`;
    `lambda-uni` and `lambda_uni` alike), or a synthetic set / bind checkpoint whose recorded config
    is read back. Unknown names and values of the wrong type exit 2 naming them."""
    path = Path(path)
    if not path.is_file():
        raise IbdcError(f"--config {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            values = tomllib.loads(path.read_text(encoding="utf-8"))
        elif suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        elif suffix == ".json":
            values = json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".safetensors":
            values = _recorded_config(path)
        else:
            raise IbdcError(f"--config {path}: expected a .toml, .yaml, .json or .safetensors file")
    except IbdcError:
        raise
    except Exception as exc:  # the parsers' own errors name line and column
        raise IbdcError(f"--config {path}: not valid {suffix.lstrip('.').upper()}: {exc}") from None
    if isinstance(values, dict) and set(values) == {cls.COMMAND} and isinstance(values[cls.COMMAND], dict):
        values = values[cls.COMMAND]  # a file with one [condense] table
    if not isinstance(values, dict):
        raise IbdcError(f"--config {path}: expected a table of options, not {type(values).__name__}")
    return coerce_options(values, cls, f"--config {path}")


def _recorded_config(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:
        raise IbdcError(f"--config {path}: not a readable safetensors file ({exc})") from None
    try:
        record = json.loads(metadata.get("ibdc", "{}"))
    except json.JSONDecodeError:
        record = {}
    if isinstance(record, dict) and isinstance(record.get("config"), dict):
        return record["config"]
    raise IbdcError(f"--config {path}: this file records no ibdc config (made by an older ibdc?)")


def coerce_options(values: dict[str, Any], cls: type[Config], where: str) -> dict[str, Any]:
    """`values` by field name, each of its field's type (ints where floats are wanted are floats)."""
    known = {f.name: f for f in fields(cls)}
    result = {}
    for raw_name, value in values.items():
        name = str(raw_name).replace("-", "_")
        if name not in known:
            raise IbdcError(f"{where}: unknown option {raw_name!r} for ibdc {cls.COMMAND}")
        f = known[name]
        want = base_type(f, cls)
        if value is None:
            result[name] = None
            continue
        if want is list:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif want is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif want is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, want)
        if not ok:
            raise IbdcError(f"{where}: {flag_of(f)} must be {want.__name__}, not {value!r}")
        result[name] = value
    return result


def resolve(cls: type[Config], file_values: dict[str, Any], given: dict[str, Any]) -> Config:
    """The config a command runs: the defaults < the preset (condense) < --config FILE < the command line."""
    merged = {**file_values, **given}
    missing = [f for f in fields(cls) if _default_of(f) is MISSING and merged.get(f.name) is None]
    if missing:
        names = ", ".join(f.name.upper() if f.metadata["argument"] else flag_of(f) for f in missing)
        raise IbdcError(f"ibdc {cls.COMMAND}: missing {names} (give it on the command line or in --config FILE)")
    if cls is CondenseConfig:
        return CondenseConfig.from_preset(merged.pop("preset", None), **merged)
    return cls(**merged)


def dump_toml(values: dict[str, Any]) -> str:
    """A flat TOML table (options left unset, None, are written as comments)."""
    import tomli_w

    present = {k: v for k, v in values.items() if v is not None}
    text = tomli_w.dumps(present)
    unset = [f"# {k} (unset)" for k, v in values.items() if v is None]
    return text + ("\n".join(unset) + "\n" if unset else "")


# -------------------------------------------------------------------------------- command lines, docs


def command_line(config: Config, defaults: Config | None = None, *, skip: tuple[str, ...] = ()) -> str:
    """The `ibdc COMMAND` line that runs `config` (options at the value of `defaults` omitted)."""
    cls = type(config)
    defaults = defaults if defaults is not None else None
    parts = ["ibdc", cls.COMMAND]
    for f in fields(config):
        if f.name in skip:
            continue
        value = getattr(config, f.name)
        if f.metadata["argument"]:
            if value is not None:
                parts += [str(v) for v in value] if isinstance(value, list) else [str(value)]
            continue
        default = getattr(defaults, f.name) if defaults is not None else _default_of(f)
        if value == default or value is None:
            continue
        if isinstance(value, bool):
            parts.append(flag_of(f) if value else "--no-" + flag_of(f).removeprefix("--"))
        elif isinstance(value, list):
            parts += [flag_of(f), ",".join(value)]
        else:
            parts += [flag_of(f), str(value)]
    return " ".join(parts)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def options_table(cls: type[Config]) -> str:
    """The Markdown table of a command's options, as docs/commands/COMMAND.md carries it."""
    lines = ["| option | default | choices | what it does |", "| --- | --- | --- | --- |"]
    for f in fields(cls):
        if f.metadata["hidden"]:
            continue
        name = flag_of(f).upper().lstrip("-") if f.metadata["argument"] else flag_of(f)
        if f.metadata["short"]:
            name += f"/{f.metadata['short']}"
        if f.metadata["negative"]:
            name += f"/--no-{flag_of(f).removeprefix('--')}"
        default = _default_of(f)
        shown = "required" if default is MISSING else _shown(default)
        allowed = ", ".join(f"`{c}`" for c in choices_of(f, cls))
        lines.append(f"| `{name}` | {shown} | {allowed} | {f.metadata['help'].replace('|', '/')} |")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return f"`{','.join(value)}`" if value else "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"`{value}`"


DOCS_BEGIN = "<!-- options: generated from ibdc_cli/config.py by `python -m ibdc_cli.config --docs`; do not edit -->"
DOCS_END = "<!-- /options -->"


def docs_with_table(text: str, cls: type[Config]) -> str:
    """`text` (a docs page) with its generated options table replaced by the current one."""
    start, end = text.index(DOCS_BEGIN), text.index(DOCS_END)
    return text[: start + len(DOCS_BEGIN)] + "\n\n" + options_table(cls) + "\n\n" + text[end:]


def main() -> None:
    """`python -m ibdc_cli.config --docs`: rewrite the option tables of docs/commands/*.md."""
    import sys

    if sys.argv[1:] != ["--docs"]:
        raise SystemExit("usage: python -m ibdc_cli.config --docs")
    docs = Path(__file__).resolve().parents[1] / "docs"
    for command, cls in RECIPE_CONFIGS.items():
        page = docs / DOCS_PAGES[command]
        page.write_text(docs_with_table(page.read_text(), cls))
        print(f"wrote the options table of docs/{DOCS_PAGES[command]}")


if __name__ == "__main__":
    main()
