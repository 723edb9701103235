"""`ibdc manifest DIR`: class folders and paired folders as manifests, and their bad layouts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import write_image, write_manifest, write_wav

from ibdc_cli.store import open_store

SMALL = ("--model", "imagebind_tiny", "--device", "cpu", "--workers", "0")


def _class_tree(root: Path) -> Path:
    """root/<label>/<stem>.png + .wav: 2 labels x 2 stems, plus hidden files that must be ignored."""
    for i, (label, stem) in enumerate([("cat", "c2"), ("cat", "c1"), ("dog", "d1"), ("dog", "d2")]):
        (root / label).mkdir(parents=True, exist_ok=True)
        write_image(root / label / f"{stem}.png", size=(20 + 4 * i, 24), seed=i)
        write_wav(root / label / f"{stem}.wav", 0.3 + 0.1 * i, freq=300.0 + 40 * i)
    (root / "cat" / ".DS_Store").write_bytes(b"\0")
    (root / ".cache").mkdir()
    (root / ".cache" / "junk.bin").write_bytes(b"\0")
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_class_folders_make_a_sorted_manifest_that_embeds_like_a_hand_written_one(tmp_path, cli):
    tree = _class_tree(tmp_path / "data")
    made = cli("manifest", tree, "-m", "image,audio", "--out", tmp_path / "m.csv")
    assert made.code == 0, made
    assert made.out.strip() == f"wrote {tmp_path / 'm.csv'} (4 rows, 2 labels)"
    rows = _rows(tmp_path / "m.csv")
    assert [r["id"] for r in rows] == ["c1", "c2", "d1", "d2"]  # sorted by (label, stem)
    assert rows[0] == {"id": "c1", "image": "data/cat/c1.png", "audio": "data/cat/c1.wav", "label": "cat"}

    hand = write_manifest(
        tmp_path / "hand.csv",
        [{"image": f"data/{r['label']}/{r['id']}.png", "audio": f"data/{r['label']}/{r['id']}.wav", **r} for r in rows],
    )
    for name, manifest in (("folders", tmp_path / "m.csv"), ("hand", hand)):
        result = cli("embed", manifest, "-m", "image,audio", "--out", tmp_path / name, *SMALL)
        assert result.code == 0, result
    a, b = open_store(tmp_path / "folders"), open_store(tmp_path / "hand")
    assert a.index["class_names"] == b.index["class_names"] == ["cat", "dog"]
    ta, tb = a.load(), b.load()
    for key in ("image", "audio", "labels", "row"):
        assert torch.equal(ta[key], tb[key]), key

    again = cli("manifest", tree, "-m", "image,audio", "--out", tmp_path / "m.csv")
    assert again.code == 2 and "--overwrite" in again.err
    assert cli("manifest", tree, "-m", "image,audio", "--out", tmp_path / "m.csv", "--overwrite").code == 0


def test_paired_folders_give_the_same_rows_and_a_manifest_inside_dir_is_not_read(tmp_path, cli):
    root = tmp_path / "pairs"
    for i, (label, stem) in enumerate([("b", "x2"), ("a", "x1")]):
        (root / "image" / label).mkdir(parents=True)
        (root / "audio" / label).mkdir(parents=True)
        write_image(root / "image" / label / f"{stem}.png", seed=i)
        write_wav(root / "audio" / label / f"{stem}.flac", 0.2)
    out = root / "m.csv"
    for _ in range(2):  # the second run sees m.csv in DIR and must not take it for media
        result = cli("manifest", root, "-m", "audio,image", "--out", out, "--overwrite")
        assert result.code == 0, result
    assert _rows(out) == [
        {"id": "x1", "audio": "audio/a/x1.flac", "image": "image/a/x1.png", "label": "a"},
        {"id": "x2", "audio": "audio/b/x2.flac", "image": "image/b/x2.png", "label": "b"},
    ]
    (root / "audio" / "b" / "x2.flac").unlink()
    out.unlink()  # any file but --out itself at DIR's top level is refused
    unpaired = cli("manifest", root, "-m", "audio,image", "--out", tmp_path / "u.csv")
    assert unpaired.code == 2 and "b/x2 has no audio file" in unpaired.err and not (tmp_path / "u.csv").exists()
    allowed = cli("manifest", root, "-m", "audio,image", "--out", tmp_path / "u.jsonl", "--allow-unpaired")
    assert allowed.code == 0, allowed
    assert '"audio": ""' in (tmp_path / "u.jsonl").read_text().splitlines()[1]


@pytest.mark.parametrize(
    ("problem", "expect"),
    [
        ("unknown type", "notes.pdf: not a file type of --modalities image,audio"),
        ("two labels", "stem 'c1' is under two labels, 'cat' and 'dog'"),
        ("unpaired", "cat/c1 has no audio file"),
        ("loose file", "loose.png: a file where label folders belong"),
        ("nested", "deeper: a folder inside label folder 'cat'"),
        ("same number", "labels '01' (row 0) and '1' (row 2) are the same number"),
        ("two files", "a second image file of cat/c1"),
    ],
)
def test_bad_layouts_exit_2_naming_the_file_and_write_nothing(tmp_path, cli, problem, expect):
    tree = _class_tree(tmp_path / "data")
    if problem == "unknown type":
        (tree / "cat" / "notes.pdf").write_bytes(b"%PDF")
    elif problem == "two labels":
        write_image(tree / "dog" / "c1.png")
        write_wav(tree / "dog" / "c1.wav", 0.2)
    elif problem == "unpaired":
        (tree / "cat" / "c1.wav").unlink()
    elif problem == "loose file":
        write_image(tree / "loose.png")
    elif problem == "nested":
        (tree / "cat" / "deeper").mkdir()
    elif problem == "same number":
        (tree / "cat").rename(tree / "01")
        (tree / "dog").rename(tree / "1")
    elif problem == "two files":
        write_image(tree / "cat" / "c1.jpg")
    result = cli("manifest", tree, "-m", "image,audio", "--out", tmp_path / "m.csv")
    assert result.code == 2 and expect in result.err, result
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert not (tmp_path / "m.csv").exists()


def test_an_extension_two_modalities_share_needs_paired_folders(tmp_path, cli):
    (tmp_path / "d" / "x").mkdir(parents=True)
    write_image(tmp_path / "d" / "x" / "a.png")
    result = cli("manifest", tmp_path / "d", "-m", "image,depth", "--out", tmp_path / "m.csv")
    assert result.code == 2 and "may be image or depth" in result.err and "--layout paired" in result.err
