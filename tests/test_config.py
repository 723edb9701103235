"""--config FILE and --print-config: files in, the resolved config out, and a set's recorded config fed
back reproducing the set bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib
import torch

from ibdc_cli.config import RECIPE_CONFIGS, CondenseConfig, command_line, read_config_file
from ibdc_cli.errors import IbdcError
from ibdc_cli.store import load_synthetic_set

GOLDEN_STORE = Path(__file__).parent / "golden" / "store"
QUICK = ["--modalities", "audio,image", "--dpc", "2", "--iterations", "6"]


def _same_set(a: Path, b: Path) -> None:
    (ta, ma), (tb, mb) = load_synthetic_set(a), load_synthetic_set(b)
    assert sorted(ta) == sorted(tb)
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    assert ma["settings"] == mb["settings"] and ma["config"] == mb["config"]


def test_a_sets_recorded_config_fed_back_reproduces_it(tmp_path, cli):
    first = tmp_path / "first.safetensors"
    extra = ["--num-freqs", "256", "--cross-form", "hybrid", "--seed", "4", "--lr", "0.03"]
    assert cli("condense", GOLDEN_STORE, *QUICK, *extra, "--out", first).code == 0
    config = load_synthetic_set(first)[1]["config"]
    assert config["store"] == str(GOLDEN_STORE.resolve()) and config["num_freqs"] == 256 and "out" not in config
    again = tmp_path / "again.safetensors"
    result = cli("condense", "--config", first, "--out", again)
    assert result.code == 0, result
    _same_set(first, again)


def test_print_config_writes_toml_that_runs_the_same_set(tmp_path, cli):
    first = tmp_path / "first.safetensors"
    assert cli("condense", GOLDEN_STORE, *QUICK, "--method", "avdd", "--out", first).code == 0
    printed = cli("condense", "--config", first, "--print-config")
    assert printed.code == 0 and not (tmp_path / "syn.safetensors").exists()
    values = tomllib.loads(printed.out)
    assert values["method"] == "avdd" and values["dpc"] == 2 and values["modalities"] == ["audio", "image"]
    toml_file = tmp_path / "run.toml"
    toml_file.write_text(printed.out)
    second = tmp_path / "second.safetensors"
    assert cli("condense", "--config", toml_file, "--out", second).code == 0
    _same_set(first, second)


def test_command_line_overrides_the_file_which_overrides_the_preset(tmp_path, cli):
    yaml_file = tmp_path / "paper.yaml"
    yaml_file.write_text("preset: paper\nmodalities: audio,image\nspace: embedding\ndpc: 3\nlambda-uni: 2\n")
    printed = cli("condense", GOLDEN_STORE, "--config", yaml_file, "--dpc", "1", "--print-config")
    assert printed.code == 0, printed
    values = tomllib.loads(printed.out)
    assert values["preset"] == "paper" and values["optimizer"] == "sgd"  # from the preset
    assert values["space"] == "embedding" and values["lambda_uni"] == 2.0  # the file beats the preset
    assert values["dpc"] == 1  # the command line beats the file


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("dpc = 2\nbogus = 1\n", "unknown option 'bogus' for ibdc condense"),
        ('dpc = "two"\n', "--dpc must be int, not 'two'"),
        ("dpc = [\n", "not valid TOML"),
    ],
)
def test_bad_config_files_exit_2_naming_the_problem(tmp_path, cli, text, phrase):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = cli("condense", GOLDEN_STORE, "--config", path, "--out", tmp_path / "x.safetensors")
    assert result.code == 2 and phrase in result.err and "Traceback" not in result.err
    assert not (tmp_path / "x.safetensors").exists()


def test_config_file_kinds(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"condense": {"dpc": 5, "alpha": 1}}))
    assert read_config_file(tmp_path / "a.json", CondenseConfig) == {"dpc": 5, "alpha": 1.0}
    with pytest.raises(IbdcError, match="expected a .toml, .yaml"):
        (tmp_path / "a.ini").write_text("")
        read_config_file(tmp_path / "a.ini", CondenseConfig)
    with pytest.raises(IbdcError, match="records no ibdc config"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
        read_config_file(tmp_path / "plain.safetensors", CondenseConfig)


def test_evaluate_reads_a_config_and_reports_it(tmp_path, cli):
    syn = tmp_path / "syn.safetensors"
    assert cli("condense", GOLDEN_STORE, *QUICK, "--method", "random", "--out", syn).code == 0
    (tmp_path / "eval.toml").write_text(f'test = "{GOLDEN_STORE}"\nseeds = 1\nepochs = 3\n')
    result = cli("evaluate", syn, "--config", tmp_path / "eval.toml", "--json")
    assert result.code == 0, result
    report = json.loads(result.out)
    assert report["config"]["seeds"] == 1 and report["config"]["epochs"] == 3 and len(report["runs"]) == 1


def test_reproduce_command_is_written_from_the_fields():
    config = CondenseConfig.from_preset("paper", store="s", modalities=["audio"], dpc=3, resume=True)
    from ibdc_cli.condense import reproduce_command

    line = reproduce_command(Path("s"), config, Path("o.safetensors"))
    assert line == "ibdc condense s --modalities audio --dpc 3 --preset paper --out o.safetensors"
    assert command_line(CondenseConfig(store="s", allow_fewer=True)) == "ibdc condense s --allow-fewer"
    for command, cls in RECIPE_CONFIGS.items():
        assert cls.COMMAND == command
