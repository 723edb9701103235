"""ImageBind adapter: Meta's model code (PyPI `imagebind-unofficial`), presets and checkpoint loading.

`import imagebind` runs the package's `__init__`, which imports `imagebind.data`; that module needs
`pkg_resources` and `torchvision.transforms.functional_tensor` (removed from torchvision), neither of
which the model needs. We register an empty parent package whose `__path__` points at the installed
files, so `imagebind.models.*` import on their own and `imagebind.data` is never executed. This is the
only place in ibdc that touches the workaround.

Presets are data (a name -> `ImageBindModel` keyword arguments), in the spirit of open_clip's configs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ibdc_cli.encoders.frontends import FRONTENDS, apply_frontend
from ibdc_cli.errors import IbdcError
from ibdc_cli.store import file_sha256

# ibdc's modality names -> ImageBind's ModalityType keys.
MODALITY_KEYS = {"image": "vision", "audio": "audio", "text": "text", "depth": "depth", "thermal": "thermal"}
MODALITIES = tuple(MODALITY_KEYS)

PRESETS: dict[str, dict[str, Any]] = {
    # The published model (Girdhar et al., 2023): out dim 1024. Weights only from a local checkpoint.
    "imagebind_huge": dict(
        vision_embed_dim=1280,
        vision_num_blocks=32,
        vision_num_heads=16,
        text_embed_dim=1024,
        text_num_blocks=24,
        text_num_heads=16,
        out_embed_dim=1024,
        audio_drop_path=0.1,
        imu_drop_path=0.7,
    ),
    # Same ImageBindModel class with small widths/depths: random-init from a seed, for CPU, tests, demos.
    "imagebind_tiny": dict(
        out_embed_dim=256,
        vision_embed_dim=128,
        vision_num_blocks=2,
        vision_num_heads=4,
        text_embed_dim=128,
        text_num_blocks=2,
        text_num_heads=4,
        audio_embed_dim=128,
        audio_num_blocks=2,
        audio_num_heads=4,
        audio_drop_path=0.0,
        depth_embed_dim=128,
        depth_num_blocks=2,
        depth_num_heads=4,
        thermal_embed_dim=128,
        thermal_num_blocks=2,
        thermal_num_heads=4,
        imu_embed_dim=64,
        imu_num_blocks=1,
        imu_num_heads=2,
        imu_drop_path=0.0,
    ),
}

# Presets that ship no usable random weights by default: a checkpoint or an explicit --random-init.
NEEDS_WEIGHTS = {"imagebind_huge"}
CHECKPOINT_ENV = "IBDC_CHECKPOINT"
# Tensors of a bound checkpoint (`ibdc bind`) that are ours, not the model's.
CENTER_PREFIX = "ibdc.center."
WHITEN_PREFIX = "ibdc.whiten."


def _install_import_workaround() -> None:
    if "imagebind" in sys.modules:
        return
    spec = importlib.util.find_spec("imagebind")
    if spec is None or not spec.submodule_search_locations:
        raise IbdcError("the ImageBind model code is not installed: pip install imagebind-unofficial")
    package = types.ModuleType("imagebind")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    sys.modules["imagebind"] = package


def imagebind_model_module():
    """Return `imagebind.models.imagebind_model` without running `imagebind/__init__.py`."""
    _install_import_workaround()
    from imagebind.models import imagebind_model

    return imagebind_model


def bpe_path() -> Path:
    _install_import_workaround()
    return Path(sys.modules["imagebind"].__path__[0]) / "bpe" / "bpe_simple_vocab_16e6.txt.gz"


@lru_cache(maxsize=1)
def tokenizer():
    """ImageBind's BPE tokenizer (77-token context, longer texts are truncated)."""
    _install_import_workaround()
    from imagebind.models.multimodal_preprocessors import SimpleTokenizer

    return SimpleTokenizer(bpe_path=str(bpe_path()))


@dataclass
class Encoder:
    """A frozen ImageBind model plus what identifies it in stores and synthetic sets.

    `embed(modality, x)` returns unit-norm embeddings `[B, D]`: ImageBind's own outputs carry logit
    scales (audio x20, depth x5, ...) and clip averaging, so they are re-normalised here.
    """

    model: torch.nn.Module
    preset: str
    checkpoint: str | None  # SHA-256 of the checkpoint file, None for random init
    seed: int
    centers: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> [D], subtracted
    whiteners: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> [D, D], applied after
    frontends: dict[str, str] = field(default_factory=dict)  # modality -> input transform (`encoders.frontends`)

    @property
    def out_dim(self) -> int:
        return int(PRESETS[self.preset]["out_embed_dim"])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        """The encoder as recorded in store indexes and synthetic-set metadata."""
        return {
            "preset": self.preset,
            "checkpoint_sha256": self.checkpoint,
            "weights": self.checkpoint or "random-init",
            "seed": None if self.checkpoint else self.seed,
            "out_dim": self.out_dim,
            "normalized": True,
            **({"frontends": dict(self.frontends)} if self.frontends else {}),
        }

    def to(self, device: torch.device | str) -> Encoder:
        self.model.to(device)
        self.centers = {k: v.to(device) for k, v in self.centers.items()}
        self.whiteners = {k: v.to(device) for k, v in self.whiteners.items()}
        return self

    def forward_raw(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """ImageBind's output for one modality, not normalised; the input goes through the modality's
        frontend first, and the output is centred and whitened, where the checkpoint says so (a bound
        encoder's audio: `envelope(x)`; its anchor: `(out - center) @ whitener`)."""
        key = MODALITY_KEYS[modality]
        if modality in self.frontends:
            x = apply_frontend(modality, self.frontends[modality], x)
        out = self.model({key: x})[key]
        if modality in self.centers:
            out = out - self.centers[modality].to(out.dtype)
        if modality in self.whiteners:
            out = out @ self.whiteners[modality].to(out.dtype)
        return out

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings `[B, D]` of a preprocessed batch (see `ibdc_cli.data.preprocess`)."""
        return F.normalize(self.forward_raw(modality, x).float(), dim=-1)


def same_encoder(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two recorded encoders (see `Encoder.describe`) produce the same embedding space."""
    keys = ("preset", "weights", "seed", "out_dim")
    return all(a.get(k) == b.get(k) for k in keys)


def build_model(preset: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised `ImageBindModel` of `preset`; the same seed gives the same weights."""
    if preset not in PRESETS:
        raise IbdcError(f"unknown model preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    module = imagebind_model_module()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = module.ImageBindModel(**PRESETS[preset])
    return model.eval().requires_grad_(False)


def resolve_checkpoint(checkpoint: str | Path | None) -> Path | None:
    """`--checkpoint` if given, else `$IBDC_CHECKPOINT`, else None."""
    value = checkpoint if checkpoint not in (None, "") else os.environ.get(CHECKPOINT_ENV) or None
    return Path(value).expanduser() if value else None


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict and metadata of a `.pth` (Meta's format; loaded with weights_only) or `.safetensors`."""
    if not path.is_file():
        raise IbdcError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                state = {k: handle.get_tensor(k) for k in handle.keys()}
            return state, metadata
        state = torch.load(path, map_location="cpu", weights_only=True)
    except IbdcError:
        raise
    except Exception as exc:  # corrupt, truncated or foreign files
        raise IbdcError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {exc}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise IbdcError(f"checkpoint {path} is not a state dict of tensors")
    return state, {}


def load_encoder(
    preset: str = "imagebind_tiny",
    *,
    checkpoint: str | Path | None = None,
    random_init: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Encoder:
    """Build a frozen ImageBind encoder.

    Weights come from `checkpoint` (or `$IBDC_CHECKPOINT`); without one, `imagebind_huge` needs
    `random_init=True` (there is never a silent download), small presets are random-init from `seed`.

    >>> enc = load_encoder("imagebind_tiny", seed=0)
    >>> enc.embed("text", text_tokens).shape   # [B, 256]
    """
    path = resolve_checkpoint(checkpoint)
    if path is None and preset in NEEDS_WEIGHTS and not random_init:
        raise IbdcError(
            f"{preset} needs pretrained weights: pass --checkpoint PATH or set {CHECKPOINT_ENV}=PATH "
            "(imagebind_huge.pth as Meta publishes it), or --random-init to use random weights"
        )
    model = build_model(preset, seed)
    centers: dict[str, torch.Tensor] = {}
    whiteners: dict[str, torch.Tensor] = {}
    frontends: dict[str, str] = {}
    sha = None
    if path is not None:
        state, metadata = read_checkpoint(path)
        recorded = metadata.get("ibdc")
        if recorded:
            try:
                recorded = json.loads(recorded)
                recorded_preset = recorded.get("preset")
            except (json.JSONDecodeError, AttributeError):
                raise IbdcError(f"checkpoint {path}: its 'ibdc' metadata is not ibdc's JSON (damaged?)") from None
            frontends = _recorded_frontends(recorded.get("frontends"), path)
            if recorded_preset != preset:
                raise IbdcError(
                    f"checkpoint {path} was made for preset {recorded_preset!r}, not {preset!r} (use --model)"
                )
        centers = {k[len(CENTER_PREFIX) :]: v for k, v in state.items() if k.startswith(CENTER_PREFIX)}
        whiteners = {k[len(WHITEN_PREFIX) :]: v for k, v in state.items() if k.startswith(WHITEN_PREFIX)}
        state = {k: v for k, v in state.items() if not k.startswith((CENTER_PREFIX, WHITEN_PREFIX))}
        _load_state(model, state, path, preset)
        sha = file_sha256(path)
    encoder = Encoder(
        model=model,
        preset=preset,
        checkpoint=sha,
        seed=seed,
        centers=centers,
        whiteners=whiteners,
        frontends=frontends,
    )
    return encoder.to(device)


def _recorded_frontends(value: Any, path: Path) -> dict[str, str]:
    """A checkpoint's `"frontends"` metadata (modality -> frontend name), checked against `FRONTENDS`."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise IbdcError(f"checkpoint {path}: its 'frontends' metadata is not a mapping of modality to name")
    for modality, name in value.items():
        if name not in FRONTENDS.get(modality, {}):
            known = ", ".join(FRONTENDS.get(modality, {})) or "none"
            raise IbdcError(
                f"checkpoint {path}: unknown {modality} frontend {name!r} (this ibdc knows: {known}); "
                "was it made by a newer ibdc?"
            )
    return dict(value)


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, preset: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        details = []
        if wrong:
            k = wrong[0]
            details.append(
                f"{len(wrong)} tensors of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
            )
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise IbdcError(f"checkpoint {path} does not match preset {preset}: " + "; ".join(details))
    model.load_state_dict(state)
