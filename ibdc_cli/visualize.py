"""Pictures for `ibdc inspect --plot`: real vs synthetic embeddings in 2-D, and the loss curves.

For a synthetic set, one panel per modality shows the real embeddings of its source store (small dots,
at most `per_class` per class) and the synthetic rows (larger markers with black edges and a
see-through fill, drawn on top so the real cloud stays visible), both coloured by class and in the
space the set was condensed in (its recorded space maps, `center.<m>` / `whiten.<m>`, see
ibdc_cli/space.py); a last panel shows the loss history per term (terms that were off are left out and
named in the panel's title). Input-space rows (pixels, fbanks) are embedded with the encoder recorded in
the set first. For a store, one panel per modality shows its embeddings coloured by class.

Classes are listed and coloured in natural order (`natural_class_order`: 0..9, zero..nine, class2 before
class10); the class ids themselves are unchanged.

The projection is t-SNE fitted on real and synthetic rows together (the default: it separates the
classes far better than PCA, measured with `projection_scores`, see docs/commands/inspect.md), or PCA
fitted on the real rows (so the axes describe the data, and synthetic rows are placed in them).
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ibdc_cli.errors import IbdcError  # noqa: E402
from ibdc_cli.space import map_embeddings  # noqa: E402
from ibdc_cli.store import Store, atomic_write_bytes, open_store  # noqa: E402
from ibdc_cli.synthetic_set import SyntheticSet  # noqa: E402

PROJECTIONS = ("pca", "tsne")
PROJECTION_NAMES = {"pca": "PCA", "tsne": "t-SNE"}
DEFAULT_PROJECTION = "tsne"  # chosen by measurement (projection_scores), see docs/commands/inspect.md
PANEL_INCHES = (4.6, 4.2)  # width, height of one panel
DPI = 110
MAX_LEGEND_CLASSES = 20
# Real rows: small, half see-through dots underneath. Synthetic rows: on top, larger than a dot but
# smaller than the paper's markers, black edges and a fill of the class colour at SYNTHETIC_FILL_ALPHA,
# so the real dots under them stay visible.
REAL_STYLE = {"s": 9, "alpha": 0.45, "linewidths": 0, "zorder": 1}
SYNTHETIC_STYLE = {"s": 55, "marker": "o", "edgecolors": "black", "linewidths": 1.1, "zorder": 3}
SYNTHETIC_FILL_ALPHA = 0.5
# Which setting weighs each loss term, per method (a term whose weight is 0 was off).
LOSS_TERM_WEIGHTS = {
    "imagebinddc": {"uni": "lambda_uni", "cross": "lambda_cross", "joint": "lambda_joint"},
    "avdd": {"icm": "lambda_cross", "cgm": "lambda_joint"},
}
LOSS_TERM_FORMS = {"cross": "cross_form", "joint": "joint_form"}  # form "none" = the term is off
NUMBER_WORDS_BELOW_20 = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
NUMBER_WORDS_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS = {word: value for value, word in enumerate(NUMBER_WORDS_BELOW_20)} | {
    word: 20 + 10 * k for k, word in enumerate(NUMBER_WORDS_TENS)
}  # "zero" -> 0 ... "nineteen" -> 19, "twenty" -> 20 ... "ninety" -> 90


# ----------------------------------------------------------------------------------------------------
# public entry points


def plot_synthetic_set(
    path: str | Path,
    out: str | Path,
    *,
    real: str | Path | None = None,
    projection: str = DEFAULT_PROJECTION,
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
    synthetic = SyntheticSet.load(path)
    path, meta = synthetic.path, synthetic.metadata
    store = _real_store(path, meta, real)
    modalities, class_names, space_maps = synthetic.modalities, synthetic.class_names, synthetic.space_maps
    synthetic.check_against(store, fix="pass the right --real STORE")
    rows = {m: x.float().cpu() for m, x in synthetic.embeddings(checkpoint=checkpoint).items()}  # {m: [M, D]}
    real_features, real_labels = real_embeddings(store, synthetic, per_class, seed)
    syn_labels = synthetic.labels.long().numpy()

    history = {term: values for term, values in meta.get("loss_history", {}).items() if values}
    panels = [*modalities, "loss"] if history else modalities  # a selection has no loss curves
    selection = meta.get("kind") == "selection"
    figure, axes = _figure(len(panels))
    colours = class_colours(class_names)
    for ax, modality in zip(axes, modalities, strict=False):
        real_xy, syn_xy, axis_names = project(real_features[modality].numpy(), rows[modality].numpy(), projection, seed)
        draw_real_and_synthetic(ax, real_xy, real_labels, syn_xy, syn_labels, colours)
        space = synthetic.tensor_spaces.get(modality, "embedding")
        mapped = f", {meta.get('space_map', 'center')} map" if modality in space_maps else ""
        ax.set_title(f"{modality} ({rows[modality].shape[1]}-d, {space} space{mapped})")
        ax.set_xlabel(axis_names[0])
        ax.set_ylabel(axis_names[1])
    terms_off: dict[str, str] = {}
    if history:
        terms_off = loss_terms_off(history, synthetic.settings, synthetic.method)
        plot_loss_history(axes[len(modalities)], history, terms_off)
    _hide_unused(axes, len(panels))
    rows_name = "selected real rows" if selection else "synthetic rows"
    _legend(figure, class_names, colours, synthetic_label=rows_name.removesuffix("s"))
    figure.suptitle(
        f"{path.name}: {synthetic.method}, DPC {synthetic.dpc}, {meta.get('space')} space"
        f"{' (a selection: no loss curves)' if selection else ''}\n"
        f"dots: real rows of {store.path.name}; circles with black edges (on top): {rows_name}; "
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
        "loss_terms_off": terms_off,
        "size": list(figure_size_pixels(len(panels))),
    }


def plot_store(
    path: str | Path,
    out: str | Path,
    *,
    projection: str = DEFAULT_PROJECTION,
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
    colours = class_colours(class_names)

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


def real_embeddings(
    store: Store, synthetic: SyntheticSet, per_class: int, seed: int = 0
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """At most `per_class` real rows per class, `{m: [N, D]}` mapped like the synthetic set, and their
    labels `[N]` as the set's class ids (matched by class name; -1 for a store without labels)."""
    modalities, space_maps = synthetic.modalities, synthetic.space_maps
    data = store.load(modalities)
    if store.class_names:
        labels = synthetic.store_class_ids(store, data["labels"])
        keep = subsample_per_class(labels, per_class, seed)
    else:  # paired data without classes (the set's classes are pseudo-classes): draw the rows unlabelled
        labels = torch.full((len(data["row"]),), -1, dtype=torch.long)
        keep = subsample_per_class(labels, per_class * max(1, len(synthetic.class_names)), seed)
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


def knn_accuracy(points: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out accuracy of a k-nearest-neighbour vote on `points` `[N, d]` with `labels` `[N]`:
    how well the classes separate in a picture (ties go to the smaller label)."""
    from sklearn.neighbors import NearestNeighbors

    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points, return_distance=False)
    # [N, k]: each row's k nearest other rows (the row itself left out, wherever a duplicate put it)
    others = np.stack([row[row != i][:k] for i, row in enumerate(neighbours)])
    predicted = np.array([np.bincount(votes).argmax() for votes in labels[others]])
    return float((predicted == labels).mean())


def projection_scores(
    store: str | Path, *, space_map: str = "whiten", per_class: int = 200, seed: int = 0, k: int = 5
) -> dict[str, dict[str, dict[str, float]]]:
    """How well each 2-D projection separates a labelled store's classes, per modality.

    The store's embeddings (at most `per_class` rows per class) are mapped with a `space_map` fitted on
    the store itself (as `ibdc condense --space-map` does), projected by every projection in
    `PROJECTIONS` as `--plot` draws them, and scored: `knn5`, the leave-one-out `k`-NN accuracy on the
    2-D points; `silhouette`, scikit-learn's silhouette score of the classes; `seconds`, the projection's
    time. `"full": {"knn5"}` is the k-NN accuracy in the mapped space itself, about the most a picture
    could show. Returns `{modality: {"pca" | "tsne": {"knn5", "silhouette", "seconds"}, "full": {"knn5"}}}`.
    """
    from sklearn.metrics import silhouette_score

    from ibdc_cli.space import fit_space_map

    store = open_store(store)
    if not store.class_names:
        raise IbdcError(f"store {store.path} has no labels: projection_scores measures class separation")
    data = store.load()
    labels = data["labels"].long()
    keep = subsample_per_class(labels, per_class, seed)
    y = labels[keep].numpy()
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for modality in store.modalities:
        mapped = map_embeddings(data[modality], fit_space_map(data[modality], space_map))[keep].numpy()
        scores[modality] = {"full": {"knn5": knn_accuracy(mapped, y, k)}}
        for projection in PROJECTIONS:
            started = time.perf_counter()
            xy, _, _ = project(mapped, None, projection, seed)
            seconds = time.perf_counter() - started
            scores[modality][projection] = {
                "knn5": knn_accuracy(xy, y, k),
                "silhouette": float(silhouette_score(xy, y)),
                "seconds": round(seconds, 2),
            }
    return scores


# ----------------------------------------------------------------------------------------------------
# drawing


def natural_class_order(class_names: list[str]) -> list[int]:
    """Class ids `[C]` in the order people read the names: the legend lists them so, colours follow it.

    All names integers ("0".."9", "10"): numeric. All names English number words ("zero".."nineteen",
    "twenty".."ninety", any case): by their value, so av-digits reads zero, one, two ... rather than the
    alphabetical eight, five, four. Otherwise a natural sort: text compared without case, runs of digits
    as numbers ("class2" before "class10"). Ties keep id order. The ids themselves never change.
    """
    names = [name.strip() for name in class_names]
    if names and all(re.fullmatch(r"[+-]?\d+", name) for name in names):
        return sorted(range(len(names)), key=lambda i: (int(names[i]), i))
    words = [name.lower() for name in names]
    if names and all(word in NUMBER_WORDS for word in words):
        return sorted(range(len(names)), key=lambda i: (NUMBER_WORDS[words[i]], i))

    def natural(i: int) -> tuple:
        # re.split with a group alternates text and digit runs, so the parts compare position by position
        parts = re.split(r"(\d+)", words[i])
        return tuple(int(part) if k % 2 else part for k, part in enumerate(parts)), i

    return sorted(range(len(names)), key=natural)


def class_colours(class_names: list[str]) -> np.ndarray:
    """`[C, 4]` RGBA indexed by class id, handed out in `natural_class_order` (the first class in that
    order gets the palette's first colour): tab10 / tab20 for up to 20 classes, a sampled rainbow beyond."""
    count = len(class_names)
    if count <= 10:
        palette = plt.get_cmap("tab10")(np.arange(count))
    elif count <= 20:
        palette = plt.get_cmap("tab20")(np.arange(count))
    else:
        palette = plt.get_cmap("turbo")(np.linspace(0, 1, count))
    colours = np.empty((count, 4))
    colours[natural_class_order(class_names)] = palette
    return colours


def _colour_of(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """`[N, 4]` RGBA of class ids; -1 (no label) is grey."""
    return np.where((labels >= 0)[:, None], colours[np.maximum(labels, 0)], (0.55, 0.55, 0.55, 1.0))


def draw_real_and_synthetic(
    ax, real_xy: np.ndarray, real_labels: np.ndarray, syn_xy: np.ndarray, syn_labels: np.ndarray, colours: np.ndarray
) -> None:
    """Real rows `[N, 2]` (labels `[N]`, -1 = none) as small dots, then synthetic rows `[M, 2]` (labels
    `[M]`) on top as circles with black edges and a see-through fill, so the real cloud stays visible."""
    ax.scatter(real_xy[:, 0], real_xy[:, 1], c=_colour_of(real_labels, colours), rasterized=True, **REAL_STYLE)
    fill = colours[syn_labels].copy()
    fill[:, 3] = SYNTHETIC_FILL_ALPHA
    ax.scatter(syn_xy[:, 0], syn_xy[:, 1], facecolors=fill, **SYNTHETIC_STYLE)


def loss_terms_off(history: dict[str, list[float]], settings: dict[str, Any], method: str | None) -> dict[str, str]:
    """`{term: why}` for the loss terms of `history` that were off: weight 0 in the set's settings
    (`lambda_<term>`; AVDD's icm / cgm use lambda_cross / lambda_joint), form "none" (`cross_form`,
    `joint_form`), or a history that is 0 at every step. "total" is never off."""
    weights = LOSS_TERM_WEIGHTS.get(method or "", {})
    off = {}
    for term, values in history.items():
        if term == "total":
            continue
        if term in weights and settings.get(weights[term]) == 0:
            off[term] = f"{weights[term]} 0"
        elif method == "imagebinddc" and settings.get(LOSS_TERM_FORMS.get(term, "")) == "none":
            off[term] = f"{LOSS_TERM_FORMS[term]} none"
        elif all(value == 0 for value in values):
            off[term] = "0 at every step"
    return off


def plot_loss_history(ax, history: dict[str, list[float]], off: dict[str, str] | None = None) -> list[str]:
    """One line per loss term over the iterations (each summed over classes, as condense records it).

    Terms in `off` (`{term: why}`, see `loss_terms_off`) are not drawn (they would be a flat line at 0)
    and are named in the title instead. Returns the terms drawn.
    """
    off = off or {}
    title = "loss per term (sum over classes)"
    if off:
        title += "\noff, not drawn: " + ", ".join(f"{term} ({why})" for term, why in off.items())
    ax.set_title(title, fontsize=10 if off else None)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    drawn = [term for term in history if term not in off]
    for term in drawn:
        values = history[term]
        style = {"color": "black", "linewidth": 2.0} if term == "total" else {"linewidth": 1.4}
        ax.plot(np.arange(1, len(values) + 1), values, label=term, **style)
    ax.grid(alpha=0.3)
    ax.legend(title="term", fontsize=8)
    return drawn


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
        synthetic = dict(marker="o", markerfacecolor=(0.5, 0.5, 0.5, SYNTHETIC_FILL_ALPHA), markeredgecolor="black")
        synthetic |= {"markersize": 7, "markeredgewidth": SYNTHETIC_STYLE["linewidths"]}
        handles.append(Line2D([], [], linestyle="", label=synthetic_label, **synthetic))
    if len(class_names) <= MAX_LEGEND_CLASSES:
        handles += [
            Line2D([], [], linestyle="", marker="o", color=colours[i], markersize=7, label=class_names[i])
            for i in natural_class_order(class_names)
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
