"""Write the golden fixture of tests/test_golden.py: a small labelled store and the synthetic sets that
`ibdc condense` made from it, one per configuration in CASES.

Run from the checkout root (`.venv/bin/python tests/golden/make_golden.py`) only when a change is *meant*
to alter condensation results; the test then compares every later change against these tensors bit for bit.
The sets were first written by main at d8cc1ea, before "one home for every option" reshaped the code.

Floating-point results are bit-identical only on the kind of CPU (and torch build) that wrote the sets.
`make_golden.py --record-host` condenses every case on this machine and records, in made_on.json under
"elsewhere", this CPU kind's own digest of each set (its tensors and loss history, `set_digest`); the test
then holds that CPU kind to its own digests bit for bit, and to the fixture to 1e-5. Record a host only
with code that the fixture's own CPU kind reproduces bit for bit (the test passing there), so the digests
are what the fixture's code computes on this CPU kind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from ibdc_cli.runtime import cpu_info  # noqa: E402
from ibdc_cli.store import atomic_save_tensors, atomic_write_json, file_sha256, load_synthetic_set  # noqa: E402

# name -> extra `ibdc condense` options (besides STORE --modalities audio,image,text --dpc 2 --iterations 12)
CASES: dict[str, list[str]] = {
    "imagebinddc-default": [],
    "imagebinddc-paper-terms": [
        "--cross-form",
        "paper",
        "--joint-form",
        "paper",
        "--freq-bank",
        "0",
        "--cf-reduction",
        "ncfm",
        "--space-map",
        "center",
        "--optimizer",
        "sgd",
        "--lr",
        "2.0",
        "--real-batch",
        "8",
    ],
    "imagebinddc-hybrid-noise": [
        "--cross-form",
        "hybrid",
        "--joint-form",
        "paper-cos",
        "--init",
        "noise",
        "--num-freqs",
        "64",
        "--sigma",
        "0.5",
        "--seed",
        "3",
        "--space-map",
        "none",
    ],
    "imagebinddc-herding-init": [
        "--init",
        "herding",
        "--freq-bank",
        "4",
        "--alpha",
        "0.8",
        "--beta",
        "0.2",
        "--lambda-cross",
        "0.5",
        "--lambda-joint",
        "2.0",
    ],
    "dm": ["--method", "dm"],
    "avdd": ["--method", "avdd", "--lambda-cross", "0.3", "--lambda-joint", "0.7"],
    "herding": ["--method", "herding"],
    "kcenter": ["--method", "kcenter"],
    "random": ["--method", "random", "--seed", "5"],
}
BASE = ["--modalities", "audio,image,text", "--dpc", "2", "--iterations", "12"]
CLASSES, PER_CLASS, DIM = 3, 10, 16


def write_store(path: Path) -> Path:
    """3 classes x 10 rows of audio, image and text unit vectors (D = 16), each class around its own mean."""
    generator = torch.Generator().manual_seed(0)
    n = CLASSES * PER_CLASS
    labels = torch.arange(n) % CLASSES
    tensors = {}
    for m in ("audio", "image", "text"):
        means = torch.randn(CLASSES, DIM, generator=generator)
        tensors[m] = torch.nn.functional.normalize(
            means[labels] + 0.7 * torch.randn(n, DIM, generator=generator), dim=-1
        )
    tensors.update(labels=labels, row=torch.arange(n))
    path.mkdir(parents=True)
    atomic_save_tensors(path / "shard-00000.safetensors", tensors)
    encoder = {"preset": "imagebind_tiny", "weights": "random-init", "seed": 0}
    index = {
        "format": "ibdc-store",
        "format_version": 1,
        "num_rows": n,
        "modalities": {m: DIM for m in ("audio", "image", "text")},
        "class_names": [f"c{c}" for c in range(CLASSES)],
        "labeled": True,
        "encoder": encoder,
        "manifest": {"path": "none.csv", "sha256": "0" * 64, "rows": n},
        "shards": [
            {"file": "shard-00000.safetensors", "rows": n, "sha256": file_sha256(path / "shard-00000.safetensors")}
        ],
    }
    atomic_write_json(path / "index.json", index)
    return path


def host_facts() -> dict:
    """What decides whether this machine's floats can match the fixture's bit for bit."""
    return {
        "cpu": cpu_info()["kind"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__.split("+")[0],
    }


def set_digest(tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """SHA-256 of a synthetic set (`store.load_synthetic_set`): its tensors (name, dtype, shape, bytes, in
    name order) and its loss history."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    digest.update(json.dumps(meta["loss_history"], sort_keys=True).encode())
    return digest.hexdigest()


def condense_cases(store: Path, out: Path) -> None:
    from ibdc_cli.cli import main as ibdc

    for name, extra in CASES.items():
        try:
            ibdc(["-q", "condense", str(store), *BASE, *extra, "--out", str(out / f"{name}.safetensors")])
        except SystemExit as exc:
            if exc.code:
                raise


def record_host(note: str) -> None:
    """Add this CPU kind's digests of every case to made_on.json's "elsewhere" (replacing its old entry)."""
    made_on = json.loads((HERE / "made_on.json").read_text())
    facts = host_facts()
    with tempfile.TemporaryDirectory() as tmp:
        condense_cases(HERE / "store", Path(tmp))
        digests = {name: set_digest(*load_synthetic_set(Path(tmp) / f"{name}.safetensors")) for name in CASES}
    others = [e for e in made_on.get("elsewhere", []) if {k: e[k] for k in facts} != facts]
    made_on["elsewhere"] = others + [{**facts, "note": note, "sets_sha256": digests}]
    (HERE / "made_on.json").write_text(json.dumps(made_on, indent=2) + "\n")


def main() -> None:
    torch.set_num_threads(1)
    if sys.argv[1:2] == ["--record-host"]:
        record_host(" ".join(sys.argv[2:]))
        return
    store = HERE / "store"
    shutil.rmtree(store, ignore_errors=True)
    write_store(store)
    sets = HERE / "sets"
    shutil.rmtree(sets, ignore_errors=True)
    sets.mkdir()
    condense_cases(store, sets)
    (HERE / "made_on.json").write_text(json.dumps(host_facts(), indent=2) + "\n")


if __name__ == "__main__":
    main()
