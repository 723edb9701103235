"""fsdd-mnist: real spoken digits (FSDD) paired with real handwritten digits (MNIST), train/val/test.

The real-data benchmark published tables are made on (SPEC §6). Splits are disjoint twice over:

- **speaker-disjoint audio**: the test split holds every recording of `test_speaker` (default
  `yweweler`), val every recording of `val_speaker` (default `theo`), train every other speaker's;
- **image-disjoint images**: the first `MNIST_IMAGES` MNIST test images are cut into one index range per
  split, in proportion to the split's recordings (train first), and each recording is paired with an
  image of its own digit drawn from its split's range, without replacement, by `seed`.

Sources (both share-alike; attribution is required when results or derived data are published):

- FSDD, Free Spoken Digit Dataset (Z. Jackson et al.), CC BY-SA 4.0: 8 kHz mono WAV files named
  `{digit}_{speaker}_{take}.wav`. The download takes the release archive `FSDD_ARCHIVE` and keeps the
  recordings whose SHA-256 is pinned in `fsdd_recordings.sha256` (4 speakers, 2,000 files); GitHub
  regenerates release archives, so the pin is per recording, not per archive.
- MNIST (Y. LeCun, C. Cortes, C. J. C. Burges), CC BY-SA 3.0: the test-set IDX files; the pin is the
  SHA-256 of the first `MNIST_IMAGES` images' pixel bytes and of their labels, which holds for the
  published `t10k-*.gz` files and for a local copy holding only those images.

`build_fsdd_mnist(out, source=DIR)` builds from a local folder laid out like the shared copy
(`recordings/*.wav`, `mnist-images-idx3-ubyte.gz`, `mnist-labels-idx1-ubyte.gz`; `t10k-*` names and
uncompressed IDX files are accepted too); without `source` it downloads into `OUT/.download/`, checks
every pinned hash, builds, and deletes the download.

Layout of `out_dir` (paths in the manifests are relative to it):

    train.csv val.csv test.csv   id, image, audio, label (digit names "zero".."nine"); written last
    dataset.json                 parameters, speakers and image ranges per split, counts, sources, licences
    README.txt                   the same for people, with the attribution
    audio/SPEAKER/D_SPEAKER_T.wav  the recordings, copied unchanged (8 kHz; `embed` resamples)
    images/NNNN.png              28x28 greyscale, NNNN = index in the MNIST test set
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ibdc_cli.data.benchmark import (
    DIGIT_NAMES,
    _manifest_paths,
    _rel,
    _replace_atomically,
    begin_build,
    finish_build,
    write_manifest,
)
from ibdc_cli.errors import IbdcError
from ibdc_cli.runtime import log

DATASET_VERSION = 1
SPLITS = ("train", "val", "test")
COLUMNS = ["id", "image", "audio", "label"]
MNIST_IMAGES = 8000  # the first 8,000 MNIST test images: what the shared local copy holds
FSDD_ARCHIVE = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
MNIST_URLS = {
    "images": "https://storage.googleapis.com/cvdf-datasets/mnist/t10k-images-idx3-ubyte.gz",
    "labels": "https://storage.googleapis.com/cvdf-datasets/mnist/t10k-labels-idx1-ubyte.gz",
}
# SHA-256 of the decoded payload of the first MNIST_IMAGES images (28*28 bytes each) and labels.
MNIST_CONTENT_SHA256 = {
    "images": "23ab2b7d30402a554468a8f3c5a61c7dd201a12d1e36aab05c8225e0fd3159e7",
    "labels": "bcdb3bf6701020df09da63535cf93bf03c0f82dd9975452c4531077117dcf410",
}
MNIST_FILES = {  # accepted names in a source folder, first match wins
    "images": ("mnist-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "mnist-images-idx3-ubyte"),
    "labels": ("mnist-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "mnist-labels-idx1-ubyte"),
}
LICENCES = {
    "audio": {
        "name": "Free Spoken Digit Dataset (FSDD)",
        "licence": "CC BY-SA 4.0",
        "attribution": "Zohar Jackson, César Souza, Jason Flaks, Yuxin Pan, Hereman Nicolas, Adhish Thite "
        "and contributors, github.com/Jakobovski/free-spoken-digit-dataset",
    },
    "image": {
        "name": "MNIST (test set)",
        "licence": "CC BY-SA 3.0",
        "attribution": "Yann LeCun, Corinna Cortes, Christopher J. C. Burges, yann.lecun.com/exdb/mnist",
    },
}
RECORDING_NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")


@dataclass(frozen=True)
class Recording:
    digit: int
    speaker: str
    take: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def pinned_recordings() -> dict[str, str]:
    """{file name: SHA-256} of the FSDD recordings ibdc knows (4 speakers x 10 digits x 50 takes)."""
    lines = (Path(__file__).with_name("fsdd_recordings.sha256")).read_text().splitlines()
    return {name: digest for digest, name in (line.split() for line in lines if line.strip())}


def source_fingerprint(recording_hashes: dict[str, str]) -> str:
    """One SHA-256 over every recording's name and hash and MNIST's pinned content: what a build reads."""
    text = "".join(f"{name} {digest}\n" for name, digest in sorted(recording_hashes.items()))
    text += "".join(f"mnist-{k} {v}\n" for k, v in sorted(MNIST_CONTENT_SHA256.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def build_fsdd_mnist(
    out_dir: Path,
    *,
    source: Path | None = None,
    test_speaker: str = "yweweler",
    val_speaker: str = "theo",
    seed: int = 0,
    overwrite: bool = False,
    mirror: str | None = None,
    per_class: int | None = None,
) -> dict:
    """Build fsdd-mnist under `out_dir`; returns the summary also written to `dataset.json`.

    `source`: a local folder (see the module docstring); None downloads the pinned files (from `mirror`,
    a base URL under which the archive and the two MNIST files are found by their file names, instead of
    GitHub and the CVDF MNIST mirror). Every other speaker of the source trains. `per_class` keeps at most
    that many recordings of each digit in each split (takes in order, the split's speakers in turn): a
    small build to try things on. A second call with the
    same arguments returns the existing summary; a folder holding another build is refused unless
    `overwrite`.
    """
    out_dir = Path(out_dir)
    if per_class is not None and per_class < 1:
        raise IbdcError(f"--per-class must be at least 1, not {per_class}")
    if test_speaker == val_speaker:
        raise IbdcError(f"--test-speaker and --val-speaker are both {test_speaker!r}; the splits must not share one")
    pinned = pinned_recordings()
    if source is not None:
        source = Path(source)
        recordings = _scan_recordings(source / "recordings" if (source / "recordings").is_dir() else source)
        hashes = _check_recordings(recordings, pinned)
    else:
        recordings, hashes = [], pinned
    params = {
        "name": "fsdd-mnist",
        "version": DATASET_VERSION,
        "splits": list(SPLITS),
        "seed": seed,
        "test_speaker": test_speaker,
        "val_speaker": val_speaker,
        "source_sha256": source_fingerprint(hashes),
    }
    if per_class is not None:  # recorded only when set, so full builds keep their identity
        params["per_class"] = per_class
    speakers = sorted({name.split("_")[1] for name in hashes})
    for option, speaker in (("--test-speaker", test_speaker), ("--val-speaker", val_speaker)):
        if speaker not in speakers:
            raise IbdcError(f"{option} {speaker!r} is not a speaker of the source (it has: {', '.join(speakers)})")
    if len(speakers) < 3:
        raise IbdcError(f"the source has speakers {', '.join(speakers)}: at least one must be left to train")
    if begin_build(out_dir, params, overwrite=overwrite):
        return _read_summary(out_dir)

    download = out_dir / ".download"
    try:
        if source is None:
            source = _download(download, mirror)
            recordings = _scan_recordings(source / "recordings")
            _check_recordings(recordings, pinned)
        images, labels = _read_mnist(source)
    except IbdcError:
        shutil.rmtree(download, ignore_errors=True)  # a bad download must not be reused by the next try
        raise

    split_of = {test_speaker: "test", val_speaker: "val"}
    by_split: dict[str, list[Recording]] = {split: [] for split in SPLITS}
    for rec in sorted(recordings, key=lambda r: (r.digit, r.speaker, r.take)):
        by_split[split_of.get(rec.speaker, "train")].append(rec)
    if per_class is not None:
        by_split = {split: _first_per_digit(recs, per_class) for split, recs in by_split.items()}
    ranges = _image_ranges({split: len(recs) for split, recs in by_split.items()})

    rows: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    reused: dict[str, int] = {}
    for split_index, split in enumerate(SPLITS):
        pairs, reused[split] = _pair_images(by_split[split], labels, ranges[split], seed, split_index)
        for rec, image_index in pairs:
            audio = out_dir / "audio" / rec.speaker / rec.name
            if not audio.exists():
                audio.parent.mkdir(parents=True, exist_ok=True)
                _replace_atomically(audio, lambda tmp, src=rec.path: shutil.copyfile(src, tmp))
            image = out_dir / "images" / f"{image_index:04d}.png"
            if not image.exists():
                image.parent.mkdir(parents=True, exist_ok=True)
                pixels = Image.fromarray(images[image_index])
                _replace_atomically(image, lambda tmp, im=pixels: im.save(tmp, format="PNG"))
            rows[split].append(
                {
                    "id": rec.path.stem,
                    "image": _rel(image, out_dir),
                    "audio": _rel(audio, out_dir),
                    "label": DIGIT_NAMES[rec.digit],
                }
            )

    summary = {
        "params": params,
        "speakers": {split: sorted({r.speaker for r in recs}) for split, recs in by_split.items()},
        "image_ranges": {split: list(r) for split, r in ranges.items()},
        "images_reused": reused,
        "counts": {split: len(split_rows) for split, split_rows in rows.items()},
        "columns": COLUMNS,
        "sources": {
            "audio": {**LICENCES["audio"], "archive": FSDD_ARCHIVE, "recordings": len(hashes)},
            "image": {
                **LICENCES["image"],
                "files": MNIST_URLS,
                "images": MNIST_IMAGES,
                "content_sha256": MNIST_CONTENT_SHA256,
            },
        },
    }
    _replace_atomically(out_dir / "README.txt", lambda tmp: tmp.write_text(_readme(summary)))
    for split, path in _manifest_paths(out_dir, params).items():
        write_manifest(path, rows[split], COLUMNS)
    finish_build(out_dir, summary)
    shutil.rmtree(download, ignore_errors=True)
    return _read_summary(out_dir)


# ----------------------------------------------------------------------------------------------- splits


def _first_per_digit(recordings: list[Recording], per_class: int) -> list[Recording]:
    """At most `per_class` of `recordings` per digit: take 0 of every speaker, then take 1, ... (the order kept)."""
    kept = []
    for digit in sorted({r.digit for r in recordings}):
        mine = sorted((r for r in recordings if r.digit == digit), key=lambda r: (r.take, r.speaker))
        kept += sorted(mine[:per_class], key=lambda r: (r.speaker, r.take))
    return kept


def _image_ranges(counts: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Cut [0, MNIST_IMAGES) into one range per split, in proportion to its recordings, train first."""
    total, start, ranges = sum(counts.values()), 0, {}
    for i, split in enumerate(SPLITS):
        end = MNIST_IMAGES if i == len(SPLITS) - 1 else start + round(MNIST_IMAGES * counts[split] / total)
        ranges[split] = (start, end)
        start = end
    return ranges


def _pair_images(
    recordings: list[Recording], labels: np.ndarray, index_range: tuple[int, int], seed: int, split_index: int
) -> tuple[list[tuple[Recording, int]], int]:
    """Pair each recording with an image of its digit from `index_range`, without replacement while the
    range has enough; returns the pairs and how many images had to be used twice."""
    start, end = index_range
    by_digit: dict[int, list[Recording]] = defaultdict(list)
    for rec in recordings:
        by_digit[rec.digit].append(rec)
    pairs, reused = [], 0
    for digit, recs in sorted(by_digit.items()):
        candidates = start + np.flatnonzero(labels[start:end] == digit)
        if candidates.size == 0:
            raise IbdcError(f"MNIST images {start}..{end - 1} hold no {DIGIT_NAMES[digit]!r}; cannot pair its audio")
        order = np.random.default_rng([seed, split_index, digit]).permutation(candidates)
        reused += max(0, len(recs) - len(order))
        pairs += [(rec, int(order[i % len(order)])) for i, rec in enumerate(recs)]
    return pairs, reused


# ---------------------------------------------------------------------------------------------- sources


def _scan_recordings(folder: Path) -> list[Recording]:
    if not folder.is_dir():
        raise IbdcError(f"{folder}: no such folder of FSDD recordings ({{digit}}_{{speaker}}_{{take}}.wav)")
    recordings = []
    for path in sorted(folder.glob("*.wav")):
        match = RECORDING_NAME.match(path.name)
        if match is None:
            raise IbdcError(f"{path}: not an FSDD recording name ({{digit}}_{{speaker}}_{{take}}.wav)")
        recordings.append(Recording(int(match[1]), match[2], int(match[3]), path))
    if not recordings:
        raise IbdcError(f"{folder}: no .wav recordings")
    return recordings


def _check_recordings(recordings: list[Recording], pinned: dict[str, str]) -> dict[str, str]:
    """Check every pinned recording's SHA-256; returns {name: sha256} of all recordings (others too)."""
    hashes = {}
    for rec in recordings:
        digest = hashlib.sha256(rec.path.read_bytes()).hexdigest()
        if rec.name in pinned and digest != pinned[rec.name]:
            raise IbdcError(f"{rec.path}: SHA-256 {digest[:12]}… differs from FSDD's ({pinned[rec.name][:12]}…)")
        hashes[rec.name] = digest
    speakers = {rec.speaker for rec in recordings}
    missing = [name for name in pinned if name.split("_")[1] in speakers and name not in hashes]
    if missing:
        raise IbdcError(f"{recordings[0].path.parent}: {len(missing)} recordings missing, e.g. {missing[0]}")
    return hashes


def _read_mnist(source: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first MNIST_IMAGES images `[N, 28, 28] uint8` and labels `[N]`, content hashes checked."""
    payloads = {}
    for part, (magic, header) in {"images": (2051, 16), "labels": (2049, 8)}.items():
        path = next((source / n for n in MNIST_FILES[part] if (source / n).is_file()), None)
        if path is None:
            raise IbdcError(f"{source}: no MNIST {part} file (one of: {', '.join(MNIST_FILES[part])})")
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        except (OSError, EOFError) as exc:
            raise IbdcError(f"{path}: not a readable gzip file ({exc})") from None
        if len(raw) < header or struct.unpack(">I", raw[:4])[0] != magic:
            raise IbdcError(f"{path}: not an MNIST IDX {part} file (magic number {magic} expected)")
        size = MNIST_IMAGES * (28 * 28 if part == "images" else 1)
        payload = raw[header : header + size]
        digest = hashlib.sha256(payload).hexdigest()
        if len(payload) < size or digest != MNIST_CONTENT_SHA256[part]:
            raise IbdcError(
                f"{path}: its first {MNIST_IMAGES} MNIST test {part} differ from the pinned ones "
                f"(SHA-256 {digest[:12]}…, expected {MNIST_CONTENT_SHA256[part][:12]}…)"
            )
        payloads[part] = np.frombuffer(payload, dtype=np.uint8)
    return payloads["images"].reshape(-1, 28, 28), payloads["labels"]


def _download(folder: Path, mirror: str | None) -> Path:
    """Fetch the FSDD archive and the MNIST files into `folder`, laid out as a source folder."""
    folder.mkdir(parents=True, exist_ok=True)
    urls = {"fsdd.tar.gz": FSDD_ARCHIVE, **{Path(u).name: u for u in MNIST_URLS.values()}}
    if mirror:
        urls = {name: f"{mirror.rstrip('/')}/{Path(url).name}" for name, url in urls.items()}
    for name, url in urls.items():
        target = folder / name
        if target.exists():
            continue
        log(f"downloading {url}")
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                _replace_atomically(target, lambda tmp, r=response: tmp.write_bytes(r.read()))
        except (urllib.error.URLError, OSError) as exc:
            raise IbdcError(
                f"could not download {url} ({getattr(exc, 'reason', exc)}); build from a local copy with --source DIR"
            ) from None
    recordings = folder / "recordings"
    if not recordings.is_dir():
        pinned = pinned_recordings()
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            try:
                with tarfile.open(folder / "fsdd.tar.gz") as archive:
                    members = [
                        m
                        for m in archive.getmembers()
                        if m.isfile() and Path(m.name).name in pinned and Path(m.name).parent.name == "recordings"
                    ]
                    for member in members:
                        member.name = Path(member.name).name  # flatten; never trust paths from an archive
                        archive.extract(member, Path(tmp) / "recordings", filter="data")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise IbdcError(f"{folder / 'fsdd.tar.gz'}: not a readable FSDD archive ({exc})") from None
            if len(members) < len(pinned):
                raise IbdcError(f"{FSDD_ARCHIVE}: holds {len(members)} of the {len(pinned)} pinned recordings")
            (Path(tmp) / "recordings").rename(recordings)
    return folder


# ------------------------------------------------------------------------------------------------ files


def _read_summary(out_dir: Path) -> dict:
    """dataset.json, plus the manifests' paths (not stored: the folder may move)."""
    summary = json.loads((out_dir / "dataset.json").read_text())
    manifests = _manifest_paths(out_dir, summary["params"])
    return {**summary, "manifests": {split: str(path) for split, path in manifests.items()}}


def _readme(summary: dict) -> str:
    audio, image = summary["sources"]["audio"], summary["sources"]["image"]
    lines = [
        "fsdd-mnist: real spoken digits paired with real handwritten digits, built by ibdc",
        "(ibdc_cli/data/fsdd_mnist.py).",
        "",
        "Each row pairs a recording of a digit spoken by a person with an MNIST image of the same digit.",
        "Splits share no speaker and no image.",
        "",
        f"Audio: {audio['name']}, licence {audio['licence']}. Attribution: {audio['attribution']}.",
        f"Images: {image['name']}, first {image['images']} images, licence {image['licence']}.",
        f"Attribution: {image['attribution']}.",
        "Both licences are share-alike: derived data must keep them, and published results must credit both.",
        "",
    ]
    for split in SPLITS:
        start, end = summary["image_ranges"][split]
        lines.append(
            f"{split}: {summary['counts'][split]} rows, speakers {', '.join(summary['speakers'][split])}, "
            f"MNIST test images {start}..{end - 1}"
        )
    lines += ["", f"Columns: {','.join(COLUMNS)} (media paths are relative to this directory)", ""]
    return "\n".join(lines)
