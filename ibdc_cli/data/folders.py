"""Folders of media files as manifest rows (`ibdc manifest DIR`, SPEC §8).

Two layouts, told apart by DIR's top level (`layout="auto"`):

    class folders    DIR/<label>/<stem>.<ext>               files of one stem in one label folder: one row
    paired folders   DIR/<modality>/<label>/<stem>.<ext>    one (label, stem) across modality folders: one row

DIR is read as paired folders when every entry at its top level is a folder named after one of the
requested modalities (`vision` = `image`) and each requested modality has one; otherwise as class folders.

The rules (docs/commands/manifest.md):
- names starting with "." (hidden files and folders, `.DS_Store`, `.ipynb_checkpoints`) are ignored;
- a file's modality is its folder (paired) or its extension among the requested modalities' file types
  (class folders; `MEDIA_SUFFIXES`, and `.txt` for text, whose content becomes the cell); an extension
  that two requested modalities share (`.png` for image and depth) is refused there: use paired folders;
- any other file, a folder where a file belongs, or a file where a folder belongs is refused, naming it;
- a stem with one modality's file but not another's is refused, naming it; with `allow_unpaired` the
  cell stays empty (`ibdc bind` trains on such rows; `ibdc embed` refuses them, or skips them with
  --skip-bad); two files of one modality and stem, or one stem under two labels, are refused;
- label names follow the manifest's label rules (docs/formats.md "Labels"): `1` and `01` are refused;
- rows are sorted by (label, stem); `id` is the stem; media paths are relative to the manifest's folder.

    >>> rows = folder_manifest("photos/", ["image", "audio"], out="photos.csv")
    >>> rows[0]
    {'id': 'a01', 'image': 'photos/cat/a01.png', 'audio': 'photos/cat/a01.wav', 'label': 'cat'}
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ibdc_cli.data.manifest import ALIASES, label_ids
from ibdc_cli.errors import IbdcError

TEXT_SUFFIXES = {".txt"}


def _suffixes(modality: str) -> set[str]:
    from ibdc_cli.data.preprocess import MEDIA_SUFFIXES

    return TEXT_SUFFIXES if modality == "text" else MEDIA_SUFFIXES[modality]


def _visible(folder: Path, skip: Path | None = None) -> list[Path]:
    """The entries of `folder` not hidden, sorted; `skip` (the manifest being written, when it is in DIR)
    is not an entry."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.absolute() != skip)


def detect_layout(root: Path, modalities: list[str], skip: Path | None = None) -> str:
    """ "paired" when every visible entry of `root` is a folder named after a requested modality (each
    requested modality having one), else "class"."""
    names = {ALIASES.get(p.name.lower(), p.name.lower()) for p in _visible(root, skip) if p.is_dir()}
    files = [p for p in _visible(root, skip) if not p.is_dir()]
    return "paired" if not files and names == set(modalities) else "class"


def folder_manifest(
    root: str | Path,
    modalities: list[str],
    *,
    out: str | Path,
    layout: str = "auto",
    allow_unpaired: bool = False,
) -> list[dict[str, str]]:
    """The manifest rows (`{"id", *modalities, "label"}`, sorted by label then stem) of the media under
    `root`, with paths relative to the folder of the manifest file `out`; see the module docstring."""
    root = Path(root)
    if not root.is_dir():
        raise IbdcError(f"DIR {root}: no such folder")
    skip = Path(out).absolute()
    if layout == "auto":
        layout = detect_layout(root, modalities, skip)
    # (label, stem) -> modality -> file
    found: dict[tuple[str, str], dict[str, Path]] = {}
    if layout == "paired":
        for modality_dir in _visible(root, skip):
            modality = ALIASES.get(modality_dir.name.lower(), modality_dir.name.lower())
            if not modality_dir.is_dir() or modality not in modalities:
                raise IbdcError(
                    f"{modality_dir}: paired folders hold one folder per --modalities {','.join(modalities)} "
                    "and nothing else"
                )
            for label_dir in _label_dirs(modality_dir):
                for file in _files(label_dir):
                    if file.suffix.lower() not in _suffixes(modality):
                        known = ", ".join(sorted(_suffixes(modality)))
                        raise IbdcError(f"{file}: not a {modality} file type ({known})")
                    _add(found, label_dir.name, file, modality)
    else:
        owners = _suffix_owners(modalities)
        for label_dir in _label_dirs(root, skip):
            for file in _files(label_dir):
                owner = owners.get(file.suffix.lower())
                if owner is None:
                    known = ", ".join(sorted(owners))
                    raise IbdcError(f"{file}: not a file type of --modalities {','.join(modalities)} ({known})")
                if len(owner) > 1:
                    raise IbdcError(
                        f"{file}: {file.suffix} files may be {' or '.join(owner)}; put each modality in its own "
                        "folder (DIR/<modality>/<label>/<stem>.<ext>, --layout paired)"
                    )
                _add(found, label_dir.name, file, owner[0])
    if not found:
        raise IbdcError(f"DIR {root}: no media files found ({layout} layout)")
    labels_of: dict[str, str] = {}
    for label, stem in sorted(found):
        if stem in labels_of:
            raise IbdcError(f"{root}: stem {stem!r} is under two labels, {labels_of[stem]!r} and {label!r}")
        labels_of[stem] = label
    label_ids([label for label, _ in sorted(found)], root)  # refuses `1` and `01` now, not at embed time
    base = Path(os.path.abspath(Path(out).parent))
    rows = []
    for (label, stem), files in sorted(found.items()):
        missing = [m for m in modalities if m not in files]
        if missing and not allow_unpaired:
            have = ", ".join(str(f) for f in files.values())
            raise IbdcError(
                f"{root}: {label}/{stem} has no {' or '.join(missing)} file (it has {have}); add it, remove the "
                "others, or pass --allow-unpaired for an empty cell"
            )
        row = {"id": stem}
        for m in modalities:
            row[m] = _cell(m, files[m], base) if m in files else ""
        row["label"] = label
        rows.append(row)
    return rows


def _label_dirs(folder: Path, skip: Path | None = None) -> list[Path]:
    entries = _visible(folder, skip)
    for entry in entries:
        if not entry.is_dir():
            raise IbdcError(f"{entry}: a file where label folders belong (<label>/<stem>.<ext>)")
    return entries


def _files(label_dir: Path) -> list[Path]:
    entries = _visible(label_dir)
    for entry in entries:
        if entry.is_dir():
            raise IbdcError(f"{entry}: a folder inside label folder {label_dir.name!r}; label folders hold files")
    return entries


def _suffix_owners(modalities: list[str]) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for m in modalities:
        for suffix in _suffixes(m):
            owners.setdefault(suffix, []).append(m)
    return owners


def _add(found: dict, label: str, file: Path, modality: str) -> None:
    files = found.setdefault((label, file.stem), {})
    if modality in files:
        raise IbdcError(f"{file}: a second {modality} file of {label}/{file.stem} (also {files[modality].name})")
    files[modality] = file


def _cell(modality: str, file: Path, base: Path) -> str:
    if modality == "text":
        try:
            text = file.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as exc:
            raise IbdcError(f"{file}: not UTF-8 text: {exc}") from None
        if not text:
            raise IbdcError(f"{file}: empty text file")
        return text
    return Path(os.path.relpath(os.path.abspath(file), base)).as_posix()


def manifest_csv(rows: list[dict[str, str]]) -> bytes:
    """`rows` as CSV bytes (header = the first row's keys)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def write_folder_manifest(config) -> list[dict[str, str]]:
    """`ibdc manifest`: the rows of `config.dir` (`folder_manifest`) written atomically to `config.out`
    (.csv, or .jsonl); an existing --out is refused unless `config.overwrite`."""
    import json

    from ibdc_cli.store import atomic_write_bytes

    config.check_choices()
    out = Path(config.out)
    if out.suffix.lower() not in (".csv", ".jsonl"):
        raise IbdcError(f"--out {out}: write a .csv or .jsonl manifest")
    if out.is_dir():
        raise IbdcError(f"--out {out} is a folder; name the manifest file to write")
    if out.exists() and not config.overwrite:
        raise IbdcError(f"--out {out} exists; choose another --out or pass --overwrite")
    rows = folder_manifest(
        config.dir, config.modalities, out=out, layout=config.layout, allow_unpaired=config.allow_unpaired
    )
    if out.suffix.lower() == ".jsonl":
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    else:
        data = manifest_csv(rows)
    atomic_write_bytes(out, data)
    return rows
