"""Cases that once gave a wrong result with exit 0, lost work, or a traceback (issue: hardening)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_retrieval import write_store

from ibdc_cli.errors import IbdcError
from ibdc_cli.store import load_synthetic_set, lock_path, output_lock


def _labelled_store(path: Path, classes: int, seed: int) -> Path:
    torch.manual_seed(seed)
    return write_store(
        path, {"audio": torch.randn(40 * classes, 16), "image": torch.randn(40 * classes, 16)}, classes=classes
    )


def test_output_lock_refuses_a_second_holder_and_is_released(tmp_path):
    out = tmp_path / "set.safetensors"
    with output_lock(out):
        assert f"pid {os.getpid()}" in lock_path(out).read_text()
        with pytest.raises(IbdcError, match=r"being written by another ibdc run \(pid \d+"):
            with output_lock(out):
                pass
    assert not lock_path(out).exists()
    with output_lock(out):  # free again
        pass


def test_two_condense_runs_on_one_out(tmp_path):
    """The second writer exits 2 naming the first; the first's set is its own, whole and correct."""
    first_store = _labelled_store(tmp_path / "three", classes=3, seed=0)
    second_store = _labelled_store(tmp_path / "five", classes=5, seed=1)
    out = tmp_path / "set.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "ibdc_cli", "condense", "-m", "audio,image", "--dpc", "2", "--out", str(out)]
    first = subprocess.Popen(
        [*command, str(first_store), "--iterations", "400", "--freq-bank", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not lock_path(out).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()
    second = subprocess.run([*command, str(second_store), "--iterations", "5"], env=env, capture_output=True, text=True)
    assert second.returncode == 2, second.stderr
    assert "being written by another ibdc run" in second.stderr and "Traceback" not in second.stderr
    assert f"pid {first.pid}" in second.stderr
    out_text, err_text = first.communicate(timeout=600)
    assert first.returncode == 0, err_text
    tensors, meta = load_synthetic_set(out)
    assert meta["class_names"] == ["c0", "c1", "c2"] and sorted(set(tensors["labels"].tolist())) == [0, 1, 2]
    assert not lock_path(out).exists() and not (tmp_path / ".set.safetensors.partial").exists()


# ----------------------------------------------------------------------------------------------------
# bad input, one row per case: (setup(tmp) -> (command args, files that must stay as they are), exit code,
# phrase the message must hold). Every case once gave a wrong result with exit 0, lost work, or a traceback.


def _store(tmp: Path, name: str = "store", classes: int = 3, **change) -> Path:
    path = _labelled_store(tmp / name, classes=classes, seed=0)
    if change:
        import json

        index = json.loads((path / "index.json").read_text())
        for key, value in change.items():
            if value is None:
                index.pop(key)
            else:
                index[key] = value
        (path / "index.json").write_text(json.dumps(index))
    return path


def _reshard(store: Path, **tensors) -> Path:
    """Rewrite the store's shard with `tensors` replaced, and record the new shard's SHA-256 (so only the
    change itself is wrong)."""
    import json

    from safetensors.torch import load_file

    from ibdc_cli.store import atomic_save_tensors, file_sha256

    shard = store / "shard-00000.safetensors"
    data = load_file(shard)
    data.update(tensors)
    atomic_save_tensors(shard, data)
    index = json.loads((store / "index.json").read_text())
    index["shards"][0]["sha256"] = file_sha256(shard)
    (store / "index.json").write_text(json.dumps(index))
    return store


def _swapped_shard(tmp: Path):
    one, other = _store(tmp, "one"), _labelled_store(tmp / "other", classes=3, seed=5)
    (one / "shard-00000.safetensors").write_bytes((other / "shard-00000.safetensors").read_bytes())
    return ["condense", one, "-m", "audio,image", "--dpc", "2", "--iterations", "2", "--out", tmp / "s.safetensors"], [
        one
    ]


def _condense(tmp: Path, *extra, store: Path | None = None):
    store = store or _store(tmp)
    return [
        "condense",
        store,
        "-m",
        "audio,image",
        "--dpc",
        "2",
        "--iterations",
        "3",
        "--out",
        tmp / "s.safetensors",
        *extra,
    ], [store]


def _manifest_with_labels(tmp: Path, labels: list[str]) -> Path:
    from conftest import write_image, write_manifest

    rows = [{"image": write_image(tmp / f"i{k}.png", seed=k).name, "label": label} for k, label in enumerate(labels)]
    return write_manifest(tmp / "m.csv", rows)


def _embed(tmp: Path, manifest: Path, *extra):
    return ["embed", manifest, "-m", "image", "--workers", "0", "--out", tmp / "store", *extra], [manifest]


def _set_and_store(tmp: Path, set_change=None, store_kwargs=None):
    from ibdc_cli.condense import CondenseConfig
    from ibdc_cli.condense import condense as condense_store

    store = _store(tmp)
    out = tmp / "set.safetensors"
    condense_store(store, out, CondenseConfig(modalities=["audio", "image"], dpc=2, iterations=2))
    if set_change:
        set_change(out)
    test = _labelled_store(tmp / "test", **(store_kwargs or {"classes": 3, "seed": 2}))
    return ["evaluate", out, "--test", test, "--seeds", "1"], [out, test]


def _reshape_set(path: Path) -> None:
    from safetensors import safe_open

    from ibdc_cli.store import atomic_save_tensors

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    tensors["audio"] = tensors["audio"][:, :8]
    atomic_save_tensors(path, tensors, metadata=metadata)


def _edit_set_metadata(path: Path, **change) -> None:
    import json

    from safetensors import safe_open

    from ibdc_cli.store import atomic_save_tensors

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["ibdc"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    for key, value in change.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    atomic_save_tensors(path, tensors, metadata={"ibdc": json.dumps(meta)})


def _unlabelled_test(tmp: Path):
    from ibdc_cli.condense import CondenseConfig
    from ibdc_cli.condense import condense as condense_store

    store = _store(tmp)
    out = tmp / "set.safetensors"
    condense_store(store, out, CondenseConfig(modalities=["audio", "image"], dpc=2, iterations=2))
    test = write_store(tmp / "test", {"audio": torch.randn(30, 16), "image": torch.randn(30, 16)})
    return ["evaluate", out, "--test", test, "--seeds", "1"], [out, test]


def _garbage_checkpoint(tmp: Path):
    from safetensors.torch import save_file

    path = tmp / "enc.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"ibdc": "{not json"})
    manifest = _manifest_with_labels(tmp, ["a", "b"])
    return ["embed", manifest, "-m", "image", "--workers", "0", "--checkpoint", path, "--out", tmp / "store"], [path]


CASES = {
    # 2. label identity
    "labels 1 and 01": (lambda t: _embed(t, _manifest_with_labels(t, ["1", "01", "2"])), 2, "same number"),
    "labels 5 and 5.0": (lambda t: _embed(t, _manifest_with_labels(t, ["5", "5.0", "2"])), 2, "same number"),
    # 4. non-finite options
    "--alpha nan": (lambda t: _condense(t, "--alpha", "nan"), 2, "finite"),
    "--lr nan": (lambda t: _condense(t, "--lr", "nan"), 2, "finite"),
    "--sigma inf": (lambda t: _condense(t, "--sigma", "inf"), 2, "finite"),
    "--lambda-uni -1": (lambda t: _condense(t, "--lambda-uni", "-1"), 2, "must not be negative"),
    "--sigma 1e38 (finite, diverges)": (lambda t: _condense(t, "--sigma", "1e38"), 2, "diverged"),
    # 5. store integrity
    "swapped shard": (_swapped_shard, 2, "does not match the SHA-256"),
    "label id outside class_names": (
        lambda t: _condense(t, store=_reshard(_store(t), labels=torch.arange(120) % 4)),
        2,
        "has label id 3",
    ),
    "label id outside class_names, evaluate": (
        lambda t: (
            _set_and_store(t)[0][:3] + [_reshard(_store(t, "bad"), labels=torch.arange(120) % 4), "--seeds", "1"],
            [],
        ),
        2,
        "has label id 3",
    ),
    # 8. tracebacks before
    "index without modalities": (lambda t: _condense(t, store=_store(t, modalities=None)), 2, "no 'modalities'"),
    "index with a wrong type": (lambda t: _condense(t, store=_store(t, num_rows="many")), 2, "'num_rows' is str"),
    "set tensors of the wrong dimension": (lambda t: _set_and_store(t, set_change=_reshape_set), 2, "has dimension 16"),
    "labelled set, unlabelled test store": (_unlabelled_test, 2, "no labels"),
    "--device bogus": (lambda t: _condense(t, "--device", "bogus"), 2, "--device"),
    "embed --workers -1": (
        lambda t: _embed(t, _manifest_with_labels(t, ["a", "b"]), "--workers", "-1"),
        2,
        "--workers",
    ),
    "embed --out onto a file": (
        lambda t: (_embed(t, _manifest_with_labels(t, ["a", "b"]))[0][:-1] + [t / "m.csv"], [t / "m.csv"]),
        2,
        "is a file",
    ),
    "condense --out onto a directory": (
        lambda t: (
            (_condense(t, "--overwrite")[0][:-2] + [t / "adir.safetensors", "--overwrite"], [])
            if (t / "adir.safetensors").mkdir() is None
            else None
        ),
        2,
        "is a directory",
    ),
    "checkpoint with garbage metadata": (_garbage_checkpoint, 2, "metadata"),
    "set metadata without class_names": (
        lambda t: _set_and_store(t, set_change=lambda p: _edit_set_metadata(p, class_names=None)),
        2,
        "'class_names' is missing",
    ),
    "set metadata with a wrong type": (
        lambda t: _set_and_store(t, set_change=lambda p: _edit_set_metadata(p, encoder="tiny")),
        2,
        "'encoder' is str, not dict",
    ),
}


def _fingerprint(paths: list[Path]) -> dict[str, bytes]:
    out = {}
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        out.update({str(p): p.read_bytes() for p in files})
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_touches_nothing(case, tmp_path, cli):
    setup, code, phrase = CASES[case]
    args, keep = setup(tmp_path)
    before = _fingerprint(keep)
    result = cli(*args)
    assert result.code == code, result
    assert phrase in result.err and "Traceback" not in result.err, result
    assert _fingerprint(keep) == before
    assert not list(tmp_path.glob(".*.partial")) and not list(tmp_path.glob(".*.lock"))


# ----------------------------------------------------------------------------------------------------
# lost work


def interrupt_adam_at(monkeypatch, step: int):
    """Make the `step`-th Adam step of the run raise KeyboardInterrupt (Ctrl-C); returns the real step."""
    real_step = torch.optim.Adam.step
    count = {"n": 0}

    def step_then_die(self, *a, **k):
        count["n"] += 1
        if count["n"] == step:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step_then_die)
    return real_step


def test_resume_redoes_a_damaged_part_and_keeps_the_finished_ones(tmp_path, cli, monkeypatch):
    """A damaged class file under --resume is redone, the other finished classes are kept (not deleted),
    and the result equals an uninterrupted run."""
    store = _store(tmp_path, classes=3)
    args = ["condense", store, "-m", "audio,image", "--dpc", "2", "--iterations", "6", "--device", "cpu"]
    assert cli(*args, "--out", tmp_path / "whole.safetensors").code == 0

    real_step = interrupt_adam_at(monkeypatch, 15)  # in class 2: classes 0 and 1 are finished
    out = tmp_path / "resumed.safetensors"
    assert cli(*args, "--out", out).code == 130
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    work = tmp_path / ".resumed.safetensors.partial"
    finished = work / "class-00001.safetensors"
    finished.write_bytes(finished.read_bytes()[:100])  # a copy cut short
    steps = {"n": 0}

    def counted_step(self, *a, **k):
        steps["n"] += 1
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", counted_step)
    resumed = cli(*args, "--out", out, "--resume")
    assert resumed.code == 0, resumed
    assert "class-00001.safetensors is damaged; redoing that part" in resumed.err
    assert steps["n"] == 2 * 6  # classes 1 (damaged) and 2 (unfinished) again; class 0's file was kept
    whole, _ = load_synthetic_set(tmp_path / "whole.safetensors")
    again, _ = load_synthetic_set(out)
    assert all(torch.equal(whole[k], again[k]) for k in whole)


def test_resume_error_keeps_finished_work(tmp_path, cli, monkeypatch):
    """A resumed run that fails (bad job file) reports it and deletes nothing."""
    store = _store(tmp_path, classes=3)
    args = ["condense", store, "-m", "audio,image", "--dpc", "2", "--iterations", "6", "--device", "cpu"]
    real_step = interrupt_adam_at(monkeypatch, 9)
    out = tmp_path / "s.safetensors"
    assert cli(*args, "--out", out).code == 130
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    work = tmp_path / ".s.safetensors.partial"
    (work / "job.json").write_text("{damaged")
    before = sorted(p.name for p in work.iterdir())
    result = cli(*args, "--out", out, "--resume")
    assert result.code == 2 and "job.json is damaged" in result.err, result
    assert sorted(p.name for p in work.iterdir()) == before and "class-00000.safetensors" in before


def test_embed_overwrite_swaps_atomically(tmp_path, cli, monkeypatch):
    """--overwrite puts the new store in place before the old one is deleted; when the swap fails, the old
    store is back in place, whole."""
    from conftest import write_image, write_manifest

    rows = [{"image": write_image(tmp_path / f"i{k}.png", seed=k).name, "label": "ab"[k % 2]} for k in range(4)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    store = tmp_path / "store"
    assert cli("embed", manifest, "-m", "image", "--workers", "0", "--out", store).code == 0
    old = {p.name: p.read_bytes() for p in store.iterdir()}
    real_rename = Path.rename

    def failing_rename(self, target):
        if Path(target) == store and self.name == "store":  # the new store moving in
            raise OSError("disk gone")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="disk gone"):
        cli("embed", manifest, "-m", "image", "--workers", "0", "--out", store, "--overwrite")
    monkeypatch.setattr(Path, "rename", real_rename)
    assert {p.name: p.read_bytes() for p in store.iterdir()} == old
    assert not list(tmp_path.glob(".store.old-*"))
    assert cli("embed", manifest, "-m", "image", "--workers", "0", "--out", store, "--overwrite").code == 0
    assert not list(tmp_path.glob(".store.old-*"))


# ----------------------------------------------------------------------------------------------------
# media


def test_16_bit_png_keeps_its_grey_levels(tmp_path):
    import numpy as np
    from PIL import Image

    from ibdc_cli.data.preprocess import load_image

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    Image.fromarray((ramp // 257).astype(np.uint8)).save(tmp_path / "ramp8.png")
    sixteen, eight = load_image(tmp_path / "ramp16.png"), load_image(tmp_path / "ramp8.png")
    assert sixteen.unique().numel() > 200  # clipped at 255, it had 2 levels
    assert torch.allclose(sixteen, eight, atol=0.02)  # the same picture as its 8-bit copy


def test_truncated_wav_is_a_media_error(tmp_path, cli):
    from conftest import write_manifest, write_wav

    from ibdc_cli.data.preprocess import MediaError, decode_audio

    whole = write_wav(tmp_path / "whole.wav", 1.0)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    assert decode_audio(whole)[0].numel() == 16_000
    with pytest.raises(MediaError, match=r"truncated: .*cut.wav holds \d+ of the 16000 frames"):
        decode_audio(cut)
    manifest = write_manifest(
        tmp_path / "m.csv", [{"audio": "whole.wav", "label": "a"}, {"audio": "cut.wav", "label": "b"}]
    )
    result = cli("embed", manifest, "-m", "audio", "--workers", "0", "--out", tmp_path / "s")
    assert result.code == 2 and "row 1" in result.err and "truncated" in result.err, result
    skipped = cli("embed", manifest, "-m", "audio", "--workers", "0", "--out", tmp_path / "s", "--skip-bad")
    assert skipped.code == 0 and "1 row" in skipped.out + skipped.err, skipped


def test_decompression_bomb_and_long_strip(tmp_path, cli, monkeypatch):
    import numpy as np
    from conftest import write_image, write_manifest
    from PIL import Image

    from ibdc_cli.data.preprocess import load_image, load_map

    Image.fromarray(np.zeros((1, 10_000), np.uint8)).save(tmp_path / "strip.png")
    assert load_image(tmp_path / "strip.png").shape == (3, 224, 224)  # bounded: never 2.2 million pixels wide
    np.save(tmp_path / "strip.npy", np.random.default_rng(0).random((1, 10_000)).astype(np.float32))
    assert load_map(tmp_path / "strip.npy").shape == (1, 224, 224)  # depth/thermal maps alike
    write_image(tmp_path / "big.png", size=(300, 300))
    write_image(tmp_path / "ok.png", size=(30, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 300 x 300 is then a "bomb", as 14000 x 14000 is
    manifest = write_manifest(
        tmp_path / "m.csv", [{"image": "ok.png", "label": "a"}, {"image": "big.png", "label": "b"}]
    )
    result = cli("embed", manifest, "-m", "image", "--workers", "0", "--out", tmp_path / "s")
    assert result.code == 2 and "row 1" in result.err and "too large to decode safely" in result.err, result
    skipped = cli("embed", manifest, "-m", "image", "--workers", "0", "--out", tmp_path / "s", "--skip-bad")
    assert skipped.code == 0, skipped


def test_bad_row_in_one_rank_stops_both_with_one_line(tmp_path):
    """torchrun, 2 processes: row 3 is in rank 1's chunk. Both ranks end with ibdc's one-line error (no
    gloo traceback in either), and, as with one process, nothing is left behind."""
    from conftest import write_image, write_manifest

    rows = [{"image": write_image(tmp_path / f"i{k}.png", seed=k).name, "label": "ab"[k % 2]} for k in range(6)]
    (tmp_path / "i3.png").write_bytes(b"not a png")
    manifest = write_manifest(tmp_path / "m.csv", rows)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "ibdc_cli", "embed"]
    args = [str(manifest), "-m", "image", "--workers", "0", "--chunk-rows", "2", "--out", str(tmp_path / "store")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("ibdc: error:")]
    assert len(lines) == 2 and all("row 3" in line for line in lines), result.stderr
    assert "gloo" not in result.stderr.lower() and "ibdc_cli/" not in result.stderr, result.stderr
    assert not (tmp_path / "store").exists()
    assert not list(tmp_path.glob(".store.*")), list(tmp_path.glob(".store.*"))


def test_unwritable_output_folder_is_one_line(tmp_path, cli, monkeypatch):
    """A read-only folder (simulated: this suite may run as root, whom permissions do not stop)."""
    import errno

    import ibdc_cli.store as store_module

    def refuse(path, mode="r", *args, **kwargs):
        if "r" in mode:
            return open(path, mode, *args, **kwargs)
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    args, _ = _condense(tmp_path)
    monkeypatch.setattr(store_module, "open", refuse, raising=False)  # the lock file is the first write
    result = cli(*args)
    assert result.code == 2 and ".s.safetensors.lock: Permission denied" in result.err, result
    assert "Traceback" not in result.err and not (tmp_path / "s.safetensors").exists()


def test_labels_that_look_numeric_but_are_names(tmp_path):
    from ibdc_cli.data.manifest import read_manifest

    manifest = _manifest_with_labels(tmp_path, ["--5", "²", "7", "--5"])
    read = read_manifest(manifest, ["image"])
    assert read.class_names == ["--5", "7", "²"] and read.labels == [0, 2, 1, 0]
    numbers = _manifest_with_labels(tmp_path, ["10", "2", "007"])
    assert read_manifest(numbers, ["image"]).class_names == ["2", "7", "10"]


def test_jsonl_integral_numbers_are_one_label(tmp_path):
    import json

    from conftest import write_image

    from ibdc_cli.data.manifest import read_manifest

    rows = [
        {"image": write_image(tmp_path / f"i{k}.png", seed=k).name, "label": label}
        for k, label in enumerate([5, "5", 5.0, 3])
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    read = read_manifest(path, ["image"])
    assert read.class_names == ["3", "5"] and read.labels == [1, 1, 1, 0]


def test_float16_store_condenses_like_its_float32_copy(tmp_path, cli):
    """A float16 shard (another tool's store) is read as float32: a finite set, not NaN."""
    from safetensors.torch import load_file

    store = _store(tmp_path)
    data = load_file(store / "shard-00000.safetensors")
    _reshard(store, audio=data["audio"].half(), image=data["image"].half())
    args, _ = _condense(tmp_path, store=store)
    result = cli(*args)
    assert result.code == 0, result
    tensors, _ = load_synthetic_set(tmp_path / "s.safetensors")
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
