"""A synthetic set (or selection) as one typed object: its file's tensors and metadata, read once.

`ibdc condense` writes a set as one .safetensors file (`store.save_synthetic_set`): a tensor per
modality (`[M, D]` embeddings, or `[M, *input shape]` model inputs for `--space input`), `labels` `[M]`,
the space maps (`center.<m>` `[D]`, `whiten.<m>` `[D, D]`), and JSON metadata. Every reader (evaluate,
inspect, export) goes through `SyntheticSet`: the metadata's keys are named once, here, and so is the one
check of a set against a real store (`check_against`).

Example::

    synthetic = SyntheticSet.load("syn.safetensors")
    synthetic.method, synthetic.dpc, synthetic.modalities     # 'imagebinddc', 10, ['audio', 'image']
    synthetic.check_against(open_store("stores/test"))         # IbdcError naming what differs
    embeddings = synthetic.embeddings()                        # {m: [M, D]}, in the set's space
    mine = synthetic.map("audio", my_audio_embeddings)         # [N, D] -> [N, D], in the set's space too
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ibdc_cli.encoders.imagebind import Encoder, build_model, load_encoder, resolve_checkpoint, same_encoder
from ibdc_cli.errors import IbdcError
from ibdc_cli.runtime import autocast
from ibdc_cli.space import SpaceMap, invert_embeddings, map_embeddings, space_maps_of_set
from ibdc_cli.store import Store, file_sha256, load_synthetic_set

EMBED_BATCH = 64  # model inputs embedded per forward pass


@dataclass
class SyntheticSet:
    """A synthetic set read from `path`: `tensors` (modalities, `labels`, space maps) and `metadata`."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> SyntheticSet:
        """Read and check a set's file (`store.load_synthetic_set`); foreign or damaged files raise IbdcError."""
        tensors, metadata = load_synthetic_set(path)
        return cls(Path(path), tensors, metadata)

    @property
    def modalities(self) -> list[str]:
        return list(self.metadata["modalities"])

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    @property
    def labels(self) -> torch.Tensor:
        """`[M]` class ids into `class_names`, as stored (`check_against` checks that they are)."""
        return self.tensors["labels"]

    @property
    def space_maps(self) -> dict[str, SpaceMap]:
        """The maps the set was condensed in, per modality (a modality without `center.<m>` has none)."""
        return space_maps_of_set(self.tensors, self.modalities)

    @property
    def encoder(self) -> dict[str, Any]:
        """The recorded encoder (`Encoder.describe`: preset, weights, seed, out_dim, ...)."""
        return dict(self.metadata["encoder"])

    @property
    def tensor_spaces(self) -> dict[str, str]:
        """`{m: "embedding" | "input"}`: what each modality's tensor holds (older sets: embeddings)."""
        return dict(self.metadata.get("tensor_spaces", {}))

    @property
    def method(self) -> str | None:
        return self.metadata.get("method")

    @property
    def dpc(self) -> int | None:
        return self.metadata.get("dpc")

    @property
    def settings(self) -> dict[str, Any]:
        """The condense settings the set was made with."""
        return dict(self.metadata.get("settings", {}))

    def input_modalities(self, modalities: list[str] | None = None) -> list[str]:
        """Those of `modalities` (default: all) whose tensors are model inputs (`--space input`)."""
        spaces = self.tensor_spaces
        return [m for m in (self.modalities if modalities is None else modalities) if spaces.get(m) == "input"]

    # ------------------------------------------------------------------------------------- checks

    def check_against(
        self,
        store: Store,
        modalities: list[str] | None = None,
        *,
        what: str | Path | None = None,
        fix: str | None = None,
    ) -> None:
        """Raise IbdcError unless the set and `store` can be used together on `modalities` (default: all).

        Both come from the same encoder (`same_encoder`), both hold every modality, the set's embedding
        rows are `[M, D]` with the store's D, every modality has one row per label, and the labels are
        class ids. `what` names the set in the encoder message (default: its path); `fix` is appended to
        it (what the user should do).
        """
        modalities = self.modalities if modalities is None else modalities
        what = self.path if what is None else what
        if not same_encoder(self.encoder, store.encoder):
            mine, theirs = self.encoder, store.encoder
            message = (
                f"{what} and store {store.path} come from different encoders "
                f"({mine.get('preset')}/{str(mine.get('weights'))[:12]} vs "
                f"{theirs.get('preset')}/{str(theirs.get('weights'))[:12]}, dims "
                f"{mine.get('out_dim')} vs {theirs.get('out_dim')})"
            )
            raise IbdcError(f"{message}; {fix}" if fix else message)
        missing = [m for m in modalities if m not in store.modalities]
        if missing:
            raise IbdcError(
                f"store {store.path} has no {missing[0]!r} embeddings (it has: {', '.join(store.modalities)})"
            )
        self._check_holds(modalities)
        inputs = self.input_modalities(modalities)
        labels = self.labels
        for m in modalities:
            x = self.tensors[m]
            if m not in inputs and (x.ndim != 2 or x.shape[1] != store.modalities[m]):
                raise IbdcError(
                    f"{self.path}: its {m!r} rows have shape {tuple(x.shape)}, but store {store.path} has "
                    f"dimension {store.modalities[m]}"
                )
            if x.shape[0] != labels.shape[0]:
                raise IbdcError(f"{self.path}: {x.shape[0]} {m!r} rows but {labels.shape[0]} labels")
        classes = len(self.class_names)
        if labels.ndim != 1 or labels.is_floating_point() or bool(((labels < 0) | (labels >= classes)).any()):
            raise IbdcError(f"{self.path}: its labels must be class ids 0..{classes - 1} (one per row)")

    def _check_holds(self, modalities: list[str]) -> None:
        missing = [m for m in modalities if m not in self.tensors]
        if missing:
            raise IbdcError(f"synthetic set {self.path} has no {missing[0]!r} (it has: {', '.join(self.modalities)})")

    def store_class_ids(self, store: Store, labels: torch.Tensor) -> torch.Tensor:
        """A store's `labels` `[N]` as this set's class ids `[N]`, matched by class name."""
        if not store.index.get("labeled", bool(store.class_names)):
            raise IbdcError(
                f"store {store.path} has no labels, and the set's accuracy needs them (for paired data without "
                "labels use --protocol retrieval)"
            )
        class_names = self.class_names
        unknown = [n for n in store.class_names if n not in class_names]
        if unknown:
            raise IbdcError(f"store {store.path} has class {unknown[0]!r}, which the synthetic set does not have")
        mapping = torch.tensor([class_names.index(n) for n in store.class_names], dtype=torch.long)
        return mapping[labels.long()]

    # ------------------------------------------------------------------------------- the space

    def map(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """`[N, D]` embeddings of `modality` (made by the set's encoder) mapped into the set's space.

        That is the space the set's rows live in and its heads are trained in: `ibdc evaluate` maps a
        test store's rows this way (`center.<m>`, `whiten.<m>`: `space.map_embeddings`), so a head trained
        on `tensors[modality]` and `labels` classifies `map(modality, x)`. `x` is a tensor or an array;
        the result is float32, one unit row per row of `x`.
        """
        self._check_holds([modality])
        x = torch.as_tensor(x)
        if x.ndim != 2 or not x.is_floating_point():
            raise IbdcError(
                f"{modality} embeddings to map must be one [N, D] float matrix, not {x.dtype} {tuple(x.shape)}"
            )
        dim = self.embedding_dim(modality)
        if dim is not None and x.shape[1] != dim:
            raise IbdcError(f"{modality} embeddings have dimension {x.shape[1]}, but the set's are {dim}-dimensional")
        if not bool(torch.isfinite(x).all()):
            raise IbdcError(f"the {modality} embeddings to map hold NaN or Inf")
        return map_embeddings(x.float(), self.space_maps.get(modality))

    def embedding_dim(self, modality: str) -> int | None:
        """D of `modality`'s embeddings: its rows' width, or (model inputs) its space map's, else the encoder's."""
        if modality not in self.input_modalities([modality]):
            return int(self.tensors[modality].shape[-1])
        space_map = self.space_maps.get(modality)
        return int(space_map.center.shape[0]) if space_map is not None else self.encoder.get("out_dim")

    def encoder_norm(self, modality: str) -> float:
        """The norm of the encoder's `modality` embeddings: 1 where the encoder record says it unit-normalises
        (ibdc's ImageBind presets), else the space map's record of it (`SpaceMap.encoder_norm`; 1 without)."""
        space_map = self.space_maps.get(modality)
        if self.encoder.get("normalized") or space_map is None:
            return 1.0
        return space_map.encoder_norm()

    def encoder_rows(self, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The set's embedding rows of `modality` mapped back into the encoder's own space: `[M, D]` rows
        `x` of norm `encoder_norm(modality)` with `map(modality, x) == tensors[modality]`, and `[M]` bool,
        which rows have such an x (others are NaN). See `SpaceMap.invert` for the maths and its limits."""
        self._check_holds([modality])
        if modality in self.input_modalities([modality]):
            raise IbdcError(f"{self.path}: its {modality!r} rows are model inputs, not embeddings")
        y = self.tensors[modality].float()
        return invert_embeddings(y, self.space_maps.get(modality), self.encoder_norm(modality))

    # ------------------------------------------------------------------------------- embeddings

    def embeddings(
        self,
        modalities: list[str] | None = None,
        *,
        checkpoint: str | Path | None = None,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
    ) -> dict[str, torch.Tensor]:
        """`{m: [M, D]}`: the set's rows of `modalities` (default: all) in the space it was condensed in.

        Embedding-space tensors are already there; model inputs (pixels, fbanks) are embedded by the
        recorded encoder (`recorded_encoder`, on `device` under `precision`'s autocast) and mapped by the
        set's space maps, as a real store's embeddings are.
        """
        modalities = self.modalities if modalities is None else modalities
        self._check_holds(modalities)
        features = {m: self.tensors[m] for m in modalities}
        inputs = self.input_modalities(modalities)
        if inputs:
            features.update(self._embed_inputs(inputs, checkpoint, device, precision))
        return features

    @torch.no_grad()
    def _embed_inputs(self, modalities, checkpoint, device, precision) -> dict[str, torch.Tensor]:
        encoder = self.recorded_encoder(checkpoint).to(device)
        space_maps = self.space_maps
        features = {}
        for m in modalities:
            x = self.tensors[m]
            chunks = []
            for i in range(0, len(x), EMBED_BATCH):
                with autocast(torch.device(device), precision):
                    chunks.append(encoder.embed(m, x[i : i + EMBED_BATCH].to(device)).float().cpu())
            features[m] = map_embeddings(torch.cat(chunks), space_maps.get(m))
        return features

    def recorded_encoder(self, checkpoint: str | Path | None = None) -> Encoder:
        """The encoder recorded in the metadata (preset, seed, checkpoint SHA-256). Its checkpoint is
        `checkpoint`, else the file recorded in the settings, else `$IBDC_CHECKPOINT`."""
        recorded, path = self.encoder, self.path
        if recorded.get("weights") == "random-init":
            seed = recorded.get("seed") or 0
            encoder = Encoder(build_model(recorded["preset"], seed), recorded["preset"], None, seed)
        else:
            sha = str(recorded.get("weights"))
            file = resolve_checkpoint(checkpoint or self.settings.get("checkpoint"))
            if file is None or not file.is_file():
                raise IbdcError(
                    f"{path} holds model inputs of encoder checkpoint sha256 {sha[:12]}…, whose file "
                    f"{file or '(none recorded)'} is missing; pass it with --checkpoint PATH"
                )
            if file_sha256(file) != sha:
                raise IbdcError(
                    f"checkpoint {file} is not the encoder {path} was made with (sha256 {file_sha256(file)[:12]}… "
                    f"vs {sha[:12]}…); pass the right file with --checkpoint PATH"
                )
            encoder = load_encoder(recorded["preset"], checkpoint=file)
        if not same_encoder(encoder.describe(), recorded):
            raise IbdcError(f"the encoder recorded in {path} cannot be rebuilt ({recorded})")
        return encoder
