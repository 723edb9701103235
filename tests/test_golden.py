"""Behaviour kept: today's code condenses the golden store into exactly the sets main wrote at d8cc1ea.

The fixture (tests/golden/: a 3-class store and one set per configuration of make_golden.CASES) was
written before the code was reshaped; every refactoring since must give the same tensors bit for bit.
Floating-point results are bit-identical only on the same kind of CPU with the same torch build
(made_on.json records where the fixture was made). A CPU kind measured to round differently is listed
under "elsewhere" with its own digest of every set (`make_golden.py --record-host`): there the sets must
match those digests bit for bit and the fixture to 1e-5. On a machine that is neither, the test compares
to 1e-5 only and warns that it did.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

from ibdc_cli.store import load_synthetic_set

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
from make_golden import BASE, CASES, host_facts, set_digest  # noqa: E402

MADE_ON = json.loads((GOLDEN / "made_on.json").read_text())
HOST = host_facts()
# this CPU kind's own digests, where it was measured to round differently from the fixture's machine
ELSEWHERE = next((e for e in MADE_ON.get("elsewhere", []) if all(e[k] == HOST[k] for k in HOST)), None)
OTHER_CPU = any(e["cpu"] == HOST["cpu"] for e in MADE_ON.get("elsewhere", []))
SAME_MACHINE = not OTHER_CPU and all(HOST[k] == MADE_ON[k] for k in HOST if k in MADE_ON)


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
    if ELSEWHERE is not None:
        assert set_digest(got, got_meta) == ELSEWHERE["sets_sha256"][name], (
            f"{name}: differs bit for bit from what this CPU kind ({HOST['cpu']}) recorded in made_on.json"
        )
    elif not SAME_MACHINE:
        warnings.warn(f"{HOST} is not where the golden sets were made: compared to 1e-5", stacklevel=2)
    if SAME_MACHINE:
        assert got_meta["loss_history"] == want_meta["loss_history"]
    for key in ("method", "space", "modalities", "dpc", "class_names", "rows_per_class", "tensor_spaces", "seed"):
        assert got_meta[key] == want_meta[key], key
    settings = {k: v for k, v in want_meta["settings"].items()}
    assert {k: got_meta["settings"][k] for k in settings} == settings
