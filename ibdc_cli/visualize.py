"""Pictures for `ibdc inspect --plot`: real vs synthetic embeddings in 2-D, and the loss curves.

For a synthetic set, one panel per modality shows the real embeddings of its source store (small dots,
at most `per_class` per class) and the synthetic rows (big markers with black edges, as in the paper's
Fig. 6), both coloured by class and in the space the set was condensed in (its recorded space maps,
`center.<m>` / `whiten.<m>`, see ibdc_cli/space.py); a last panel shows the loss history per term.
Input-space rows (pixels, fbanks) are embedded with the encoder recorded in the set first. For a store,
one panel per modality shows its embeddings coloured by class.

The projection is PCA fitted on the real rows (so the axes describe the data, and synthetic rows are
placed in them), or t-SNE fitted on real and synthetic rows together.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ibdc_cli.errors import IbdcError  # noqa: E402
from ibdc_cli.evaluate import set_class_ids  # noqa: E402
from ibdc_cli.space import SpaceMap, map_embeddings, space_maps_of_set  # noqa: E402
from ibdc_cli.store import Store, atomic_write_bytes, load_synthetic_set, open_store  # noqa: E402

PROJECTIONS = ("pca", "tsne")
PROJECTION_NAMES = {"pca": "PCA", "tsne": "t-SNE"}
PANEL_INCHES = (4.6, 4.2)  # width, height of one panel
DPI = 110
MAX_LEGEND_CLASSES = 20


# ----------------------------------------------------------------------------------------------------
# public entry points


def plot_synthetic_set(
    path: str | Path,
    out: str | Path,
    *,
    real: str | Path | None = None,
    projection: str = "pca",
    per_class: int = 200,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Draw a synthetic set against its real store and write the PNG `out`.

    `real`: the real store (default: `source_store.path` in the set's metadata). `per_class`: at most this
    many real rows per class are drawn. `checkpoint`: encoder weights for input-space sets whose
    recorded checkpoint path moved. Returns a JSON-ready summary of what was drawn.
    """
    _check_options(out, projection, per_class, overwrite)
    path = Path(path)
    tensors, meta = load_synthetic_set(path)
    store = _real_store(path, meta, real)
    modalities = list(meta["modalities"])
    _check_same_encoder(meta, store, modalities, path)
    class_names = list(meta["class_names"])
    synthetic = synthetic_embeddings(tensors, meta, path, checkpoint=checkpoint)
    space_maps = space_maps_of_set(tensors, modalities)
    real_features, real_labels = real_embeddings(store, modalities, class_names, space_maps, per_class, seed)
    syn_labels = tensors["labels"].long().numpy()

    history = {term: values for term, values in meta.get("loss_history", {}).items() if values}
    panels = [*modalities, "loss"] if history else modalities  # a selection has no loss curves
    selection = meta.get("kind") == "selection"
    figure, axes = _figure(len(panels))
    colours = class_colours(len(class_names))
    for ax, modality in zip(axes, modalities, strict=False):
        real_xy, syn_xy, axis_names = project(
            real_features[modality].numpy(), synthetic[modality].numpy(), projection, seed
        )
        ax.scatter(
            real_xy[:, 0],
            real_xy[:, 1],
            c=_colour_of(real_labels, colours),
            s=9,
            alpha=0.45,
            linewidths=0,
            rasterized=True,
        )
        ax.scatter(
            syn_xy[:, 0], syn_xy[:, 1], c=colours[syn_labels], s=110, marker="o", edgecolors="black", linewidths=1.3
        )
        space = meta.get("tensor_spaces", {}).get(modality, "embedding")
        mapped = f", {meta.get('space_map', 'center')} map" if modality in space_maps else ""
        ax.set_title(f"{modality} ({synthetic[modality].shape[1]}-d, {space} space{mapped})")
        ax.set_xlabel(axis_names[0])
        ax.set_ylabel(axis_names[1])
    if history:
        plot_loss_history(axes[len(modalities)], history)
    _hide_unused(axes, len(panels))
    rows_name = "selected real rows" if selection else "synthetic rows"
    _legend(figure, class_names, colours, synthetic_label=rows_name.removesuffix("s"))
    figure.suptitle(
        f"{path.name}: {meta.get('method')}, DPC {meta.get('dpc')}, {meta.get('space')} space"
        f"{' (a selection: no loss curves)' if selection else ''}\n"
        f"dots: real rows of {store.path.name}; big markers with black edges: {rows_name}; "
        f"{PROJECTION_NAMES[projection]}",
        fontsize=10,
    )
    save_png(figure, Path(out))
    return {
        "plot": str(out),
        "projection": projection,
        "panels": panels,
        "real_store": str(store.path),
        "real_rows": int(len(real_labels)),
        "synthetic_rows": int(len(syn_labels)),
        "size": list(figure_size_pixels(len(panels))),
    }


def plot_store(
    path: str | Path,
    out: str | Path,
    *,
    projection: str = "pca",
    per_class: int = 200,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Draw a store's embeddings per modality in 2-D, coloured by class, and write the PNG `out`."""
    _check_options(out, projection, per_class, overwrite)
    store = open_store(path)
    modalities = list(store.modalities)
    data = store.load(modalities)
    labelled = bool(store.class_names)
    labels = data["labels"].long() if labelled else torch.zeros(len(data["row"]), dtype=torch.long)
    keep = subsample_per_class(labels, per_class if labelled else per_class * 10, seed)
    class_names = store.class_names if labelled else ["all rows"]
    colours = class_colours(len(class_names))

    figure, axes = _figure(len(modalities))
    for ax, modality in zip(axes, modalities, strict=False):
        xy, _, axis_names = project(data[modality][keep].numpy(), None, projection, seed)
        ax.scatter(xy[:, 0], xy[:, 1], c=colours[labels[keep].numpy()], s=12, alpha=0.7, linewidths=0, rasterized=True)
        ax.set_title(f"{modality} ({store.modalities[modality]}-d)")
        ax.set_xlabel(axis_names[0])
        ax.set_ylabel(axis_names[1])
    _hide_unused(axes, len(modalities))
    _legend(figure, class_names, colours)
    preset = store.encoder.get("preset")
    figure.suptitle(
        f"store {store.path.name}: {len(keep)} of {store.num_rows} rows, {preset}, {PROJECTION_NAMES[projection]}",
        fontsize=11,
    )
    save_png(figure, Path(out))
    return {
        "plot": str(out),
        "projection": projection,
        "panels": modalities,
        "rows": len(keep),
        "size": list(figure_size_pixels(len(modalities))),
    }


# ----------------------------------------------------------------------------------------------------
# data: real and synthetic embeddings in the same space


def synthetic_embeddings(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: str | Path, *, checkpoint: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """`{m: [M, D]}` float32: the set's rows in the space it was condensed in.

    Embedding-space tensors are already there; input-space tensors (pixels, fbanks) are embedded with the
    set's recorded encoder and mapped by its space maps, exactly as `ibdc evaluate` does.
    """
    from ibdc_cli.evaluate import embed_synthetic_inputs

    spaces = meta.get("tensor_spaces", {})
    inputs = [m for m in meta["modalities"] if spaces.get(m) == "input"]
    features = {m: tensors[m] for m in meta["modalities"] if m not in inputs}
    if inputs:
        features.update(embed_synthetic_inputs(tensors, meta, inputs, path, checkpoint))
    return {m: features[m].float().cpu() for m in meta["modalities"]}


def real_embeddings(
    store: Store,
    modalities: list[str],
    class_names: list[str],
    space_maps: dict[str, SpaceMap],
    per_class: int,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """At most `per_class` real rows per class, `{m: [N, D]}` mapped like the synthetic set, and their
    labels `[N]` as the set's class ids (matched by class name; -1 for a store without labels)."""
    data = store.load(modalities)
    if store.class_names:
        labels = set_class_ids(store, class_names, data["labels"])
        keep = subsample_per_class(labels, per_class, seed)
    else:  # paired data without classes (the set's classes are pseudo-classes): draw the rows unlabelled
        labels = torch.full((len(data["row"]),), -1, dtype=torch.long)
        keep = subsample_per_class(labels, per_class * max(1, len(class_names)), seed)
    features = {m: map_embeddings(data[m][keep], space_maps.get(m)) for m in modalities}
    return features, labels[keep].numpy()


def subsample_per_class(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of at most `per_class` rows of each label, drawn with a seeded generator, in row order."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in labels.unique():
        rows = torch.nonzero(labels == label).flatten()
        chosen.append(rows[torch.randperm(len(rows), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values if chosen else torch.empty(0, dtype=torch.long)


def project(
    real: np.ndarray, synthetic: np.ndarray | None, projection: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, str]]:
    """2-D coordinates of `real` `[N, D]` and `synthetic` `[M, D]`, and the axis names.

    PCA is fitted on the real rows only, so the axes are the data's main directions; t-SNE has no
    out-of-sample transform and is fitted on both sets together.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rows = [real] if synthetic is None else [real, synthetic]
    if projection == "pca":
        pca = PCA(n_components=2, random_state=seed).fit(real)
        coords = [pca.transform(x) for x in rows]
        share = 100 * pca.explained_variance_ratio_
        names = (f"PC 1 ({share[0]:.0f} % of variance)", f"PC 2 ({share[1]:.0f} % of variance)")
    else:
        together = np.concatenate(rows)
        perplexity = float(min(30.0, max(2.0, (len(together) - 1) / 3)))
        flat = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(together)
        coords = [flat[: len(real)], flat[len(real) :]]
        names = ("t-SNE 1", "t-SNE 2")
    return coords[0], (coords[1] if synthetic is not None else None), names


# ----------------------------------------------------------------------------------------------------
# drawing


def class_colours(count: int) -> np.ndarray:
    """`[count, 4]` RGBA: tab10 / tab20 for up to 20 classes, an evenly sampled rainbow beyond."""
    if count <= 10:
        return plt.get_cmap("tab10")(np.arange(count))
    if count <= 20:
        return plt.get_cmap("tab20")(np.arange(count))
    return plt.get_cmap("turbo")(np.linspace(0, 1, count))


def _colour_of(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """`[N, 4]` RGBA of class ids; -1 (no label) is grey."""
    return np.where((labels >= 0)[:, None], colours[np.maximum(labels, 0)], (0.55, 0.55, 0.55, 1.0))


def plot_loss_history(ax, history: dict[str, list[float]]) -> None:
    """One line per loss term over the iterations (each summed over classes, as condense records it)."""
    ax.set_title("loss per term (sum over classes)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    for term, values in history.items():
        style = {"color": "black", "linewidth": 2.0} if term == "total" else {"linewidth": 1.4}
        ax.plot(np.arange(1, len(values) + 1), values, label=term, **style)
    ax.grid(alpha=0.3)
    ax.legend(title="term", fontsize=8)


def figure_size_pixels(panels: int) -> tuple[int, int]:
    """Width and height in pixels of the PNG written for `panels` panels."""
    columns, rows = _grid(panels)
    return round(columns * PANEL_INCHES[0] * DPI), round(rows * PANEL_INCHES[1] * DPI)


def _grid(panels: int) -> tuple[int, int]:
    columns = 2 if panels == 4 else min(panels, 3)
    return columns, -(-panels // columns)


def _figure(panels: int):
    columns, rows = _grid(panels)
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(columns * PANEL_INCHES[0], rows * PANEL_INCHES[1]),
        dpi=DPI,
        layout="constrained",
        squeeze=False,
    )
    return figure, list(axes.flat)


def _hide_unused(axes, used: int) -> None:
    for ax in axes[used:]:
        ax.set_visible(False)


def _legend(figure, class_names: list[str], colours: np.ndarray, *, synthetic_label: str | None = None) -> None:
    """Class colours (and, with `synthetic_label`, the two marker kinds) in one legend right of the panels."""
    handles = []
    if synthetic_label:
        handles.append(Line2D([], [], linestyle="", marker="o", color="dimgrey", markersize=3.5, label="real row"))
        synthetic = dict(marker="o", markerfacecolor="white", markeredgecolor="black", markersize=9)
        handles.append(Line2D([], [], linestyle="", label=synthetic_label, **synthetic))
    if len(class_names) <= MAX_LEGEND_CLASSES:
        handles += [
            Line2D([], [], linestyle="", marker="o", color=colours[i], markersize=7, label=name)
            for i, name in enumerate(class_names)
        ]
    else:
        handles.append(Line2D([], [], linestyle="", label=f"{len(class_names)} classes (colour = class)"))
    figure.legend(handles=handles, loc="outside right upper", title="class", fontsize=8, title_fontsize=9)


def save_png(figure, out: Path, dpi: int = DPI) -> None:
    """Write the figure as PNG through a temp file and a rename, and close it."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(figure)
    atomic_write_bytes(out, buffer.getvalue())


# ----------------------------------------------------------------------------------------------------
# checks and the real store


def _check_options(out: str | Path, projection: str, per_class: int, overwrite: bool) -> None:
    out = Path(out)
    if projection not in PROJECTIONS:
        raise IbdcError(f"--projection {projection!r} is not one of: {', '.join(PROJECTIONS)}")
    if per_class < 1:
        raise IbdcError(f"--real-per-class must be at least 1, not {per_class}")
    if out.suffix.lower() != ".png":
        raise IbdcError(f"--plot {out}: the picture is written as a .png file")
    if out.exists() and not overwrite:
        raise IbdcError(f"--plot {out} exists; choose another file or pass --overwrite")


def _real_store(path: Path, meta: dict[str, Any], real: str | Path | None) -> Store:
    """The store given with `--real`, else the one recorded in the set (which must still exist)."""
    if real is not None:
        return open_store(real)
    recorded = meta.get("source_store", {}).get("path")
    if not recorded:
        raise IbdcError(f"{path} records no source store; name the real store with --real STORE")
    if not Path(recorded).exists():
        raise IbdcError(f"{path} was made from store {recorded}, which no longer exists; pass --real STORE")
    return open_store(recorded)


def _check_same_encoder(meta: dict[str, Any], store: Store, modalities: list[str], path: Path) -> None:
    from ibdc_cli.encoders.imagebind import same_encoder

    if not same_encoder(meta.get("encoder", {}), store.encoder):
        raise IbdcError(
            f"{path} and store {store.path} come from different encoders "
            f"({meta.get('encoder', {}).get('preset')} vs {store.encoder.get('preset')}); pass the right --real STORE"
        )
    missing = [m for m in modalities if m not in store.modalities]
    if missing:
        raise IbdcError(f"store {store.path} has no {missing[0]!r} embeddings (it has: {', '.join(store.modalities)})")
