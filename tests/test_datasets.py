"""The benchmark datasets (ibdc_cli/data/benchmark.py): real media, sound manifests, disjoint speakers."""

import csv
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from ibdc_cli.data.benchmark import (
    DIGIT_NAMES,
    TEST_VOICES,
    TRAIN_VOICES,
    build_av_digits,
    build_spoken_numbers,
    missing_voices,
    number_to_words,
)
from ibdc_cli.errors import IbdcError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

PER_CLASS = 2
COUNT = 20


def read_manifest(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def speaker(audio: str) -> str:
    """The espeak-ng voice of a recording, from its directory (audio/VOICE/...; '+' written as '_')."""
    return Path(audio).parent.name.replace("_", "+")


def check_audio(path: Path) -> None:
    wave, rate = sf.read(path, dtype="float32")
    assert rate == 16_000 and wave.ndim == 1, path
    assert len(wave) > 0.2 * rate, path
    assert np.sqrt(np.mean(wave**2)) > 0.01, f"{path} is silent"


def file_times(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def av_digits(tmp_path_factory) -> dict[str, Path]:
    return build_av_digits(tmp_path_factory.mktemp("av-digits"), per_class=PER_CLASS, seed=0)


@pytest.fixture(scope="module")
def spoken_numbers(tmp_path_factory) -> dict[str, Path]:
    return build_spoken_numbers(tmp_path_factory.mktemp("spoken-numbers"), count=COUNT, seed=0)


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (40, "forty"),
        (99, "ninety-nine"),
        (100, "one hundred"),
        (312, "three hundred twelve"),
        (999, "nine hundred ninety-nine"),
    ],
)
def test_number_to_words(n, words):
    assert number_to_words(n) == words


def test_number_to_words_range():
    assert len({number_to_words(n) for n in range(1000)}) == 1000
    with pytest.raises(ValueError):
        number_to_words(1000)


@needs_espeak
def test_voices_exist_are_distinct_and_split_disjoint(tmp_path):
    assert len(TRAIN_VOICES) >= 12 and len(TEST_VOICES) >= 4
    assert not set(TRAIN_VOICES) & set(TEST_VOICES)
    assert missing_voices(TRAIN_VOICES + TEST_VOICES) == []
    assert missing_voices(["en+no-such-variant", "xx-nowhere+m1"]) == ["en+no-such-variant", "xx-nowhere+m1"]
    # espeak-ng falls back silently on voices it cannot apply (e.g. "en-gb+m1" sounds like "en-gb"), so
    # only distinct audio proves that every entry is a different speaker.
    digests = set()
    for voice in TRAIN_VOICES + TEST_VOICES:
        out = tmp_path / "v.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-p", "50", "-w", out, "seven"], check=True)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == len(TRAIN_VOICES) + len(TEST_VOICES)


@needs_espeak
def test_av_digits_manifests_and_media(av_digits):
    root = av_digits["train"].parent
    assert set(av_digits) == {"train", "test"}
    ids, images = [], {}
    for split, path in av_digits.items():
        columns, rows = read_manifest(path)
        assert columns == ["id", "image", "audio", "text", "label"]
        assert sorted(r["label"] for r in rows) == sorted(DIGIT_NAMES * PER_CLASS)
        for row in rows:
            # pairing is within class: the recording says the label, and so does the caption
            assert Path(row["audio"]).name.split("-")[0] == row["label"]
            assert row["label"] in row["text"]
            assert not Path(row["image"]).is_absolute() and not Path(row["audio"]).is_absolute()
            with Image.open(root / row["image"]) as image:
                assert image.mode == "L" and image.size == (32, 32)
                assert np.asarray(image).max() > 100  # ink, not a blank square
            check_audio(root / row["audio"])
        ids += [r["id"] for r in rows]
        images[split] = {r["image"] for r in rows}
    assert len(ids) == len(set(ids))
    assert not images["train"] & images["test"]


@needs_espeak
@pytest.mark.parametrize("dataset", ["av_digits", "spoken_numbers"])
def test_speakers_are_disjoint(dataset, request):
    manifests = request.getfixturevalue(dataset)
    speakers = {split: {speaker(r["audio"]) for r in read_manifest(p)[1]} for split, p in manifests.items()}
    assert speakers["train"] <= set(TRAIN_VOICES)
    assert speakers["test"] <= set(TEST_VOICES)
    info = json.loads((manifests["train"].parent / "dataset.json").read_text())
    assert {split: set(v) for split, v in info["speakers"].items()} == speakers


@needs_espeak
def test_spoken_numbers_pairs(spoken_numbers):
    root = spoken_numbers["train"].parent
    numbers = {}
    for split, path in spoken_numbers.items():
        columns, rows = read_manifest(path)
        assert columns == ["id", "audio", "text"]
        assert len({(r["audio"], r["text"]) for r in rows}) == len(rows)
        assert len({r["text"] for r in rows}) == len(rows)  # each number at most once
        for row in rows:
            assert number_to_words(int(Path(row["audio"]).name.split("-")[0])) == row["text"]
            check_audio(root / row["audio"])
        numbers[split] = {r["text"] for r in rows}
    assert len(numbers["train"]) + len(numbers["test"]) == COUNT
    assert len(numbers["train"]) > len(numbers["test"]) > 0
    assert not numbers["train"] & numbers["test"]


@needs_espeak
@pytest.mark.parametrize(
    ("dataset", "build", "kwargs"),
    [
        ("av_digits", build_av_digits, {"per_class": PER_CLASS, "seed": 0}),
        ("spoken_numbers", build_spoken_numbers, {"count": COUNT, "seed": 0}),
    ],
)
def test_second_call_is_fast_and_writes_nothing(dataset, build, kwargs, request):
    first = request.getfixturevalue(dataset)
    root = first["train"].parent
    before = file_times(root)
    start = time.perf_counter()
    assert build(root, **kwargs) == first
    assert time.perf_counter() - start < 0.5
    assert file_times(root) == before


@needs_espeak
def test_rebuild_when_incomplete_and_refuse_other_parameters_unless_overwrite(tmp_path):
    manifests = build_av_digits(tmp_path, per_class=1, seed=3)
    first = manifests["test"].read_text()
    # A build that stopped before its marker was written is continued, not taken for a complete one.
    marker = tmp_path / "dataset.json"
    (tmp_path / ".build.json").write_text(json.dumps({"params": json.loads(marker.read_text())["params"]}))
    marker.unlink()
    assert build_av_digits(tmp_path, per_class=1, seed=3)["test"].read_text() == first  # and is seeded
    assert marker.is_file() and not (tmp_path / ".build.json").exists()
    before = file_times(tmp_path)
    with pytest.raises(IbdcError, match="holds a different build.*seed 3 -> 4.*--overwrite"):
        build_av_digits(tmp_path, per_class=1, seed=4)
    assert file_times(tmp_path) == before
    build_av_digits(tmp_path, per_class=1, seed=4, overwrite=True)
    assert manifests["test"].read_text() != first
    assert len(read_manifest(manifests["test"])[1]) == 10
    assert not list(tmp_path.rglob(".*.tmp"))


@needs_espeak
def test_progress_reports_synthesis(tmp_path):
    calls = []
    build_spoken_numbers(tmp_path, count=4, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1] == len(calls)


def test_missing_espeak_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no espeak-ng on PATH
    with pytest.raises(IbdcError, match="apt-get install -y espeak-ng"):
        build_spoken_numbers(tmp_path / "out", count=4)


def test_bad_sizes_are_user_errors(tmp_path):
    with pytest.raises(IbdcError, match="per_class"):
        build_av_digits(tmp_path, per_class=0)
    with pytest.raises(IbdcError, match="count"):
        build_spoken_numbers(tmp_path, count=1)
