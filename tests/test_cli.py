"""The command line as a whole: help texts, version, usage errors, and the demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer.main

from ibdc_cli.cli import app

COMMANDS = [
    "embed",
    "manifest",
    "condense",
    "evaluate",
    "inspect",
    "demo",
    "bind",
    "env",
    "datasets av-digits",
    "datasets spoken-numbers",
]


def _click_command(path: str):
    command = typer.main.get_command(app)
    for name in path.split():
        command = command.commands[name]
    return command


@pytest.mark.parametrize("path", COMMANDS)
def test_every_option_has_help_and_every_command_an_example(path, cli):
    command = _click_command(path)
    for param in command.params:
        if param.param_type_name == "option":
            assert param.help and len(param.help) > 10, f"{path} {param.opts} has no help"
    assert "Example:" in (command.help or ""), f"{path} has no example"
    result = cli(*path.split(), "--help")
    assert result.code == 0 and "Example" in result.out


def test_version_and_usage_errors(cli):
    assert cli("--version").out.strip()
    bad = cli("condense", "--dpc", "abc")
    assert bad.code == 2 and "Traceback" not in bad.err
    assert cli("embed").code == 2


def test_demo_end_to_end_small(tmp_path, cli):
    result = cli("demo", "--out", tmp_path, "--per-class", 8, "--seeds", 1, "--iterations", 5, "--dpc", 2, "--json")
    assert result.code == 0, result
    report = json.loads(result.out)
    assert set(report["results"]) == {"imagebinddc", "random"}
    for r in report["results"].values():
        assert (
            0 <= r["mean"] <= 100 and r["whole_mean"] > 0 and r["ratio"] == pytest.approx(r["mean"] / r["whole_mean"])
        )
        assert r["rows"] == 20 and r["condense_seconds"] >= 0
    plot = Path(report["plot"])
    assert plot.parent == tmp_path and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    human = cli("demo", "--out", tmp_path, "--per-class", 8, "--seeds", 1, "--iterations", 5, "--dpc", 2)
    assert human.code == 0 and "whole training split" in human.out
    assert "accuracy %" in human.out and "condense" in human.out and str(plot) in human.out


@pytest.mark.parametrize("command", ["embed", "manifest", "condense", "bind", "evaluate"])
def test_command_options_are_the_config_fields(command):
    """Each recipe command's options are its config's fields, with the field's default (one home per option;
    comma-separated lists are written joined on the command line)."""
    from dataclasses import MISSING, fields

    from ibdc_cli.config import RECIPE_CONFIGS

    cls = RECIPE_CONFIGS[command]
    params = {p.name: p for p in _click_command(command).params}
    assert set(params) == {f.name for f in fields(cls)} | {"config_file", "print_config", "as_json"}
    for f in fields(cls):
        default = (
            f.default
            if f.default is not MISSING
            else (f.default_factory() if f.default_factory is not MISSING else None)
        )
        if f.metadata["comma_list"] and not f.metadata["argument"]:
            default = ",".join(default) or None if default is not None else None
        shown = params[f.name].default
        assert shown == default or (shown in (None, ()) and default in (None, [])), f"{command} --{f.name}"


def test_env_reports_versions_and_world(cli, monkeypatch):
    import torch

    monkeypatch.setenv("WORLD_SIZE", "3")
    result = cli("env", "--json")
    assert result.code == 0, result
    facts = json.loads(result.out)
    assert facts["torch"] == torch.__version__ and facts["world size"] == 3
    assert (
        facts["imagebind code"].startswith("imagebind-unofficial ") and "not installed" not in facts["imagebind code"]
    )
    human = cli("env")
    assert human.code == 0 and "torch threads:" in human.out
