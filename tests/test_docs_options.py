"""The docs' option tables are generated from the config dataclasses, and nothing else in the docs
restates an option's default, so docs and code cannot disagree.

- **Generated tables.** Each recipe command's page (`config.DOCS_PAGES`) carries one block between
  `config.DOCS_BEGIN` and `config.DOCS_END`, and that block is `config.options_table(cls)` exactly.
- **Every flag documented.** Every flag that `ibdc COMMAND --help` shows (the click command's params,
  their `opts` and `secondary_opts`) is named on its page: the config's fields in the generated table,
  `--config`, `--print-config` and `--json` in the page's prose.
- **No hand-written defaults.** Outside the generated blocks, a command's page does not state one of its
  options' defaults: no option-reference table row (first cell only backticked flags) that names the
  default or says "default", and no backticked flag followed by `(…)` or `, …` that gives the default
  or says "default" (the old hand tables: ``--dpc` (20)`, ``--iterations` (150 per class)`,
  ``--temperature`, default 0.07`). And no doc anywhere calls a value the default that is not:
  ``--space-map center` (the default)` fails once the default is whiten.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

import ibdc_cli.cli
from ibdc_cli import config
from ibdc_cli.config import DOCS_BEGIN, DOCS_END, DOCS_PAGES, RECIPE_CONFIGS, flag_of, options_table

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
COMMAND = typer.main.get_command(ibdc_cli.cli.app)
EXTRA_FLAGS = ("--config", "--print-config", "--json")  # every recipe command's, not config fields
REGENERATE = "run `python -m ibdc_cli.config --docs` to regenerate the docs' option tables"


def _page(command: str) -> str:
    return (DOCS / DOCS_PAGES[command]).read_text()


def _generated_block(text: str) -> str:
    assert text.count(DOCS_BEGIN) == 1 and text.count(DOCS_END) == 1, "one generated options block per page"
    return text[text.index(DOCS_BEGIN) + len(DOCS_BEGIN) : text.index(DOCS_END)]


def _without_generated(text: str) -> str:
    """`text` with its generated blocks blanked (their lines kept, so line numbers stay)."""
    return re.sub(
        re.escape(DOCS_BEGIN) + r".*?" + re.escape(DOCS_END),
        lambda m: "\n" * m.group(0).count("\n"),
        text,
        flags=re.S,
    )


def _help_flags(command: str) -> list[str]:
    """The flags `ibdc COMMAND --help` lists."""
    params = COMMAND.commands[command].params
    return [o for p in params if not getattr(p, "hidden", False) for o in [*p.opts, *p.secondary_opts] if o[0] == "-"]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _flag_defaults(cls: type[config.Config]) -> dict[str, Any]:
    """Each flag of `cls` (long, short and --no- forms) -> its field's default."""
    result = {}
    for f in dataclasses.fields(cls):
        if f.metadata["argument"]:
            continue
        default = _default(f)
        result[flag_of(f)] = default
        if f.metadata["short"]:
            result[f.metadata["short"]] = default
        if f.metadata["negative"]:
            result["--no-" + flag_of(f).removeprefix("--")] = None if default is dataclasses.MISSING else not default
    return result


# ----------------------------------------------------------------------------------------------------
# finding hand-written defaults


def _is_default(token: str, default: Any) -> bool:
    """Whether a word of a doc writes `default` (numbers by value: 1e-3 is 0.001)."""
    token = token.strip("`'\"").replace("−", "-")
    if default is None or default is dataclasses.MISSING or default == []:
        return False
    if isinstance(default, bool):
        return token == ("on" if default else "off")
    if isinstance(default, (int, float)):
        try:
            return float(token) == float(default)
        except ValueError:
            return False
    if isinstance(default, list):
        return token == ",".join(default)
    return token == str(default)


def _says_default(text: str, default: Any) -> bool:
    """`text` gives `default` as a word, or says "default" (not as a backticked value: `--preset default`)."""
    words = re.findall(r"`[^`]*`|[^\s,;:()/=`]+", text)
    if any(_is_default(word, default) for word in words):
        return True
    return re.search(r"\bdefaults?\b", re.sub(r"`[^`]*`", "", text), re.I) is not None


# `--flag` or `--flag METAVAR`, then `(…)` or `, …` up to the end of the clause.
FLAG_THEN = re.compile(
    r"`(?P<flag>--?[a-z][\w-]*)(?:/--?[\w-]+)*(?: [A-Z][A-Z_]*)?`"  # `--flag`, `--flag/-f`, `--flag METAVAR`
    r"\s*(?:\((?P<paren>[^()]*)\)|,(?P<clause>[^,.;()|]*))"
)
# A backticked `--flag VALUE` called the default: `--space-map whiten` (the default …, `…`, default …
CALLED_DEFAULT = re.compile(
    r"`(?P<flag>--[a-z][\w-]*) (?P<value>(?![A-Z][A-Z_]*`)[^`\s]+)`"  # a value, not a METAVAR
    r"\s*[(,]\s*(?:the |on )?(?:by )?default\b"
)
REFERENCE_ROW = re.compile(r"^\|\s*(?P<first>`-[^|]*?)\s*\|(?P<rest>.*)$")


def hand_written_defaults(text: str, cls: type[config.Config]) -> list[str]:
    """Where `text` (a page, its generated blocks left out) states a default of one of `cls`'s options:
    ["line N: …"]."""
    defaults = _flag_defaults(cls)
    found = []
    for number, line in enumerate(_without_generated(text).splitlines(), 1):
        row = REFERENCE_ROW.match(line)
        if row:  # an option-reference table row: its first cell is backticked flags only
            flags = re.findall(r"`([^`]*)`", row["first"])
            if flags and re.fullmatch(r"(`[^`]*`[\s,/]*)+", row["first"]) and all(f in defaults for f in flags):
                if any(_says_default(row["rest"], defaults[f]) for f in flags):
                    found.append(f"line {number}: a table row restates the default of {', '.join(flags)}: {line}")
                continue
        for match in FLAG_THEN.finditer(line):
            flag = match["flag"]
            if flag not in defaults:
                continue
            if match["paren"] is not None and _says_default(match["paren"], defaults[flag]):
                found.append(f"line {number}: {match.group(0)!r} restates the default of {flag}")
            elif match["clause"] is not None and re.search(r"\bdefaults?\b", re.sub(r"`[^`]*`", "", match["clause"])):
                found.append(f"line {number}: {match.group(0)!r} restates the default of {flag}")
        for match in CALLED_DEFAULT.finditer(line):
            flag = match["flag"]
            if flag in defaults:
                found.append(f"line {number}: {match.group(0)!r} restates the default of {flag}")
    return found


def stale_defaults(text: str) -> list[str]:
    """Where `text` calls `--flag VALUE` the default though no recipe command's --flag defaults to VALUE."""
    defaults: dict[str, list[Any]] = {}
    for cls in RECIPE_CONFIGS.values():
        for flag, default in _flag_defaults(cls).items():
            defaults.setdefault(flag, []).append(default)
    found = []
    for number, line in enumerate(_without_generated(text).splitlines(), 1):
        for match in CALLED_DEFAULT.finditer(line):
            flag, value = match["flag"], match["value"]
            if flag in defaults and not any(_is_default(value, d) for d in defaults[flag]):
                found.append(f"line {number}: {match.group(0)!r}, but {flag} defaults to {defaults[flag]}")
    return found


# ----------------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("command", list(RECIPE_CONFIGS))
def test_the_generated_table_is_the_current_one(command):
    block = _generated_block(_page(command))
    assert block.strip() == options_table(RECIPE_CONFIGS[command]), (
        f"docs/{DOCS_PAGES[command]}: the options table differs from ibdc_cli/config.py; {REGENERATE}"
    )
    # `--docs` writes what this test reads: regenerating a current page changes nothing.
    assert config.docs_with_table(_page(command), RECIPE_CONFIGS[command]) == _page(command), REGENERATE


@pytest.mark.parametrize("command", list(RECIPE_CONFIGS))
def test_every_flag_of_help_is_on_the_commands_page(command):
    text = _page(command)
    table, prose = _generated_block(text), _without_generated(text)
    flags = _help_flags(command)
    assert set(EXTRA_FLAGS) <= set(flags) and len(set(flags)) > len(EXTRA_FLAGS)  # the collection itself works
    for flag in flags:
        where = prose if flag in EXTRA_FLAGS else table
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", where), (
            f"`ibdc {command} --help` shows {flag}, but docs/{DOCS_PAGES[command]} does not name it "
            + ("in its prose" if flag in EXTRA_FLAGS else f"in its generated table; {REGENERATE}")
        )


@pytest.mark.parametrize("command", list(RECIPE_CONFIGS))
def test_no_hand_written_default_outside_the_generated_table(command):
    found = hand_written_defaults(_page(command), RECIPE_CONFIGS[command])
    assert not found, (
        f"docs/{DOCS_PAGES[command]} states defaults by hand (they go stale); the generated table has them. "
        "Say why a default was chosen without restating it:\n" + "\n".join(found)
    )


@pytest.mark.parametrize(
    "doc", ["README.md", *(str(p.relative_to(ROOT)) for p in sorted(DOCS.glob("*.md")) + sorted(DOCS.glob("*/*.md")))]
)
def test_no_doc_calls_a_value_the_default_that_is_not(doc):
    found = stale_defaults((ROOT / doc).read_text())
    assert not found, f"{doc}:\n" + "\n".join(found)


def test_the_check_finds_the_old_hand_written_tables():
    """Rows and phrases of the hand tables these pages had: each is found (a check that finds nothing
    would pass vacuously), and the prose that replaced them is not."""
    condense, embed = RECIPE_CONFIGS["condense"], RECIPE_CONFIGS["embed"]
    bind, evaluate = RECIPE_CONFIGS["bind"], RECIPE_CONFIGS["evaluate"]
    old = [
        (condense, "| what | `STORE` (optional), `--modalities/-m` (`image,audio`), `--dpc` (20), `--out/-o` |"),
        (condense, "| optimisation | `--iterations` (150 per class), `--lr` (0.05 in embedding space) |"),
        (condense, "| CF discrepancy | `--num-freqs` (K = 4096), `--alpha`/`--beta` (0.5/0.5) |"),
        (condense, "| space | `--space embedding` (default; optimise vectors in the joint space) |"),
        (embed, "| speed | `--batch-size` (32), `--workers` (2 DataLoader processes decode media) |"),
        (evaluate, "| `--seeds` | number of training runs per set (default 3), with seeds 0…N−1 |"),
        (evaluate, "| `--protocol` | `linear` (one linear head per modality), `mlp` |"),
        (bind, "The ones specific to bind are `--anchor` (default image), `--epochs` (20), `--lr` (1e-3)."),
        (bind, "The temperature is `--temperature`, default 0.07."),
        (bind, "Augmentation (`--augment`, on by default; `--no-augment`)"),
    ]
    for cls, line in old:
        assert hand_written_defaults(line, cls), line
    new = [
        (condense, "`--dpc` is the number of synthetic rows of each class; `--space input` optimises pixels."),
        (condense, "| `--guide convnet` | 57.7 % | 3.1 s |"),  # a measurement row naming a setting
        (bind, "`--val-manifest FILE` (another speaker, say: fsdd-mnist's `val.csv`)"),
        (condense, "`--preset` (`default` or `paper`)"),  # the choice named default, not a default
    ]
    for cls, line in new:
        assert not hand_written_defaults(line, cls), line
    assert stale_defaults("matched in the store's space (`--space-map center`, the default)")
    assert not stale_defaults("matched in the store's space (`--space-map whiten`, the default)")
