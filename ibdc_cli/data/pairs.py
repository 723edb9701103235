"""Paired rows in memory, for binding: every row decoded once, the frozen anchor tower run once.

`load_rows` returns a dict that the training loss and the held-out metrics index by row: the anchor's
raw outputs of every row, and per other modality the model inputs of the rows that have it.

Example::

    has = present_cells(manifest, ["image", "audio"], "image")
    data = load_rows(encoder, manifest, ["image", "audio"], "image", has, 64, 2, torch.device("cpu"))
    data["anchor_raw"]                               # [N, D]
    inputs_of(data, "audio", rows_of(data, "audio", torch.arange(8)))   # [B, 3, 1, 128, 204]
"""

from __future__ import annotations

from typing import Any

import torch

from ibdc_cli.data.manifest import Manifest
from ibdc_cli.data.rows import batch_error, row_loader
from ibdc_cli.encoders.imagebind import Encoder
from ibdc_cli.runtime import log, progress_bar


def load_rows(
    encoder: Encoder,
    manifest: Manifest,
    modalities: list[str],
    anchor: str,
    has: dict[str, list[bool]],
    batch_size: int,
    workers: int,
    device: torch.device,
) -> dict[str, Any]:
    """Decode every row once (DataLoader workers) and run the frozen anchor tower over it.

    Returns `anchor_raw` `[N, D]` (the anchor's raw outputs, on the CPU) and, per other modality m,
    `inputs.m` `[N_m, *input shape]` (model inputs of the rows that have m, in row order) and `slot.m`
    `[N]` int64 (row -> index into `inputs.m`, -1 where the row has no m cell).
    """
    loader = row_loader(manifest, list(range(len(manifest.rows))), modalities, batch_size, workers)
    bound = [m for m in modalities if m != anchor]
    anchor_raw: list[torch.Tensor] = []
    inputs: dict[str, list[torch.Tensor]] = {m: [] for m in bound}
    encoder.model.eval()
    with progress_bar(f"decode rows, embed {anchor}", len(manifest.rows)) as advance:
        for batch in loader:
            if batch["errors"]:
                raise batch_error(manifest, *batch["errors"][0])
            x = batch["inputs"][anchor].to(device)  # every row has the anchor (`present_cells`)
            # no_grad, not inference_mode: these tensors later meet trainable ones in autograd
            with torch.no_grad():
                anchor_raw.append(encoder.forward_raw(anchor, x).float().cpu())
            for m in bound:
                if m in batch["inputs"]:
                    inputs[m].append(batch["inputs"][m])
            advance(len(batch["rows"]))
    data: dict[str, Any] = {"anchor_raw": torch.cat(anchor_raw)}
    for m in bound:
        present = torch.tensor(has[m])
        slot = torch.full((len(present),), -1, dtype=torch.int64)
        slot[present] = torch.arange(int(present.sum()))
        data[f"inputs.{m}"] = one_clip_if_repeated(torch.cat(inputs[m]), m)
        data[f"slot.{m}"] = slot
    return data


def one_clip_if_repeated(x: torch.Tensor, modality: str) -> torch.Tensor:
    """`x` `[N, S, ...]` cut to its first clip when every row's S clips are equal, else `x` unchanged.

    ImageBind embeds a clip-split input (audio: 3 clips of 2 s) as the mean of its clips' embeddings, so
    equal clips embed exactly as one does. Recordings shorter than a clip (spoken digits: under a
    second) give S equal, zero-padded clips: training on one of them costs a third of the time.
    """
    if x.ndim < 5 or x.shape[1] < 2 or not bool((x == x[:, :1]).all()):
        return x
    log(f"{modality}: every row's {x.shape[1]} clips are equal (short recordings); training on one")
    return x[:, :1].contiguous()


def rows_of(data: dict[str, Any], modality: str, rows: torch.Tensor) -> torch.Tensor:
    """The subset of `rows` `[B]` that have a `modality` cell."""
    return rows[data[f"slot.{modality}"][rows] >= 0]


def inputs_of(data: dict[str, Any], modality: str, rows: torch.Tensor) -> torch.Tensor:
    """Model inputs `[B, *input shape]` of `rows` (all of which have a `modality` cell)."""
    return data[f"inputs.{modality}"][data[f"slot.{modality}"][rows]]
