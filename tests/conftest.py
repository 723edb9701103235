"""Shared fixtures: small real media written on the fly, and a way to run the CLI in-process."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image


def write_wav(path: Path, seconds: float, rate: int = 16_000, channels: int = 1, freq: float = 440.0) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    soundfile.write(str(path), data, rate)
    return path


def write_image(path: Path, size=(40, 30), mode="RGB", seed=0) -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = (rng.random((size[1], size[0], channels)) * 255).astype(np.uint8)
    Image.fromarray(array[..., 0] if channels == 1 else array, mode=mode).save(path)
    return path


def write_manifest(path: Path, rows: list[dict]) -> Path:
    columns = list(rows[0])
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def media_manifest(tmp_path: Path) -> Path:
    """12 rows, 3 classes, image + audio + text, varied sizes, rates and channels."""
    rows = []
    for i in range(12):
        image = write_image(tmp_path / f"img{i}.png", size=(24 + 4 * i, 32), seed=i)
        audio = write_wav(
            tmp_path / f"snd{i}.wav",
            0.3 + 0.2 * i,
            rate=(16_000, 22_050)[i % 2],
            channels=1 + i % 2,
            freq=200.0 + 50 * i,
        )
        rows.append(
            {
                "id": f"r{i}",
                "image": image.name,
                "audio": audio.name,
                "text": f"example number {i}",
                "label": ["cat", "dog", "bird"][i % 3],
            }
        )
    return write_manifest(tmp_path / "manifest.csv", rows)


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-500:]!r}, err={self.err[-1500:]!r})"


@pytest.fixture
def cli(capsys):
    """Run `ibdc ARGS...` in this process; returns code, stdout and stderr."""
    from ibdc_cli.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict[str, Path]:
    """av-digits with 22 rows per class and split, embedded (image, audio, text) with imagebind_tiny."""
    from ibdc_cli.demo import ensure_demo_stores

    return ensure_demo_stores(tmp_path_factory.mktemp("digits"), per_class=22)


def _find_fsdd_source() -> Path | None:
    """`$IBDC_FSDD_MNIST_SOURCE`, else `shared/data/fsdd-mnist` beside the checkout or beside a folder above it."""
    import os

    if os.environ.get("IBDC_FSDD_MNIST_SOURCE"):
        return Path(os.environ["IBDC_FSDD_MNIST_SOURCE"])
    for folder in Path(__file__).resolve().parents[1:]:
        candidate = folder / "shared" / "data" / "fsdd-mnist"
        if (candidate / "recordings").is_dir():
            return candidate
    return None


FSDD_MNIST_SOURCE = _find_fsdd_source()


@pytest.fixture(scope="session")
def fsdd_source() -> Path:
    """The local copy of FSDD (4 speakers) and the first 8,000 MNIST test images (../shared/data/fsdd-mnist)."""
    if FSDD_MNIST_SOURCE is None:
        pytest.skip("the fsdd-mnist source files are not beside this checkout: set IBDC_FSDD_MNIST_SOURCE")
    assert (FSDD_MNIST_SOURCE / "recordings").is_dir(), f"no recordings/ in {FSDD_MNIST_SOURCE}"
    return FSDD_MNIST_SOURCE


@pytest.fixture(scope="session")
def fsdd_mnist(tmp_path_factory, fsdd_source) -> dict:
    """fsdd-mnist built from the local source with the default speakers and seed (its summary)."""
    from ibdc_cli.data.fsdd_mnist import build_fsdd_mnist

    return build_fsdd_mnist(tmp_path_factory.mktemp("fsdd-mnist") / "data", source=fsdd_source)


def record_shard_hashes(store: Path) -> Path:
    """Re-record the SHA-256 of every shard of `store` in its index.json, after a test edited a shard on
    purpose (so that what the test changed is the only thing wrong with the store)."""
    import json

    from ibdc_cli.store import file_sha256

    index = json.loads((store / "index.json").read_text())
    for shard in index["shards"]:
        shard["sha256"] = file_sha256(store / shard["file"])
    (store / "index.json").write_text(json.dumps(index))
    return store
