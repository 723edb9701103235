"""`ibdc embed` and `ibdc inspect STORE`: the store, multi-process equality, resume, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_image, write_manifest, write_wav

from ibdc_cli.store import open_store

FAST = ["--batch-size", "4", "--workers", "0", "--chunk-rows", "4", "--device", "cpu"]


def _load(path: Path) -> dict[str, torch.Tensor]:
    return open_store(path).load()


def _assert_same_store(a: Path, b: Path) -> None:
    da, db = _load(a), _load(b)
    assert da.keys() == db.keys()
    for key in da:
        assert torch.equal(da[key], db[key]), key


def test_embed_writes_store_and_inspect_describes_it(media_manifest, tmp_path, cli):
    out = tmp_path / "store"
    result = cli("embed", media_manifest, "--modalities", "image,audio,text", "--out", out, *FAST)
    assert result.code == 0, result
    assert f"wrote {out}" in result.out
    data = _load(out)
    assert data["image"].shape == (12, 256) and data["audio"].shape == (12, 256) and data["text"].shape == (12, 256)
    assert torch.allclose(data["audio"].norm(dim=-1), torch.ones(12), atol=1e-5)
    assert data["labels"].tolist() == [1, 2, 0] * 4  # bird=0, cat=1, dog=2
    assert data["row"].tolist() == list(range(12))
    index = json.loads((out / "index.json").read_text())
    assert index["class_names"] == ["bird", "cat", "dog"]
    assert index["encoder"]["weights"] == "random-init" and index["encoder"]["seed"] == 0
    assert index["manifest"]["sha256"] and index["ibdc_version"]
    assert index["preprocessing"]["audio"]["mean"] == -4.268
    assert not (tmp_path / ".store.partial").exists()

    info = cli("inspect", out, "--json")
    assert info.code == 0, info
    described = json.loads(info.out)
    assert described["rows_per_class"] == {"bird": 4, "cat": 4, "dog": 4}
    assert described["modalities"] == {"image": 256, "audio": 256, "text": 256}
    human = cli("inspect", out)
    assert "imagebind_tiny" in human.out and "rows per class" in human.out


def test_same_command_twice_gives_identical_store(media_manifest, tmp_path, cli):
    for name in ("a", "b"):
        assert cli("embed", media_manifest, "-m", "audio", "--out", tmp_path / name, *FAST).code == 0
    _assert_same_store(tmp_path / "a", tmp_path / "b")


def test_two_process_torchrun_equals_one_process(media_manifest, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "ibdc_cli",
            "embed",
            str(media_manifest),
            "-m",
            "image,audio",
            "--out",
            str(tmp_path / "one"),
            *FAST,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "ibdc_cli",
            "embed",
            str(media_manifest),
            "-m",
            "image,audio",
            "--out",
            str(tmp_path / "two"),
            *FAST,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    _assert_same_store(tmp_path / "one", tmp_path / "two")


def test_interrupted_embed_resumes_to_the_same_store(media_manifest, tmp_path, cli, monkeypatch):
    assert cli("embed", media_manifest, "-m", "image,audio", "--out", tmp_path / "whole", *FAST).code == 0

    import ibdc_cli.embed as embed_module

    real_chunk = embed_module._embed_chunk
    calls = {"n": 0}

    def chunk_then_ctrl_c(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # Ctrl-C while the second chunk is being embedded
            raise KeyboardInterrupt
        return real_chunk(*args, **kwargs)

    monkeypatch.setattr(embed_module, "_embed_chunk", chunk_then_ctrl_c)
    stopped = cli("embed", media_manifest, "-m", "image,audio", "--out", tmp_path / "resumed", *FAST)
    assert stopped.code == 130 and "--resume" in stopped.err
    partial = tmp_path / ".resumed.partial"
    assert sorted(p.name for p in partial.glob("part-*")) == ["part-000000.safetensors"]
    assert not (tmp_path / "resumed").exists()

    monkeypatch.setattr(embed_module, "_embed_chunk", real_chunk)
    resumed = cli("embed", media_manifest, "-m", "image,audio", "--out", tmp_path / "resumed", *FAST, "--resume")
    assert resumed.code == 0, resumed
    assert "resuming: 1 of 3 chunks" in resumed.err
    _assert_same_store(tmp_path / "whole", tmp_path / "resumed")
    assert not partial.exists()


def test_resume_with_other_settings_is_refused(media_manifest, tmp_path, cli, monkeypatch):
    import ibdc_cli.embed as embed_module

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(embed_module, "_embed_chunk", interrupt)
    assert cli("embed", media_manifest, "-m", "image", "--out", tmp_path / "s", *FAST).code == 130
    monkeypatch.undo()
    result = cli("embed", media_manifest, "-m", "image", "--out", tmp_path / "s", *FAST, "--seed", "5", "--resume")
    assert result.code == 2 and "encoder" in result.err


def _bad_manifest(tmp_path: Path, problem: str) -> tuple[Path, str]:
    """A 4-row manifest with one bad row (row 2); returns the manifest and a text the error must contain."""
    rows = []
    for i in range(4):
        rows.append(
            {
                "image": write_image(tmp_path / f"i{i}.png", seed=i).name,
                "audio": write_wav(tmp_path / f"a{i}.wav", 1.0).name,
                "label": str(i % 2),
            }
        )
    expect = "row 2"
    if problem == "missing file":
        rows[2]["audio"] = "nowhere.wav"
        expect = "nowhere.wav"
    elif problem == "corrupt wav":
        (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
        rows[2]["audio"] = "corrupt.wav"
        expect = "corrupt.wav"
    elif problem == "empty wav":
        (tmp_path / "empty.wav").write_bytes(b"")
        rows[2]["audio"] = "empty.wav"
        expect = "empty.wav"
    elif problem == "unreadable image":
        (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
        rows[2]["image"] = "bad.png"
        expect = "bad.png"
    elif problem == "unsupported format":
        (tmp_path / "notes.txt").write_text("hello")
        rows[2]["audio"] = "notes.txt"
        expect = "unsupported audio format"
    return write_manifest(tmp_path / "m.csv", rows), expect


@pytest.mark.parametrize(
    "problem", ["missing file", "corrupt wav", "empty wav", "unreadable image", "unsupported format"]
)
def test_bad_media_exit_2_names_row_and_path_and_leaves_nothing(tmp_path, cli, problem):
    manifest, expect = _bad_manifest(tmp_path, problem)
    out = tmp_path / "store"
    result = cli("embed", manifest, "-m", "image,audio", "--out", out, *FAST)
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    message = lines[-1]  # the error is one line; before it only the startup line ("ibdc embed: device …")
    assert message.startswith("ibdc: error:") and all(line.startswith("ibdc embed: ") for line in lines[:-1]), lines
    assert "row 2" in message and expect in message
    assert "Traceback" not in result.err
    assert not out.exists() and not (tmp_path / ".store.partial").exists()

    skipped = cli("embed", manifest, "-m", "image,audio", "--out", out, *FAST, "--skip-bad", "--json")
    assert skipped.code == 0, skipped
    summary = json.loads(skipped.out)
    assert summary["rows"] == 3 and [s["row"] for s in summary["skipped"]] == [2]
    assert _load(out)["row"].tolist() == [0, 1, 3]
    assert json.loads((out / "index.json").read_text())["skipped"][0]["row"] == 2


@pytest.mark.parametrize(
    "content, args, expect",
    [
        ("image,colour,label\ni0.png,red,0\n", ["-m", "image"], "unknown column 'colour'"),
        ("image,label\ni0.png,0\n", ["-m", "image,smell"], "unknown modality 'smell'"),
        ("", ["-m", "image"], "is empty"),
        ("image,label\n", ["-m", "image"], "no rows"),
        ("image,label\ni0.png,0\n", ["-m", "audio"], "no 'audio' column"),
    ],
)
def test_bad_manifest_exit_2(tmp_path, cli, content, args, expect):
    write_image(tmp_path / "i0.png")
    (tmp_path / "m.csv").write_text(content)
    result = cli("embed", tmp_path / "m.csv", *args, "--out", tmp_path / "store", *FAST)
    assert result.code == 2, result
    assert expect in result.err and "Traceback" not in result.err
    assert not (tmp_path / "store").exists()


def test_jsonl_manifest_and_vision_alias(tmp_path, cli):
    lines = []
    for i in range(3):
        write_image(tmp_path / f"i{i}.png", seed=i)
        lines.append(json.dumps({"vision": f"i{i}.png", "text": f"caption {i}", "label": i}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    result = cli("embed", tmp_path / "m.jsonl", "-m", "vision,text", "--out", tmp_path / "s", *FAST)
    assert result.code == 0, result
    assert open_store(tmp_path / "s").modalities == {"image": 256, "text": 256}


def test_existing_store_is_not_overwritten_without_flag(media_manifest, tmp_path, cli):
    out = tmp_path / "s"
    assert cli("embed", media_manifest, "-m", "text", "--out", out, *FAST).code == 0
    again = cli("embed", media_manifest, "-m", "text", "--out", out, *FAST)
    assert again.code == 2 and "--overwrite" in again.err
    assert cli("embed", media_manifest, "-m", "text", "--out", out, *FAST, "--overwrite").code == 0


def test_checkpoint_flag_gives_identical_embeddings(media_manifest, tmp_path, cli):
    from ibdc_cli.encoders.imagebind import load_encoder

    torch.save(load_encoder("imagebind_tiny", seed=3).model.state_dict(), tmp_path / "w.pth")
    assert cli("embed", media_manifest, "-m", "image", "--out", tmp_path / "seed3", "--seed", "3", *FAST).code == 0
    assert (
        cli(
            "embed",
            media_manifest,
            "-m",
            "image",
            "--out",
            tmp_path / "ckpt",
            "--checkpoint",
            tmp_path / "w.pth",
            *FAST,
        ).code
        == 0
    )
    _assert_same_store(tmp_path / "seed3", tmp_path / "ckpt")
    assert open_store(tmp_path / "ckpt").encoder["weights"] != "random-init"


def test_inspect_rejects_non_stores(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    result = cli("inspect", tmp_path / "empty")
    assert result.code == 2 and "not an ibdc embedding store" in result.err
