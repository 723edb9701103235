"""Behaviour kept: today's code condenses the golden store into exactly the sets main wrote at d8cc1ea.

The fixture (tests/golden/: a 3-class store and one set per configuration of make_golden.CASES) was
written before the code was reshaped; every refactoring since must give the same tensors bit for bit.
Floating-point results are bit-identical only on the same kind of CPU with the same torch build, so on
another (made_on.json records where the fixture was made) the test compares to 1e-5 instead and says so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ibdc_cli.store import load_synthetic_set

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
from make_golden import BASE, CASES  # noqa: E402

MADE_ON = json.loads((GOLDEN / "made_on.json").read_text())
SAME_MACHINE = MADE_ON == {
    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    "torch": torch.__version__.split("+")[0],
}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(CASES))
def test_condense_reproduces_the_golden_set(name, tmp_path, cli, one_thread):
    out = tmp_path / f"{name}.safetensors"
    result = cli("condense", GOLDEN / "store", *BASE, *CASES[name], "--out", out)
    assert result.code == 0, result
    got, got_meta = load_synthetic_set(out)
    want, want_meta = load_synthetic_set(GOLDEN / "sets" / f"{name}.safetensors")
    assert sorted(got) == sorted(want)
    for key in want:
        if SAME_MACHINE or not want[key].is_floating_point():
            assert torch.equal(got[key], want[key]), f"{name}: tensor {key!r} differs from the golden set"
        else:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)
    if SAME_MACHINE:
        assert got_meta["loss_history"] == want_meta["loss_history"]
    for key in ("method", "space", "modalities", "dpc", "class_names", "rows_per_class", "tensor_spaces", "seed"):
        assert got_meta[key] == want_meta[key], key
    settings = {k: v for k, v in want_meta["settings"].items()}
    assert {k: got_meta["settings"][k] for k in settings} == settings
