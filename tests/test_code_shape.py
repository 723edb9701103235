"""One home per option: every default of embed, condense, bind and evaluate is written in one place
(its config field), measured from the source by scripts/code_shape.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _code_shape():
    spec = importlib.util.spec_from_file_location("code_shape", ROOT / "scripts" / "code_shape.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_option_default_is_written_once():
    places = _code_shape().default_places(ROOT / "ibdc_cli")
    assert set(places) == {"embed", "condense", "bind", "evaluate"}
    for command, counts in places.items():
        assert counts, f"no options found for {command}: has its config class or entry function moved?"
        twice = sorted(name for name, n in counts.items() if n > 1)
        assert not twice, f"ibdc {command}: defaults written in more than one place: {twice}"


def test_the_counter_sees_a_second_default(tmp_path):
    """The measurement can fail: a keyword-form entry that restates a config default is counted twice."""
    package = tmp_path / "ibdc_cli"
    package.mkdir()
    (package / "config.py").write_text(
        "from dataclasses import dataclass\n\n@dataclass\nclass CondenseConfig:\n    dpc: int = 20\n"
    )
    (package / "condense.py").write_text("def condense(store, out, config=None, *, dpc=20):\n    pass\n")
    assert _code_shape().default_places(package)["condense"] == {"dpc": 2}
