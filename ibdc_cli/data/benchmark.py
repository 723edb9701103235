"""Small real benchmark datasets, built on the fly from what ships with the stack (SPEC §6).

- `build_av_digits`: scikit-learn's handwritten digits (images) paired within class with the spoken digit
  name (audio) and a short caption (text); labelled, for classification.
- `build_spoken_numbers`: spoken numbers 0-999 (audio) paired with the number in words (text); unlabelled,
  for retrieval.

Speech comes from espeak-ng. A "speaker" is one espeak-ng voice + variant (accent + voice quality), and
train and test use disjoint speakers, so a test score measures generalisation to unheard voices rather
than recall of memorised recordings.

Layout of `out_dir` (paths in the manifests are relative to it):

    train.csv  test.csv     the manifests (written last, atomically)
    dataset.json            build parameters, speakers per split, row counts (the "complete" marker)
    README.txt              what this is, sources, speakers, counts
    images/NNNN.png         av-digits only: 32x32 grayscale, NNNN = index in `load_digits()`
    audio/VOICE/WORD-sSPEED-pPITCH.wav     16 kHz mono PCM16, VOICE = espeak-ng voice with "+" -> "_"

Example:

    >>> manifests = build_av_digits(Path("~/.cache/ibdc/av-digits").expanduser())
    >>> manifests["train"]
    PosixPath('/home/me/.cache/ibdc/av-digits/train.csv')
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image
from scipy.signal import resample_poly
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ibdc_cli.errors import IbdcError

PENDING_MARKER = ".build.json"  # the parameters of a build in progress (removed when dataset.json is written)

# Bump when the content of a build changes (voices, styles, file layout), so old caches are rebuilt.
DATASET_VERSION = 1

SAMPLE_RATE = 16_000  # ImageBind's audio rate: writing it directly spares every reader a resample
IMAGE_SIZE = 32  # the 8x8 digits upscaled (nearest) so that image viewers and thumbnails show them
SPLITS = ("train", "test")
TEST_FRACTION = 0.2
SYNTH_WORKERS = 2  # parallel espeak-ng calls: each is ~10 ms of one core, and CI machines have few

# Speakers as espeak-ng "language+variant". Test variants (m6, m7, f5, klatt3) are never used in
# training, so test voices differ in quality, not just accent. Each was checked to give audio distinct
# from every other entry: beware that "en-gb+VARIANT" silently ignores the variant (use "en+VARIANT"),
# and that an unknown variant silently falls back to the default voice (hence `missing_voices`).
TRAIN_VOICES = (
    "en+m1",
    "en-us+m2",
    "en-gb-scotland+m3",
    "en-gb-x-rp+m4",
    "en-029+m5",
    "en-us-nyc+m8",
    "en-gb-x-gbclan+f1",
    "en-us+f2",
    "en+f3",
    "en-gb-x-rp+f4",
    "en-gb-x-gbcwmd+klatt",
    "en-us+klatt2",
)
TEST_VOICES = ("en-gb-x-gbcwmd+m6", "en-us-nyc+f5", "en-gb-scotland+m7", "en-029+klatt3")

# (words per minute, pitch 0-99): several recordings per speaker and word, as people vary between takes.
SPEAKING_STYLES = ((130, 40), (160, 60), (190, 30), (220, 70))

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
DIGIT_NAMES = tuple(_ONES[:10])
CAPTION_TEMPLATES = ("{}", "the number {}", "a handwritten {}", "digit {}", "the digit {}", "a picture of {}")

Progress = Callable[[int, int], None]


def number_to_words(n: int) -> str:
    """Spell 0..999 in English words, without "and": 312 -> "three hundred twelve", 99 -> "ninety-nine"."""
    if not 0 <= n <= 999:
        raise ValueError(f"number_to_words handles 0..999, got {n}")
    hundreds, rest = divmod(n, 100)
    words = [f"{_ONES[hundreds]} hundred"] if hundreds else []
    if rest or not hundreds:
        tens, ones = divmod(rest, 10)
        words.append(_ONES[rest] if rest < 20 else _TENS[tens] + (f"-{_ONES[ones]}" if ones else ""))
    return " ".join(words)


# --------------------------------------------------------------------------------------------- datasets


def build_av_digits(
    out_dir: Path,
    *,
    per_class: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, Path]:
    """Build the audio-visual digits dataset (image, audio, text, label) under `out_dir`.

    1797 8x8 digit images (sklearn `load_digits`), split 80/20 stratified by `seed`; each row gets a
    recording of its own class's name by a speaker of its split, and a caption of its class.
    `per_class` caps the rows per class in each split (None: all, ~144 train / ~36 test per class).
    `progress(done, total)` is called as recordings are synthesised. Returns {"train": csv, "test": csv}.
    A second call with the same arguments returns at once; a folder holding another build is refused
    unless `overwrite` (see `begin_build`).
    """
    if per_class is not None and per_class < 1:
        raise IbdcError(f"per_class must be at least 1, got {per_class}")
    out_dir = Path(out_dir)
    params = {"name": "av-digits", "version": DATASET_VERSION, "per_class": per_class, "seed": seed}
    if begin_build(out_dir, params, overwrite=overwrite):
        return _manifest_paths(out_dir)
    espeak = _require_espeak(TRAIN_VOICES + TEST_VOICES)

    digits = load_digits()
    labels = digits.target
    train, test = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=seed)
    rng = np.random.default_rng(seed)
    rows: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    jobs: dict[str, list[SpeechJob]] = {split: [] for split in SPLITS}
    for split, indices, voices in (("train", train, TRAIN_VOICES), ("test", test, TEST_VOICES)):
        for i in sorted(_first_per_class(indices, labels, per_class)):
            label = DIGIT_NAMES[labels[i]]
            image = out_dir / "images" / f"{i:04d}.png"
            if not image.exists():
                _write_digit_png(image, digits.images[i])
            job = _speech_job(out_dir, label, voices, rng)
            jobs[split].append(job)
            caption = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))].format(label)
            rows[split].append(
                {
                    "id": f"digit-{i:04d}",
                    "image": _rel(image, out_dir),
                    "audio": _rel(job.path, out_dir),
                    "text": caption,
                    "label": label,
                }
            )
    synthesize([job for split_jobs in jobs.values() for job in split_jobs], espeak=espeak, progress=progress)

    readme = (
        "av-digits: a small real audio-visual benchmark built by ibdc (ibdc_cli/data/benchmark.py).\n\n"
        "Each row pairs a handwritten digit image with a recording of the digit's name spoken by an\n"
        "espeak-ng voice and a short caption, within class. Train and test speakers are disjoint.\n\n"
        "Sources:\n"
        "  images: scikit-learn load_digits (UCI Optical Recognition of Handwritten Digits, Alpaydin &\n"
        "          Kaynak 1998), 8x8 values 0..16 mapped to 0..255, upscaled to 32x32 (nearest).\n"
        f"  audio:  {_espeak_version(espeak)}, resampled to {SAMPLE_RATE} Hz mono PCM16.\n"
    )
    _finish_build(out_dir, params, rows, ["id", "image", "audio", "text", "label"], jobs, readme)
    return _manifest_paths(out_dir)


def build_spoken_numbers(
    out_dir: Path,
    *,
    count: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, Path]:
    """Build the spoken-numbers retrieval dataset (audio, text) under `out_dir`.

    The numbers 0..999 are shuffled by `seed`; 800 go to train and the other 200 to test, each spoken
    once by a voice of its split and paired with its words (`number_to_words`), so every pair is unique
    and the splits share neither numbers nor speakers. `count` caps the total rows (80/20 over the
    splits). No label column: retrieval data is unlabelled. Returns {"train": csv, "test": csv}.
    """
    if count is not None and not 2 <= count <= 1000:
        raise IbdcError(f"count must be between 2 and 1000 (one row per number and split), got {count}")
    out_dir = Path(out_dir)
    params = {"name": "spoken-numbers", "version": DATASET_VERSION, "count": count, "seed": seed}
    if begin_build(out_dir, params, overwrite=overwrite):
        return _manifest_paths(out_dir)
    espeak = _require_espeak(TRAIN_VOICES + TEST_VOICES)

    rng = np.random.default_rng(seed)
    numbers = rng.permutation(1000)
    n_test = max(1, round((count or 1000) * TEST_FRACTION))
    n_train = (count or 1000) - n_test
    # train from the front of the shuffle, test from the back: the splits never share a number
    train, test = numbers[:n_train], numbers[len(numbers) - n_test :]
    rows: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    jobs: dict[str, list[SpeechJob]] = {split: [] for split in SPLITS}
    for split, split_numbers, voices in (("train", train, TRAIN_VOICES), ("test", test, TEST_VOICES)):
        for n in sorted(int(n) for n in split_numbers):
            job = _speech_job(out_dir, number_to_words(n), voices, rng, stem=f"{n:03d}")
            jobs[split].append(job)
            rows[split].append({"id": f"number-{n:03d}", "audio": _rel(job.path, out_dir), "text": job.text})
    synthesize([job for split_jobs in jobs.values() for job in split_jobs], espeak=espeak, progress=progress)

    readme = (
        "spoken-numbers: a small real audio-text retrieval benchmark built by ibdc\n"
        "(ibdc_cli/data/benchmark.py).\n\n"
        "Each row pairs a recording of a number between 0 and 999, spoken in words by an espeak-ng voice,\n"
        "with the same words as text. Every number appears at most once in the whole dataset, and train\n"
        "and test speakers are disjoint. There are no labels.\n\n"
        f"Source: {_espeak_version(espeak)}, resampled to {SAMPLE_RATE} Hz mono PCM16.\n"
    )
    _finish_build(out_dir, params, rows, ["id", "audio", "text"], jobs, readme)
    return _manifest_paths(out_dir)


def _first_per_class(indices: Iterable[int], labels: np.ndarray, per_class: int | None) -> list[int]:
    """The first `per_class` indices of each class, in the given (already shuffled) order."""
    if per_class is None:
        return list(indices)
    seen: Counter[int] = Counter()
    kept = []
    for i in indices:
        if seen[labels[i]] < per_class:
            seen[labels[i]] += 1
            kept.append(int(i))
    return kept


def _write_digit_png(path: Path, digit: np.ndarray) -> None:
    """Save one `[8, 8]` digit (values 0..16, ink high) as a 32x32 grayscale PNG."""
    pixels = np.round(digit * (255 / 16)).astype(np.uint8)
    image = Image.fromarray(pixels).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(path, lambda tmp: image.save(tmp, format="PNG"))


# ------------------------------------------------------------------------------------------- synthesis


@dataclass(frozen=True)
class SpeechJob:
    """One recording to make: `text` said by espeak-ng `voice` at `speed` wpm and `pitch`, into `path`."""

    text: str
    voice: str
    speed: int
    pitch: int
    path: Path


def _speech_job(
    out_dir: Path, text: str, voices: Sequence[str], rng: np.random.Generator, stem: str | None = None
) -> SpeechJob:
    """Draw a speaker from `voices` and a speaking style; the file name is fixed by (voice, text, style).

    Because the name is a function of the content, rows that draw the same (speaker, word, style) share
    one recording, and a rebuild with other parameters reuses every file it already has.
    """
    voice = voices[rng.integers(len(voices))]
    speed, pitch = SPEAKING_STYLES[rng.integers(len(SPEAKING_STYLES))]
    name = f"{stem or text.replace(' ', '-')}-s{speed}-p{pitch}.wav"
    return SpeechJob(text, voice, speed, pitch, out_dir / "audio" / voice.replace("+", "_") / name)


def synthesize(jobs: Iterable[SpeechJob], *, espeak: str | None = None, progress: Progress | None = None) -> None:
    """Make every job's recording that does not exist yet (16 kHz mono PCM16 WAV), two at a time.

    Jobs with the same path are made once. Each file appears atomically, so an existing file is complete
    and an interrupted build resumes where it stopped.
    """
    unique = {job.path: job for job in jobs}
    todo = [job for job in unique.values() if not job.path.exists()]
    if not todo:
        return
    espeak = espeak or _require_espeak({job.voice for job in todo})
    with ThreadPoolExecutor(max_workers=SYNTH_WORKERS) as pool:
        for done, _ in enumerate(pool.map(functools.partial(_speak, espeak), todo), start=1):
            if progress is not None:
                progress(done, len(todo))


def _speak(espeak: str, job: SpeechJob) -> None:
    job.path.parent.mkdir(parents=True, exist_ok=True)
    raw = job.path.with_name(f".{job.path.name}.{os.getpid()}.espeak.wav")
    command = [espeak, "-v", job.voice, "-s", str(job.speed), "-p", str(job.pitch), "-w", str(raw), job.text]
    result = subprocess.run(command, capture_output=True, text=True)
    try:
        if result.returncode != 0:
            raise IbdcError(f"espeak-ng failed ({' '.join(command)}): {result.stderr.strip()}")
        wave, rate = sf.read(raw, dtype="float32", always_2d=True)
    finally:
        raw.unlink(missing_ok=True)
    # espeak-ng always writes 22050 Hz; resample once here so readers get ImageBind's rate as is.
    g = math.gcd(SAMPLE_RATE, rate)
    wave = np.clip(resample_poly(wave.mean(axis=1), SAMPLE_RATE // g, rate // g), -1.0, 1.0)
    _replace_atomically(job.path, lambda tmp: sf.write(tmp, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV"))


def _require_espeak(voices: Iterable[str]) -> str:
    """The espeak-ng executable, after checking that it knows every voice (it would silently fall back)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise IbdcError(
            "espeak-ng is needed to synthesise the benchmark's speech but is not on PATH; "
            "install it with `apt-get install -y espeak-ng` (or your system's package manager)"
        )
    missing = missing_voices(voices, espeak=espeak)
    if missing:
        raise IbdcError(
            f"{_espeak_version(espeak)} lacks voices {', '.join(missing)}; install a recent espeak-ng (>= 1.50)"
        )
    return espeak


def missing_voices(voices: Iterable[str], *, espeak: str = "espeak-ng") -> list[str]:
    """The entries of `voices` ("language+variant") whose language or variant espeak-ng does not list."""
    languages, variants = _espeak_voice_lists(espeak)
    missing = []
    for voice in voices:
        language, _, variant = voice.partition("+")
        if language not in languages or (variant and variant not in variants):
            missing.append(voice)
    return missing


@functools.lru_cache(maxsize=4)
def _espeak_voice_lists(espeak: str) -> tuple[frozenset[str], frozenset[str]]:
    """(language codes, variant names) from `espeak-ng --voices` and `--voices=variant`."""

    def rows(option: str) -> list[str]:
        out = subprocess.run([espeak, option], capture_output=True, text=True, check=True).stdout
        return out.splitlines()[1:]  # skip the header

    languages = set()
    for line in rows("--voices"):
        fields = line.split()
        if len(fields) >= 2:
            languages.add(fields[1])
            # "Other Languages" such as "(en 2)": the voice also answers to these codes
            languages.update(re.findall(r"\((\S+) \d+\)", line))
    # Columns: Pty Language Age/Gender VoiceName File; a variant is named by its file, "!v/m1" -> "m1"
    variants = {f[4].rpartition("/")[2] for f in map(str.split, rows("--voices=variant")) if len(f) >= 5}
    return frozenset(languages), frozenset(variants)


@functools.lru_cache(maxsize=4)
def _espeak_version(espeak: str) -> str:
    out = subprocess.run([espeak, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"text-to-speech: (\S+)", out)
    return f"espeak-ng {match.group(1)}" if match else "espeak-ng"


# ------------------------------------------------------------------------------------ files and markers


def _manifest_paths(out_dir: Path, params: dict | None = None) -> dict[str, Path]:
    splits = (params or {}).get("splits", SPLITS)
    return {split: out_dir / f"{split}.csv" for split in splits}


def begin_build(out_dir: Path, params: dict, *, overwrite: bool = False) -> bool:
    """Check `out_dir` before a build with `params`; True when it already holds exactly this build.

    A folder holding a different build (finished, or interrupted with other parameters) is refused with
    an error naming it, and left untouched, unless `overwrite`: then that build is deleted first. A
    non-empty folder that is no ibdc build is never deleted. An interrupted build with the same
    parameters (its `.build.json` marker) is continued: files it finished are reused.
    """
    out_dir = Path(out_dir)
    finished, pending = _read_params(out_dir / "dataset.json"), _read_params(out_dir / PENDING_MARKER)
    complete = all(p.is_file() for p in _manifest_paths(out_dir, params).values())
    if finished == params and complete:
        return True
    if finished is None and (pending is None or pending == params):
        if pending is None and out_dir.is_dir() and any(out_dir.iterdir()):
            raise IbdcError(f"{out_dir} is not empty and holds no ibdc dataset build; choose a new or empty folder")
    else:
        other = finished if finished is not None else pending
        if not overwrite:
            changed = ", ".join(f"{k} {other.get(k)!r} -> {v!r}" for k, v in params.items() if other.get(k) != v)
            raise IbdcError(
                f"{out_dir} holds a different build ({changed or 'incomplete'}); pass --overwrite to replace it "
                "or choose another folder"
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Remove the finished marker first: until the new one is written, old manifests must not pass for this build.
    (out_dir / "dataset.json").unlink(missing_ok=True)
    _replace_atomically(out_dir / PENDING_MARKER, lambda tmp: tmp.write_text(json.dumps({"params": params}) + "\n"))
    return False


def finish_build(out_dir: Path, info: dict) -> None:
    """Write the `dataset.json` marker (`info`, with its "params") that says the build is complete."""
    _replace_atomically(out_dir / "dataset.json", lambda tmp: tmp.write_text(json.dumps(info, indent=2) + "\n"))
    (out_dir / PENDING_MARKER).unlink(missing_ok=True)


def _read_params(marker: Path) -> dict | None:
    if not marker.is_file():
        return None
    try:
        params = json.loads(marker.read_text())["params"]
        return params if isinstance(params, dict) else {}
    except (ValueError, KeyError, TypeError):
        return {}  # unreadable: a build of unknown parameters


def _finish_build(
    out_dir: Path,
    params: dict,
    rows: dict[str, list[dict[str, str]]],
    columns: list[str],
    jobs: dict[str, list[SpeechJob]],
    readme: str,
) -> None:
    """Write README, manifests and, last, the dataset.json marker that says the build is complete."""
    speakers = {split: sorted({job.voice for job in split_jobs}) for split, split_jobs in jobs.items()}
    counts = {split: len(split_rows) for split, split_rows in rows.items()}
    styles = ", ".join(f"{speed} wpm/pitch {pitch}" for speed, pitch in SPEAKING_STYLES)
    readme += "\nSpeakers (espeak-ng voice+variant; their directories under audio/ use '_' for '+'):\n"
    readme += "".join(f"  {split}: {', '.join(voices)}\n" for split, voices in speakers.items())
    readme += f"Speaking styles: {styles}\n\n"
    readme += "Rows: " + ", ".join(f"{split} {n}" for split, n in counts.items()) + "\n"
    readme += f"Columns: {','.join(columns)} (media paths are relative to this directory)\n"
    readme += f"Build parameters: {json.dumps(params)}\n"
    _replace_atomically(out_dir / "README.txt", lambda tmp: tmp.write_text(readme))
    for split, path in _manifest_paths(out_dir).items():
        write_manifest(path, rows[split], columns)
    finish_build(out_dir, {"params": params, "speakers": speakers, "counts": counts, "columns": columns})


def write_manifest(path: Path, rows: Sequence[dict[str, str]], columns: Sequence[str]) -> None:
    """Write `rows` as a CSV manifest with `columns`, atomically (readers never see half a file)."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)

    _replace_atomically(path, write)


def _replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it onto `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
