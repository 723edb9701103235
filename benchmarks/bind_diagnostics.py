r"""What `ibdc bind` has to work with on fsdd-mnist: the random anchor's geometry and the speech's.

Two questions, answered on the fsdd-mnist **train** rows (fitting) and **val** rows (scoring; the val
speaker is never trained on), with the imagebind_tiny preset, random init, seed 0:

1. **The anchor** (the frozen image tower). For each map of `--anchor-map` (none, center, whiten; fitted on
   the train rows' raw outputs): the mean cosine between training rows, the share of variance on the top
   principal direction, and how well the train rows' class means label val images (nearest class mean),
   plus the "oracle" same-label R@1: with each val audio embedded exactly at its class's mean direction,
   the share whose nearest val image has its label: the most a bound audio tower could score.
2. **The speech** (what the trained audio tower must learn across speakers): a logistic regression fitted
   on the train speakers and scored on the val speaker, on (a) the log-mel itself, averaged over 10-frame
   and 4-bin cells of the first 0.8 s, and (b) the random audio tower's class-token features. (a) says how
   much digit information crosses speakers in the plain spectrum; (b) how much of it a random tower keeps;
   (c) the cepstrum (coefficients 1-19 of a DCT over the mel bins) averaged over 5 equal time segments
   of the utterance's own frames (voiced frames, every frame of the clip, or the tower's first 0.8 s),
   and the log-mel in the same segments: what a spectral envelope in utterance-relative time gives.

Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bind_diagnostics.py --source ../shared/data/fsdd-mnist \
        --json benchmarks/results/bind_diagnostics.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ibdc_cli.data.fsdd_mnist import build_fsdd_mnist
from ibdc_cli.data.manifest import read_manifest
from ibdc_cli.data.pairs import load_rows
from ibdc_cli.data.preprocess import AUDIO_MEAN, AUDIO_STD
from ibdc_cli.data.rows import present_cells
from ibdc_cli.encoders.imagebind import MODALITY_KEYS, load_encoder
from ibdc_cli.encoders.metrics import mean_cosine
from ibdc_cli.space import SPACE_MAPS, fit_space_map, map_embeddings


def anchor_geometry(raw: torch.Tensor, labels: torch.Tensor, val_raw: torch.Tensor, val_labels: torch.Tensor):
    rows = {}
    classes = labels.unique()
    for kind in SPACE_MAPS:
        space = fit_space_map(raw, kind)
        a, v = map_embeddings(raw, space), map_embeddings(val_raw, space)
        centred = a - a.mean(0)
        eigenvalues = torch.linalg.eigvalsh(centred.T @ centred)
        means = F.normalize(torch.stack([a[labels == c].mean(0) for c in classes]), dim=-1)  # [C, D]
        nearest = classes[(v @ means.T).argmax(1)]
        oracle = (means[torch.searchsorted(classes, val_labels)] @ v.T).argmax(1)  # val audio at its class mean
        rows[kind] = {
            "mean_cosine_train": round(mean_cosine(a), 3),
            "top_direction_variance_share": round(float(eigenvalues[-1] / eigenvalues.sum()), 3),
            "nearest_class_mean_val_images": round(float((nearest == val_labels).float().mean()), 3),
            "oracle_label_r1_audio_to_image": round(float((val_labels[oracle] == val_labels).float().mean()), 3),
        }
    return rows


def pooled_logmel(x: torch.Tensor) -> torch.Tensor:
    """`[N, 1 or 3, 1, 128, 204]` -> `[N, 256]`: the first clip's first 80 frames in 10-frame x 4-bin cells."""
    return F.avg_pool2d(x[:, 0, :, :, :80], (4, 10)).flatten(1)


@torch.no_grad()
def class_token(encoder, x: torch.Tensor) -> torch.Tensor:
    """The random audio trunk's class-token output `[N, 128]` (the head's input)."""
    model, key = encoder.model, MODALITY_KEYS["audio"]
    out = []
    for chunk in x.split(64):
        tokens = model.modality_preprocessors[key](**{key: chunk.flatten(0, 1)})
        out.append(model.modality_trunks[key](**tokens["trunk"])[:, 0].unflatten(0, chunk.shape[:2]).mean(1))
    return torch.cat(out)


def cepstral_segments(x: torch.Tensor, *, frames: str, segments: int = 5, cepstral: bool = True) -> torch.Tensor:
    """`[N, clips, 1, 128, 204]` -> `[N, segments * 19]`: the first clip's log-mel frames (`frames`: "voiced",
    those within 6 nats of the clip's loudest frame; "clip", every frame before the padding; "first-0.8s",
    the first 80 frames as the tower's patches see them), cut into `segments` equal runs of the frames
    kept, each averaged; with `cepstral`, of the cepstrum (DCT over the mel bins, coefficients 1-19:
    the spectral envelope without loudness and pitch harmonics), else of the 128 log-mel bins."""
    import scipy.fft

    logmel = (x[:, 0, 0] * AUDIO_STD + AUDIO_MEAN).transpose(1, 2).numpy()  # [N, 204 frames, 128 bins]
    rows = []
    for f in logmel:
        kept = f[f.std(1) > 1e-6]  # padding frames are constant
        if frames == "voiced":
            energy = kept.mean(1)
            kept = kept[energy > energy.max() - 6.0]
        elif frames == "first-0.8s":
            kept = f[:80]
        values = scipy.fft.dct(kept, axis=1, norm="ortho")[:, 1:20] if cepstral else kept
        rows.append(np.concatenate([part.mean(0) for part in np.array_split(values, segments)]))
    return torch.from_numpy(np.stack(rows))


def probe(train_x, train_y, val_x, val_y) -> dict[str, float]:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    model.fit(train_x.numpy(), train_y.numpy())
    return {
        "train": round(model.score(train_x.numpy(), train_y.numpy()), 3),
        "val": round(model.score(val_x.numpy(), val_y.numpy()), 3),
    }


CEPSTRAL_PROBES = {
    "cepstrum_voiced_frames_5_segments": {"frames": "voiced"},
    "cepstrum_clip_frames_5_segments": {"frames": "clip"},
    "cepstrum_first_0.8s_5_segments": {"frames": "first-0.8s"},
    "logmel_voiced_frames_5_segments": {"frames": "voiced", "cepstral": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="fsdd-mnist source folder (see ibdc datasets fsdd-mnist)")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()
    encoder = load_encoder("imagebind_tiny", seed=0)
    encoder.model.eval()
    data = {}
    with tempfile.TemporaryDirectory() as folder:
        build_fsdd_mnist(Path(folder) / "data", source=Path(args.source))
        for split in ("train", "val"):
            manifest = read_manifest(Path(folder) / "data" / f"{split}.csv", ["image", "audio"])
            has = present_cells(manifest, ["image", "audio"], "image")
            rows = load_rows(encoder, manifest, ["image", "audio"], "image", has, 64, 0, torch.device("cpu"))
            data[split] = {**rows, "labels": torch.tensor(manifest.labels)}
    train, val = data["train"], data["val"]
    report = {
        "rows": {"train": len(train["labels"]), "val": len(val["labels"])},
        "anchor": anchor_geometry(train["anchor_raw"], train["labels"], val["anchor_raw"], val["labels"]),
        "speech_probe": {
            "pooled_logmel": probe(
                pooled_logmel(train["inputs.audio"]), train["labels"], pooled_logmel(val["inputs.audio"]), val["labels"]
            ),
            **{
                name: probe(
                    cepstral_segments(train["inputs.audio"], **options),
                    train["labels"],
                    cepstral_segments(val["inputs.audio"], **options),
                    val["labels"],
                )
                for name, options in CEPSTRAL_PROBES.items()
            },
            "random_tower_class_token": probe(
                class_token(encoder, train["inputs.audio"]),
                train["labels"],
                class_token(encoder, val["inputs.audio"]),
                val["labels"],
            ),
        },
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
