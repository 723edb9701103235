"""The Python API (`ibdc_cli.api`, docs/api.md): the docs' notebook runs, a set condensed from tensors is
the set `ibdc condense` makes from a store of the same tensors, bad input is one IbdcError before any work,
and `import ibdc_cli` stays torch-free."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ibdc_cli
import ibdc_cli.api as api
from ibdc_cli.errors import IbdcError
from ibdc_cli.store import write_store
from ibdc_cli.synthetic_set import SyntheticSet

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "api.md"

# Small and fast: 3 classes of 10 rows, 8 dimensions, 2 rows per class, a few iterations.
OPTIONS = {"modalities": ["audio", "image"], "dpc": 2, "iterations": 3, "num_freqs": 64, "real_batch": 8, "seed": 3}
FLAGS = ["--modalities", "audio,image", "--dpc", "2", "--iterations", "3", "--num-freqs", "64", "--real-batch", "8"]
FLAGS += ["--seed", "3", "--device", "cpu"]
NAMES = ["cat", "dog", "bird"]


def tensors(rows_per_class: int = 10, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(rows_per_class)
    means = {m: 2 * torch.randn(3, 8, generator=generator) for m in ("audio", "image", "text")}
    return {m: mu[labels] + torch.randn(len(labels), 8, generator=generator) for m, mu in means.items()}, labels


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_docs_notebook_runs(tmp_path, monkeypatch):
    """Every python block of docs/api.md, in order, in one namespace (as a reader's notebook runs them)."""
    blocks = python_blocks(DOCS.read_text())
    assert len(blocks) >= 5, "docs/api.md lost its python blocks"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_api"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"docs/api.md (python block {number})", "exec"), namespace)
    assert isinstance(namespace["synthetic"], SyntheticSet)
    assert 0 <= namespace["report"]["mean"] <= 100
    assert list(tmp_path.iterdir()) == []  # the notebook leaves no files behind


def test_same_set_as_the_cli(tmp_path, cli):
    """condense_embeddings on tensors == `ibdc condense` on a store `write_store` made of them: same tensors."""
    embeddings, labels = tensors()
    synthetic = api.condense_embeddings(embeddings, labels, class_names=NAMES, device="cpu", **OPTIONS)
    write_store(tmp_path / "store", embeddings, labels, class_names=NAMES)
    result = cli("condense", tmp_path / "store", *FLAGS, "--out", tmp_path / "cli.safetensors")
    assert result.code == 0, result
    reference = SyntheticSet.load(tmp_path / "cli.safetensors")
    assert sorted(synthetic.tensors) == sorted(reference.tensors)
    for name, tensor in reference.tensors.items():
        assert torch.equal(synthetic.tensors[name], tensor), name
    assert synthetic.settings == reference.settings
    assert synthetic.class_names == NAMES and synthetic.encoder == reference.encoder
    assert synthetic.path == api.IN_MEMORY and synthetic.labels.tolist() == [0, 0, 1, 1, 2, 2]

    # String labels are the class names: the same rows, given in the order of `class_names`.
    words = [NAMES[i] for i in labels.tolist()]
    named = api.condense_embeddings(embeddings, words, class_names=NAMES, device="cpu", **OPTIONS)
    assert all(torch.equal(named.tensors[k], v) for k, v in reference.tensors.items())
    assert api.condense_embeddings(embeddings, words, device="cpu", **OPTIONS).class_names == sorted(NAMES)

    # A config with options on top is the same run; `out` keeps the file.
    config = ibdc_cli.CondenseConfig(**{**OPTIONS, "dpc": 5}, device="cpu")
    out = tmp_path / "kept.safetensors"
    kept = api.condense_embeddings(embeddings, labels, config, class_names=NAMES, dpc=2, out=out)
    assert kept.path == out and out.is_file()
    assert all(torch.equal(kept.tensors[k], v) for k, v in reference.tensors.items())


def test_the_set_holds_nothing_of_its_temporary_folder():
    """The set's tensors are copies: no file of the deleted temporary folder stays mapped."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("needs /proc/self/maps (Linux)")
    embeddings, labels = tensors()
    synthetic = api.condense_embeddings(embeddings, labels, device="cpu", **{**OPTIONS, "iterations": 1})
    gc.collect()
    assert "ibdc-condense-" not in maps.read_text()
    assert torch.isfinite(synthetic.tensors["audio"]).all()


def test_evaluate_set_is_ibdc_evaluate(tmp_path, cli):
    """evaluate_set on tensors reports what `ibdc evaluate --json` reports on the same set and test store."""
    embeddings, labels = tensors()
    test_embeddings, test_labels = tensors(5, seed=1)
    synthetic = api.condense_embeddings(
        embeddings, labels, class_names=NAMES, device="cpu", out=tmp_path / "syn.safetensors", **OPTIONS
    )
    write_store(tmp_path / "test", test_embeddings, test_labels, class_names=NAMES)
    options = {"seeds": 2, "epochs": 5, "device": "cpu"}
    flags = ["--seeds", "2", "--epochs", "5", "--device", "cpu", "--json"]
    result = cli("evaluate", tmp_path / "syn.safetensors", "--test", tmp_path / "test", *flags)
    assert result.code == 0, result
    expected = json.loads(result.out)

    in_memory = api.condense_embeddings(embeddings, labels, class_names=NAMES, device="cpu", **OPTIONS)
    for synthetic_given, test in [
        (in_memory, (test_embeddings, test_labels)),
        (in_memory, (test_embeddings, [NAMES[i] for i in test_labels.tolist()])),
        (tmp_path / "syn.safetensors", ibdc_cli.open_store(tmp_path / "test")),
        (synthetic, str(tmp_path / "test")),
    ]:
        report = api.evaluate_set(synthetic_given, test, **options)
        assert [run["value"] for run in report["runs"]] == [run["value"] for run in expected["runs"]]
        assert report["mean"] == expected["mean"] and report["test_rows"] == 15
    assert report["sets"] == [str(tmp_path / "syn.safetensors")]
    report = api.evaluate_set(in_memory, (test_embeddings, test_labels), train=(embeddings, labels), **options)
    assert report["sets"] == ["<in memory>"] and report["config"]["test"] == "<test tensors>"
    assert report["config"]["train"] == "<train tensors>" and "ratio" in report


def _never(*args, **kwargs):
    raise AssertionError("bad input must be refused before any work")


def _bad_condense_inputs():
    embeddings, labels = tensors()
    nan = {**embeddings, "image": embeddings["image"].clone()}
    nan["image"][4, 2] = float("nan")
    short = {**embeddings, "image": embeddings["image"][:-1]}
    yield "rows", (short, labels), {}, "different row counts (audio 30, image 29, text 30)"
    yield "nan", (nan, labels), {}, "embeddings['image'] holds NaN or Inf (first at row 4)"
    yield "range", (embeddings, labels + 1), {"class_names": NAMES}, "label 3 at row 20 is out of range"
    yield "negative", (embeddings, labels - 1), {}, "label -1 at row 0 is out of range"
    yield "count", (embeddings, labels[:-1]), {}, "29 labels for 30 rows"
    yield "float labels", (embeddings, labels.float()), {}, "integer class ids"
    yield "name", (embeddings, ["cow"] * 30), {"class_names": NAMES}, "label 'cow' at row 0 is not one of"
    yield "modality", (embeddings, labels), {"modalities": ["audio", "depth"]}, "unknown modality 'depth'"
    yield "option", (embeddings, labels), {"dcp": 2}, "unknown option 'dcp'"
    yield "space", (embeddings, labels), {"space": "input"}, "condenses embeddings (space='embedding')"
    yield "choice", (embeddings, labels), {"method": "magic"}, "--method 'magic' is not one of"
    yield "store", (embeddings, labels), {"store": "stores/train"}, "the embeddings are the store"
    yield "logs", (embeddings, labels), {"log_with": ["csv"]}, "log_with needs a log_dir"
    yield "reserved", ({"labels": embeddings["audio"]}, labels), {}, "'labels' cannot name a modality"
    yield "shape", ({"audio": embeddings["audio"][0]}, labels), {}, "has shape (8,); each modality is one [N, D]"


@pytest.mark.parametrize("case", list(_bad_condense_inputs()), ids=lambda case: case[0])
def test_bad_input_is_one_error_before_any_work(case, monkeypatch):
    _, args, options, phrase = case
    monkeypatch.setattr(api, "write_store", _never)
    monkeypatch.setattr(api, "run_condense", _never)
    with pytest.raises(IbdcError, match=re.escape(phrase)):
        api.condense_embeddings(*args, **options)


def test_one_process_only(monkeypatch):
    """Under torchrun each process would condense its own temporary store: refused, naming the way that works."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(api, "write_store", _never)
    with pytest.raises(IbdcError, match="runs in one process"):
        api.condense_embeddings(*tensors())


def test_bad_evaluate_input(monkeypatch):
    embeddings, labels = tensors()
    synthetic = api.condense_embeddings(embeddings, labels, device="cpu", **{**OPTIONS, "iterations": 1})
    monkeypatch.setattr(api, "run_evaluate", _never)
    with pytest.raises(IbdcError, match=re.escape("label 3 at row 20 is out of range")):
        api.evaluate_set(synthetic, (embeddings, labels + 1))
    with pytest.raises(IbdcError, match="test must be a store path, an opened Store or an"):
        api.evaluate_set(synthetic, embeddings)
    with pytest.raises(IbdcError, match="unknown option 'seed'"):
        api.evaluate_set(synthetic, (embeddings, labels), seed=1)


def test_import_stays_torch_free_and_lists_the_api():
    """`import ibdc_cli` (and its torch-free names) loads no torch; every name of `__all__` resolves."""
    code = (
        "import sys, ibdc_cli; ibdc_cli.__all__; ibdc_cli.CondenseConfig; ibdc_cli.EvaluateConfig; ibdc_cli.IbdcError;"
        "assert 'torch' not in sys.modules, 'import ibdc_cli imported torch';"
        "assert set(ibdc_cli.__all__) <= set(dir(ibdc_cli)), set(ibdc_cli.__all__) - set(dir(ibdc_cli))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert set(ibdc_cli.__all__) <= set(dir(ibdc_cli))
    for name in ibdc_cli.__all__:
        assert getattr(ibdc_cli, name) is getattr(api, name), name
    assert {"condense_embeddings", "evaluate_set", "write_store", "open_store", "SyntheticSet"} <= set(api.__all__)
    with pytest.raises(AttributeError):
        ibdc_cli.no_such_name  # noqa: B018
