"""Every command in README.md, docs/*.md and docs/commands/*.md is exercised, and every output a doc
shows under a command is compared with what the command prints, so the docs cannot drift from the CLI.

How it works:

- **Extraction.** The shell blocks of README.md, docs/*.md and docs/commands/*.md (```bash, sh, shell
  and console fences; a console block's `$ ` prompts are stripped and its other lines are output) and
  indented (4-space) command lines. Backslash continuations are joined, `# …` comments dropped,
  `a && b`, `a || b` and `a; b` split into simple commands, `NAME=value` lines remembered and `$NAME`
  expanded. One test per (file, line) that starts an ibdc command: `ibdc …`, `.venv/bin/ibdc …`,
  `python -m ibdc_cli …`, `torchrun … -m ibdc_cli …`, `accelerate launch … ibdc …`, `scripts/*.sh`,
  `python benchmarks/*.py`.
  The test id names the doc and line, e.g. `docs/commands/condense.md:9`.
- **Real runs.** `ibdc` commands run for real, in this process (`ibdc_cli.cli.main`), one temporary
  working directory per document, in document order: a test first runs the commands above it in its
  document (once per session), so a block that embeds, condenses and evaluates chains as a reader's
  would. `$IBDC_STORE` is the workflow's train store (below), `$IBDC_CACHE` a temporary directory,
  `$IBDC_CHECKPOINT` unset. The command must exit 0.
- **Shown output.** The lines a console block shows under an `ibdc` command are compared with the
  command's stdout (`check_shown`): every line in order, and no other line unless the doc elides some
  with a `…` line. Text and integers (file names, rows, counts, seeds, speakers) must match exactly; a
  decimal number (seconds, accuracy, loss) is a measurement, so only its shape is compared (digits,
  the same number of decimals); `…` inside a line stands for any text. Such a command runs as written
  (no small settings), so its output is what a reader gets. A parse-only command may not show output.
- **Small settings.** Unless `IBDC_DOCS_SMALL=0` is set (then the commands run as written, for hours),
  the options in `SMALL` are capped (`--iterations 2`, `--epochs 1` …) and added where absent, and
  `--device cuda` becomes `--device cpu`. This is done here, not by the product: ibdc has no "small"
  knob. `--per-class 5` is the docs' own small av-digits, the one their example outputs come from.
- **Paths.** Placeholders and absolute paths of the docs are mapped by `PLACEHOLDERS` and `PREFIXES`
  (`MANIFEST` → `data/av-digits/train.csv`, `/tmp/x` → `tmp/x`, `~/.cache/ibdc/x` → `cache/x`). An
  input that a document uses but does not make (`stores/test`, `syn.safetensors`, …) is provided by
  `PROVIDED` just before the command needs it: `stores/train` and `stores/test` are the workflow's
  (docs/index.md: av-digits `--per-class 5`, image, audio and text embedded with `imagebind_tiny`), built
  once per session, and `../shared/data/fsdd-mnist` (the shared fsdd-mnist source, relative to the
  repository root) is linked to the `fsdd_source` fixture's folder. `data/digits` is a class-folder tree
  (`<label>/<stem>.png` and `.wav`, 3 classes x 2 rows of the small av-digits) for `ibdc manifest`,
  `data/digits-hf` the same rows as a `datasets` DatasetDict saved to disk, for `ibdc embed hf:`, and
  `data/digits-wds` as WebDataset shards, for `ibdc embed wds:`.
  An output that an earlier block already wrote is removed first (each block is an example a reader
  may run again); an output written twice within one block is a doc bug and fails. A command followed
  by a `# ^C` comment is run and its output removed, standing for the interrupted run the doc shows.
- **Redirects.** `ibdc … > FILE` (a last `>` and a file name) writes the command's stdout to FILE in
  the document's directory, and runs as written, like a command whose output the doc shows: the file is
  the one a reader gets (`ibdc condense … --print-config > condense.toml`, then `--config condense.toml`).
  A `--print-config` command writes no `--out`.
- **Parse-only** (`parse_only_reason`): commands that cannot run here are still checked against the
  real parsers, so a renamed option fails the test: launchers (`torchrun`, `accelerate launch`, `srun`)
  with their own argparse parsers and the ibdc part with ibdc's click command (`make_context`: option
  names, choices, types); `scripts/*.sh` with `bash -n` and the ibdc commands inside them; benchmark
  scripts by the options their argparse parsers define; `imagebind_huge` without `--random-init`
  (needs Meta's weights) and commands on absolute cluster paths (`/shared`, `/models`).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer.main
from typer.exceptions import TyperException

from ibdc_cli.cli import GLOBAL_FLAGS, _reorder_global_flags, app, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "commands").glob("*.md"))]
SHELL_FENCES = {"bash", "sh", "shell", "console"}

# subcommand -> {option: cap}: a larger value is lowered to the cap, an absent option is added with it.
SMALL = {
    "condense": {"--iterations": 2, "--num-freqs": 64, "--dpc": 2, "--clusters": 2},
    "evaluate": {"--seeds": 1, "--epochs": 10},
    "bind": {"--epochs": 1},
    "demo": {"--per-class": 3, "--seeds": 1, "--iterations": 2, "--dpc": 2},
    "datasets av-digits": {"--per-class": 5},
    "datasets fsdd-mnist": {"--per-class": 6},
    "datasets spoken-numbers": {"--count": 20},
}
CAP_ONLY = {"--clusters"}  # lowered where given, never added
SMALL_PER_CLASS = SMALL["datasets av-digits"]["--per-class"]

# Placeholder paths of the docs -> paths in the document's working directory.
PLACEHOLDERS = {
    "MANIFEST": "data/av-digits/train.csv",
    "TEST_MANIFEST": "data/av-digits/test.csv",
    "data/train.csv": "data/av-digits/train.csv",
    "data/test.csv": "data/av-digits/test.csv",
    "STORE": "stores/train",
    "STORE/": "stores/train",
    "TRAIN_STORE": "stores/train",
    "TEST_STORE": "stores/test",
    "TEST_STORE/": "stores/test",
}
# Absolute path prefixes of the docs -> the working directory ("cache/" stands for the default $IBDC_CACHE).
PREFIXES = {"/tmp/": "tmp/", "~/.cache/ibdc/": "cache/", "/root/.cache/ibdc/": "cache/"}
# Inputs a document may use without making them: copied from the session's small data, or made by an
# ibdc command in the document's directory (after that command's own inputs are provided).
PROVIDED = {
    "data/av-digits": "small av-digits",
    "cache/demo/av-digits": "small av-digits",
    "data/sn": "small spoken-numbers",
    "data/spoken-numbers": "small spoken-numbers",
    "data/digits": "small class folders",
    "data/digits-hf": "small hf dataset",
    "data/digits-wds": "small wds shards",
    "stores/train": "workflow train store",
    "stores/test": "workflow test store",
    "../shared/data/fsdd-mnist": "fsdd_source",
    "syn.safetensors": "condense stores/train -m audio,image --dpc 2 --out syn.safetensors",
    "input.safetensors": "condense stores/train -m image,audio --space input --dpc 1 --out input.safetensors",
    "enc.safetensors": "bind data/av-digits/train.csv -m image,audio --anchor image --out enc.safetensors",
}
LINKED = {"fsdd_source"}  # fixtures whose folder is read in place: linked, not copied
OUTPUT_PARAMS = {"out", "plot", "export"}
CLUSTER_PATHS = ("/shared/", "/models/", "/scratch/", "/data/")


# ----------------------------------------------------------------------------------------------------
# extraction


@dataclass
class Command:
    doc: str  # "README.md", "docs/commands.md", "docs/commands/embed.md"
    line: int  # where the command starts
    block: int  # the block's number in its document
    text: str  # the simple command, variables expanded
    interrupted: bool = False  # a `# ^C` comment follows it in its block
    env: dict[str, str] = field(default_factory=dict)
    shown: list[str] = field(default_factory=list)  # the output a console block shows under it


COMMAND_START = re.compile(r"^([A-Za-z_]\w*=\S*\s+)*(ibdc|\S*/ibdc|\S*python3?|torchrun|accelerate|srun|\S*scripts/)\b")


Block = tuple[list[tuple[int, str]], dict[int, list[str]]]


def _blocks(path: Path) -> list[Block]:
    """Shell blocks of a markdown file: ([(line number, line)], shown), prompts and output removed.

    `shown` maps the number of a console block's last prompt line (its last continuation line) to the
    output lines that follow it, trailing blank lines dropped. Indented blocks are runs of 4-space lines
    after a blank line; only their lines that start like a command are kept (markdown also indents list
    text), with their backslash continuations.
    """
    blocks: list[Block] = []
    fence, current, shown, indented, previous = None, None, {}, None, ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            if fence is None:
                fence = (line[3:].strip().split() or [""])[0]
                current, shown = ([] if fence in SHELL_FENCES else None), {}
            else:
                if current:
                    for lines in shown.values():
                        while lines and not lines[-1].strip():
                            lines.pop()
                    blocks.append((current, shown))
                fence, current = None, None
            previous = line
            continue
        if fence is not None:
            if current is None:
                pass
            elif fence != "console":
                current.append((number, line))
            elif line.startswith("$ "):
                current.append((number, line[2:]))
            elif current and current[-1][1].endswith("\\") and current[-1][0] == number - 1:
                current.append((number, line))
            elif current:
                shown.setdefault(current[-1][0], []).append(line)
            previous = line
            continue
        if indented and indented[-1][0] == number - 1 and indented[-1][1].endswith("\\"):
            indented.append((number, line.strip()))  # a continuation line, however deep
        elif (
            line.startswith("    ") and not line.startswith("     ") and (indented is not None or not previous.strip())
        ):
            if indented is None:
                indented = []
                blocks.append((indented, {}))
            if COMMAND_START.match(line[4:]):
                indented.append((number, line[4:]))
        else:
            indented = None
        previous = line
    return [(lines, shown) for lines, shown in blocks if lines]


def _logical_lines(block: list[tuple[int, str]]) -> list[tuple[str, list[tuple[int, int]]]]:
    """Join backslash continuations: (text, [(offset in text, line number)])."""
    result, text, starts = [], "", []
    for number, line in block:
        starts.append((len(text), number))
        if line.rstrip().endswith("\\"):
            text += line.rstrip()[:-1] + " "
            continue
        text += line
        result.append((text, starts))
        text, starts = "", []
    if text:
        result.append((text, starts))
    return result


def _split_simple(text: str) -> list[tuple[int, str]]:
    """Split at `&&`, `||`, `;`, `|` outside quotes and `$( )`; drop a `#` comment. [(offset, command)]."""
    parts, start, i, quote, depth = [], 0, 0, None, 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif text.startswith("$(", i):
            depth += 1
            i += 1
        elif c == ")" and depth:
            depth -= 1
        elif depth == 0 and c == "#" and (i == 0 or text[i - 1] in " \t"):
            break
        elif depth == 0 and text[i : i + 2] in ("&&", "||"):
            parts.append((start, text[start:i]))
            start = i + 2
            i += 1
        elif depth == 0 and c in ";|":
            parts.append((start, text[start:i]))
            start = i + 1
        i += 1
    parts.append((start, text[start:i]))
    return [(offset + len(part) - len(part.lstrip()), part.strip()) for offset, part in parts if part.strip()]


def _expand(text: str, variables: dict[str, str]) -> str:
    """Enough of the shell's expansion for the docs: `$(which ibdc)`, `$((…))`, `$(…)`, `$NAME`, `${NAME}`."""
    text = re.sub(r"\$\(\(.*?\)\)", "4", text)
    text = re.sub(r"\$\(\s*which\s+ibdc\s*\)", "ibdc", text)
    text = re.sub(r"\$\([^()]*\)", "value", text)
    text = text.replace('"$@"', "").replace("$@", "")
    # An unknown variable (a SLURM one, say) becomes 1: the launchers' numeric options accept it.
    known = {"HOME": "~", "IBDC_CACHE": "~/.cache/ibdc", **variables}
    return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: known.get(m.group(1), "1"), text)


ASSIGNMENT = re.compile(r"^(?:export\s+)?([A-Za-z_]\w*)=(\S*)$")


def extract(path: Path) -> list[Command]:
    return extract_from(path, str(path.relative_to(ROOT)))


def extract_from(path: Path, doc: str | None = None) -> list[Command]:
    doc = doc or path.name
    commands: list[Command] = []
    for block_number, (block, shown) in enumerate(_blocks(path)):
        variables: dict[str, str] = {}
        for text, starts in _logical_lines(block):
            if re.match(r"^\s*#.*\^C", text) and commands and commands[-1].block == block_number:
                commands[-1].interrupted = True
            simples = _split_simple(text)
            for index, (offset, simple) in enumerate(simples):
                expanded = _expand(simple, variables)
                assignment = ASSIGNMENT.match(expanded)
                if assignment:
                    variables[assignment.group(1)] = assignment.group(2).strip("\"'")
                    continue
                words = shlex.split(expanded)
                if classify(words) is None:
                    continue
                env = {}
                for word in words:
                    if not re.match(r"^[A-Za-z_]\w*=", word):
                        break
                    env[word.split("=", 1)[0]] = word.split("=", 1)[1]
                line = max(number for start, number in starts if start <= offset)
                # The output under a line belongs to its last command (`ibdc … && ls`: to ls, not shown here).
                output = shown.get(starts[-1][1], []) if index == len(simples) - 1 else []
                commands.append(Command(doc, line, block_number, expanded, env=env, shown=list(output)))
    return commands


# ----------------------------------------------------------------------------------------------------
# what kind of command


PYTHON = re.compile(r"^(\S*/)?python3?(\.\d+)?$")


def _is_ibdc(word: str) -> bool:
    return word == "ibdc" or word.endswith("/ibdc")


def classify(words: list[str]):
    """(kind, words) with leading env assignments and `srun`/`exec` stripped, or None for other commands.

    kind: "ibdc" (words = ibdc's argv), "torchrun", "accelerate" (words = the launcher's argv), "script",
    "benchmark" (words = the full command), "bash" (words = the commands of `bash -c`).
    """
    while words and (re.match(r"^[A-Za-z_]\w*=", words[0]) or words[0] in ("srun", "exec", "time", "nohup")):
        words = words[1:]
    if not words:
        return None
    if _is_ibdc(words[0]):
        return "ibdc", words[1:]
    if PYTHON.match(words[0]) and words[1:3] == ["-m", "ibdc_cli"]:
        return "ibdc", words[3:]
    if words[0] == "torchrun" or (PYTHON.match(words[0]) and words[1:3] == ["-m", "torch.distributed.run"]):
        return "torchrun", words[1 if words[0] == "torchrun" else 3 :]
    if words[:2] == ["accelerate", "launch"]:
        return "accelerate", words[2:]
    if words[0] == "bash" and words[1:2] == ["-c"]:
        inner = [classify(shlex.split(part)) for _, part in _split_simple(words[2])]
        return ("bash", [c for c in inner if c]) if any(inner) else None
    script = words[1] if words[0] in ("bash", "sh") and len(words) > 1 else words[0]
    if re.match(r"^(\./)?scripts/[\w.-]+\.sh$", script):
        return "script", words
    if PYTHON.match(words[0]) and len(words) > 1 and re.match(r"^(\./)?benchmarks/[\w.-]+\.py$", words[1]):
        return "benchmark", words
    return None


def parse_only_reason(kind: str, words: list[str]) -> str | None:
    """Why a command is only parsed, not run (None: it runs)."""
    if kind in ("torchrun", "accelerate", "bash"):
        return "starts several processes through a launcher (GPUs, a rendezvous, SLURM)"
    if kind == "script":
        return "installs packages (pip, apt-get) or runs the whole test suite"
    if kind == "benchmark":
        return "a benchmark: minutes to hours, some need a GPU"
    if "imagebind_huge" in words and "--random-init" not in words:
        return "needs Meta's ImageBind-huge weights, which are not on this machine"
    if any(w.startswith(CLUSTER_PATHS) for w in words):
        return "uses a cluster's absolute paths"
    return None


# ----------------------------------------------------------------------------------------------------
# checking a command against the real parsers


ROOT_COMMAND = typer.main.get_command(app)


def resolve(argv: list[str]):
    """ibdc's click command for `argv`: (command, its path like "datasets av-digits", its own args)."""
    args = [a for a in _reorder_global_flags(argv) if a not in GLOBAL_FLAGS]
    command, path = ROOT_COMMAND, []
    while hasattr(command, "commands"):
        assert args, f"`ibdc {' '.join(argv)}` names no command"
        name = args.pop(0)
        assert name in command.commands, f"ibdc has no command {' '.join([*path, name])!r}"
        command, path = command.commands[name], [*path, name]
    return command, " ".join(path), args


def check_ibdc_parses(argv: list[str]) -> dict:
    """Every option exists on its command and every value parses (names, choices, types); returns the
    parsed parameters."""
    command, path, args = resolve(argv)
    options = {o: p for p in command.params for o in [*p.opts, *p.secondary_opts] if o.startswith("-")}
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--":
            break
        if arg.startswith("-") and not re.match(r"^-\d", arg):
            name = arg.split("=", 1)[0]
            assert name in options or name == "--help", f"`ibdc {path}` has no option {name}"
            param = options.get(name)
            skip = param is not None and "=" not in arg and not getattr(param, "is_flag", False)
    try:
        with command.make_context(f"ibdc {path}", list(args)) as ctx:
            return dict(ctx.params)
    except TyperException as exc:
        pytest.fail(f"`ibdc {path} {' '.join(args)}`: {exc.format_message()}")


def check_launcher(kind: str, args: list[str]) -> list[str]:
    """Parse a launcher's argv with the launcher's own parser; returns ibdc's argv."""
    if kind == "torchrun":
        from torch.distributed.run import get_args_parser

        parser = get_args_parser()
    else:
        from accelerate.commands.launch import launch_command_parser

        parser = launch_command_parser()
    parser.exit_on_error = False
    try:
        parsed = parser.parse_args(args)
    except (argparse.ArgumentError, SystemExit) as exc:
        pytest.fail(f"{kind} rejects {' '.join(args)}: {exc}")
    if parsed.module:
        assert parsed.training_script == "ibdc_cli", f"{kind} runs module {parsed.training_script}, not ibdc_cli"
    else:
        assert _is_ibdc(parsed.training_script), f"{kind} runs {parsed.training_script}, not ibdc"
    return list(parsed.training_script_args)


def check_script(words: list[str]) -> None:
    """A script exists, is executable, is valid bash, and the commands in it (and in the scripts it
    calls) parse; the doc's arguments go where the script has "$@"."""
    script_index = 1 if words[0] in ("bash", "sh") else 0
    script = ROOT / words[script_index].removeprefix("./")
    extra = words[script_index + 1 :]
    assert script.is_file(), f"{script.relative_to(ROOT)} does not exist"
    assert words[0] in ("bash", "sh") or os.access(script, os.X_OK), f"{script.name} is not executable"
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, f"{script.name}: {syntax.stderr}"
    for line in script.read_text().splitlines():
        for _, simple in _split_simple(line):
            passes_args = "$@" in simple
            found = classify(shlex.split(_expand(simple, {})))
            if found is None:
                continue
            kind, inner = found
            if kind == "script":
                check_script(inner)
            elif kind == "ibdc":
                check_ibdc_parses(inner + (extra if passes_args else []))


def check_benchmark(words: list[str]) -> None:
    """A benchmark script exists and defines every option the doc passes (read from its argparse calls)."""
    script = ROOT / words[1].removeprefix("./")
    assert script.is_file(), f"{words[1]} does not exist"
    defined = {"-h", "--help"}
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            defined |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    for arg in words[2:]:
        if arg.startswith("-"):
            assert arg.split("=", 1)[0] in defined, f"{words[1]} has no option {arg.split('=', 1)[0]}"


# ----------------------------------------------------------------------------------------------------
# comparing the output a doc shows with the real one

# In a shown line: `…` (any text), a measurement (a decimal number; "CC BY-SA 4.0" names a licence) or spaces.
SHOWN_TOKEN = re.compile(r"(?P<gap>…)|(?<!CC BY-SA )(?<![\w.])-?\d+\.(?P<decimals>\d+)(?![\w.])|(?P<space>[ \t]+)")


def shown_line_pattern(line: str) -> str:
    """A regex for one shown output line: text and integers exact, decimals by shape, `…` any text,
    any run of spaces for a run of spaces (table columns widen with their numbers)."""
    line, pattern, end = line.strip(), r"[ \t]*", 0
    for token in SHOWN_TOKEN.finditer(line):
        pattern += re.escape(line[end : token.start()])
        if token["gap"]:
            pattern += r"[^\n]*"
        elif token["space"]:
            pattern += r"[ \t]+"
        else:
            pattern += rf"-?\d+\.\d{{{len(token['decimals'])}}}"
        end = token.end()
    return pattern + re.escape(line[end:]) + r"[ \t]*\n"


def check_shown(shown: list[str], printed: str) -> None:
    """The lines a doc shows are the command's stdout: each in order, nothing else unless a `…` line
    elides it. Fails naming the first shown line that does not match."""
    printed = printed if printed.endswith("\n") else printed + "\n"
    pattern = ""
    for line in shown:
        pattern += r"(?:[^\n]*\n)*?" if line.strip() == "…" else shown_line_pattern(line)
        if not re.match(pattern + r"(?:[^\n]*\n)*\Z", printed):
            pytest.fail(f"the doc shows\n    {line.strip()}\nwhere the command printed:\n{printed}")
    if not re.fullmatch(pattern, printed):
        pytest.fail(f"the command printed more than the doc shows (end the shown lines with `…`?):\n{printed}")


# ----------------------------------------------------------------------------------------------------
# running a document's commands


def on_cpu(argv: list[str]) -> list[str]:
    """`--device cuda…` becomes `--device cpu` (IBDC_DOCS_SMALL=0 keeps the doc's own)."""
    if os.environ.get("IBDC_DOCS_SMALL", "1") == "0":
        return argv
    return ["cpu" if i and argv[i - 1] == "--device" and a.startswith("cuda") else a for i, a in enumerate(argv)]


def small(argv: list[str]) -> list[str]:
    """Cap the options in SMALL, on the CPU (IBDC_DOCS_SMALL=0 keeps the doc's own)."""
    if os.environ.get("IBDC_DOCS_SMALL", "1") == "0":
        return argv
    argv = on_cpu(argv)
    command, path, _ = resolve(argv)
    caps = SMALL.get(path, {})
    if not caps:
        return argv
    aliases = {o: p.opts[0] for p in command.params for o in p.opts}
    argv, seen = list(argv), set()
    for i, arg in enumerate(argv):
        name, _, inline = arg.partition("=")
        option = aliases.get(name)
        if option in caps:
            seen.add(option)
            if inline:
                argv[i] = f"{name}={min(int(inline), caps[option])}"
            elif i + 1 < len(argv):
                argv[i + 1] = str(min(int(argv[i + 1]), caps[option]))
    added = [option for option in caps if option not in seen and option not in CAP_ONLY]
    return argv + [str(x) for option in added for x in (option, caps[option])]


def placeholders(argv: list[str]) -> list[str]:
    def mapped(arg: str) -> str:
        if arg in PLACEHOLDERS:
            return PLACEHOLDERS[arg]
        for prefix, replacement in PREFIXES.items():
            if arg.startswith(prefix):
                return replacement + arg.removeprefix(prefix)
        return arg

    return [mapped(a) for a in argv]


@dataclass
class Workspace:
    """One document's working directory and what its commands did there."""

    root: Path
    done: dict[int, str | None] = field(default_factory=dict)  # command index -> None (ok) or the failure
    written: dict[Path, int] = field(default_factory=dict)  # output -> block that wrote it


class Runner:
    """Runs one document's commands: ibdc in this process, the rest against their parsers."""

    def __init__(self, sources: dict[str, Path], capsys, monkeypatch, fixture=None):
        self.sources, self.capsys, self.monkeypatch, self.fixture = sources, capsys, monkeypatch, fixture

    def run_ibdc(self, argv: list[str], cwd: Path) -> tuple[int, str, str]:
        self.monkeypatch.chdir(cwd)
        self.capsys.readouterr()
        try:
            main(list(argv))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def provide(self, params: dict, argv: list[str], workspace: Workspace) -> None:
        """Copy or make each input named in `argv` that the document has not made yet."""
        outputs = {str(params.get(name)) for name in OUTPUT_PARAMS if params.get(name) is not None}
        for arg in argv:
            if arg.startswith("-") or arg in outputs:
                continue
            arg = arg.removeprefix("hf:").removeprefix("wds:")  # `ibdc embed hf:data/digits-hf` reads that folder
            for key, source in PROVIDED.items():
                target = workspace.root / key
                if (arg == key or arg.startswith(key + "/")) and not target.exists():
                    if source in LINKED:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.symlink_to(self.fixture(source), target_is_directory=True)
                    elif source in self.sources:
                        shutil.copytree(self.sources[source], target)
                    else:
                        make = small(source.split())
                        self.provide(check_ibdc_parses(make), make, workspace)
                        code, out, err = self.run_ibdc(make, workspace.root)
                        assert code == 0, f"providing {key} with `ibdc {' '.join(make)}` failed:\n{err[-3000:]}"

    def run(self, command: Command, workspace: Workspace) -> None:
        found = classify(shlex.split(command.text))
        assert found is not None
        kind, words = found
        words, redirect = stdout_redirect(words) if kind == "ibdc" else (words, None)
        reason = parse_only_reason(kind, words)
        assert not command.shown or (kind == "ibdc" and reason is None), (
            f"the doc shows output under a command that is only parsed here ({reason}); show it outside a console block"
        )
        if kind == "ibdc" and reason is None:
            self.run_for_real(command, words, workspace, redirect)
        elif kind == "ibdc":
            check_ibdc_parses(words)
        elif kind in ("torchrun", "accelerate"):
            check_ibdc_parses(check_launcher(kind, words))
        elif kind == "bash":
            for inner_kind, inner in words:
                if inner_kind == "ibdc":
                    check_ibdc_parses(inner)
                elif inner_kind in ("torchrun", "accelerate"):
                    check_ibdc_parses(check_launcher(inner_kind, inner))
        elif kind == "script":
            check_script(words)
        elif kind == "benchmark":
            check_benchmark(words)

    def run_for_real(
        self, command: Command, words: list[str], workspace: Workspace, redirect: str | None = None
    ) -> None:
        check_ibdc_parses(words)  # the doc's own settings, before they are made small
        # A command whose output the doc shows (or writes to a file) runs as written, so the output is the
        # one a reader gets.
        as_written = command.shown or redirect is not None
        argv = on_cpu(placeholders(words)) if as_written else small(placeholders(words))
        params = check_ibdc_parses(argv)
        self.provide(params, argv, workspace)
        outputs = [workspace.root / str(params[n]) for n in OUTPUT_PARAMS if params.get(n) is not None]
        if resolve(argv)[1] == "condense" and params.get("out") is None:
            outputs.append(workspace.root / "syn.safetensors")  # condense's default --out
        if params.get("print_config"):
            outputs = []  # it prints the options and writes nothing
        if redirect is not None:
            outputs.append(workspace.root / placeholders([redirect])[0])
        for out in outputs:
            block = workspace.written.get(out)
            assert block is None or block != command.block or "--resume" in argv or "--overwrite" in argv, (
                f"{out.name} is written twice in one block"
            )
            if block is not None and block != command.block and "--resume" not in argv:
                shutil.rmtree(out) if out.is_dir() else out.unlink(missing_ok=True)
        for name, value in command.env.items():
            if name.startswith("IBDC_"):
                self.monkeypatch.setenv(name, value)
        code, out, err = self.run_ibdc(argv, workspace.root)
        assert code == 0, f"`ibdc {' '.join(argv)}` exited {code}\nstdout: {out[-2000:]}\nstderr: {err[-4000:]}"
        if command.shown:
            check_shown(command.shown, out)
        if redirect is not None:
            (workspace.root / placeholders([redirect])[0]).write_text(out)
        for path in outputs:
            workspace.written[path] = command.block
            if command.interrupted:  # the doc shows this run interrupted: it leaves no output
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def stdout_redirect(words: list[str]) -> tuple[list[str], str | None]:
    """`ibdc … > FILE`: (the command's words, FILE); (words, None) without a redirect."""
    if len(words) >= 2 and words[-2] == ">":
        return words[:-2], words[-1]
    return words, None


def runs_for_real(command: Command) -> bool:
    kind, words = classify(shlex.split(command.text))
    return kind == "ibdc" and parse_only_reason(kind, words) is None


COMMANDS = {str(doc.relative_to(ROOT)): extract(doc) for doc in DOCS}
# Lines with a command that runs for real are slow (they build small data and run the commands above them);
# parse-only lines take milliseconds and stay in the quick subset.
CASES = [
    pytest.param(
        doc,
        line,
        id=f"{doc}:{line}",
        marks=[pytest.mark.slow] if any(runs_for_real(c) for c in COMMANDS[doc] if c.line == line) else [],
    )
    for doc, line in sorted({(doc, c.line) for doc, commands in COMMANDS.items() for c in commands})
]


def _class_folders(manifest: Path, out: Path, per_class: int = 2, classes: int = 3) -> None:
    """A class-folder tree (`out/<label>/<id>.png` and `.wav`) of the first rows of a few classes of an
    av-digits manifest: the folder `ibdc manifest` reads in docs/commands/manifest.md and embed.md."""
    import csv

    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    taken: dict[str, int] = {}
    for row in rows:
        label = row["label"]
        if taken.get(label, 0) >= per_class or (label not in taken and len(taken) >= classes):
            continue
        taken[label] = taken.get(label, 0) + 1
        (out / label).mkdir(parents=True, exist_ok=True)
        stem = Path(row["image"]).stem
        shutil.copy(manifest.parent / row["image"], out / label / f"{stem}.png")
        shutil.copy(manifest.parent / row["audio"], out / label / f"{stem}.wav")


def _hf_dataset(folders: Path, out: Path) -> None:
    """The class folders as a `datasets` DatasetDict saved to disk (columns img, speech, digit; split train),
    for the `hf:` example of docs/commands/embed.md."""
    from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    files = sorted(folders.glob("*/*.png"))
    labels = sorted({f.parent.name for f in files})
    features = Features(
        {
            "img": ImageFeature(),
            "speech": {"bytes": Value("binary"), "path": Value("string")},
            "digit": ClassLabel(names=labels),
        }
    )
    table = {
        "img": [str(f) for f in files],
        "speech": [{"bytes": f.with_suffix(".wav").read_bytes(), "path": f.with_suffix(".wav").name} for f in files],
        "digit": [labels.index(f.parent.name) for f in files],
    }
    # audio as its files' bytes, cast to Audio(): encoding audio through `datasets` needs torchcodec
    dataset = Dataset.from_dict(table, features=features).cast_column("speech", Audio())
    DatasetDict({"train": dataset}).save_to_disk(str(out))


def _wds_shards(folders: Path, out: Path, per_shard: int = 4) -> None:
    """The class folders as WebDataset shards (png, wav and cls members), for docs/commands/embed.md."""
    import webdataset

    files = sorted(folders.glob("*/*.png"))
    out.mkdir(parents=True)
    for start in range(0, len(files), per_shard):
        with webdataset.TarWriter(str(out / f"digits-{start // per_shard:06d}.tar")) as sink:
            for f in files[start : start + per_shard]:
                sink.write({"__key__": f"{f.parent.name}/{f.stem}", "png": f.read_bytes(),
                            "wav": f.with_suffix(".wav").read_bytes(), "cls": f.parent.name})  # fmt: skip


@pytest.fixture(scope="session")
def docs_sources(tmp_path_factory) -> dict[str, Path]:
    """The docs' small data, and the workflow's stores (docs/index.md), which their example outputs show."""
    from ibdc_cli.data.benchmark import build_spoken_numbers
    from ibdc_cli.demo import ensure_demo_stores

    base = tmp_path_factory.mktemp("docs-data")
    # av-digits --per-class 5, image, audio and text embedded with imagebind_tiny: what index.md makes.
    workflow = ensure_demo_stores(base, per_class=SMALL_PER_CLASS)
    build_spoken_numbers(base / "spoken-numbers", count=SMALL["datasets spoken-numbers"]["--count"])
    _class_folders(workflow["data"] / "train.csv", base / "digits")
    _hf_dataset(base / "digits", base / "digits-hf")
    _wds_shards(base / "digits", base / "digits-wds")
    return {
        "small class folders": base / "digits",
        "small hf dataset": base / "digits-hf",
        "small wds shards": base / "digits-wds",
        "small av-digits": workflow["data"],
        "small spoken-numbers": base / "spoken-numbers",
        "workflow train store": workflow["train"],
        "workflow test store": workflow["test"],
    }


@pytest.fixture(scope="session")
def workspaces(tmp_path_factory) -> dict[str, Workspace]:
    base = tmp_path_factory.mktemp("docs")
    result = {}
    for doc in COMMANDS:
        root = base / doc.replace("/", "-").removesuffix(".md")
        (root / "tmp").mkdir(parents=True)
        result[doc] = Workspace(root)
    return result


@pytest.mark.parametrize(("doc", "line"), CASES)
def test_doc_command(doc, line, workspaces, request, tmp_path_factory, capsys, monkeypatch):
    commands = COMMANDS[doc]
    if not any(runs_for_real(c) for c in commands if c.line == line):
        runner = Runner({}, capsys, monkeypatch)
        for command in commands:
            if command.line == line:
                runner.run(command, workspaces[doc])
        return
    sources = request.getfixturevalue("docs_sources")
    monkeypatch.setenv("IBDC_STORE", str(sources["workflow train store"]))
    monkeypatch.setenv("IBDC_CACHE", str(tmp_path_factory.getbasetemp() / "docs-cache"))
    monkeypatch.delenv("IBDC_CHECKPOINT", raising=False)
    runner = Runner(sources, capsys, monkeypatch, request.getfixturevalue)
    workspace = workspaces[doc]
    for index, command in enumerate(commands):
        if command.line > line:
            break
        if index not in workspace.done:
            try:
                runner.run(command, workspace)
                workspace.done[index] = None
            except (Exception, pytest.fail.Exception) as exc:  # recorded for the commands below it
                workspace.done[index] = f"{doc}:{command.line}: {exc}"
                if command.line == line:
                    raise
        failure = workspace.done[index]
        if failure is not None and command.line != line:
            pytest.fail(f"an earlier command of {doc} failed, so this one cannot run: {failure[:500]}")


# ----------------------------------------------------------------------------------------------------
# the machinery itself


def test_the_docs_have_commands():
    """The extraction finds the commands (a broken extractor would make every other test vacuous)."""
    kinds = {classify(shlex.split(c.text))[0] for commands in COMMANDS.values() for c in commands}
    assert {"ibdc", "torchrun", "accelerate", "script", "benchmark"} <= kinds
    assert len(COMMANDS["README.md"]) >= 10


def test_extraction_of_fences_prompts_indents_continuations_and_variables(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text(
        "Text.\n\n```bash\n# a comment\nOUT=syn.safetensors\nibdc condense s -m audio,image \\\n"
        '  --dpc 2 --out "$OUT"  # trailing\n[ -f x ] || srun torchrun --nproc_per_node 2 -m ibdc_cli embed m.csv\n'
        "```\n\n```console\n$ ibdc inspect s\nwrote s\n  …\n$ ibdc embed m.csv \\\n  --out st\n\n"
        "$ ls st\nindex.json\n\n```\n\n"
        "```python\nibdc = 1\n```\n\n"
        "- a list item\n    ibdc not-a-block\n\n    OMP_NUM_THREADS=2 ibdc bind M -m image,audio \\\n"
        "        --epochs 5 --out e.safetensors\n    not a command's line\n"
    )
    found = [(c.line, c.text, c.env, c.shown) for c in extract_from(doc)]
    assert found == [
        (6, 'ibdc condense s -m audio,image    --dpc 2 --out "syn.safetensors"', {}, []),
        (8, "srun torchrun --nproc_per_node 2 -m ibdc_cli embed m.csv", {}, []),
        (12, "ibdc inspect s", {}, ["wrote s", "  …"]),  # a console block's output lines belong to the prompt above
        (15, "ibdc embed m.csv    --out st", {}, []),  # its continuation is no output; `ls st` prints index.json
        (
            30,
            "OMP_NUM_THREADS=2 ibdc bind M -m image,audio  --epochs 5 --out e.safetensors",
            {"OMP_NUM_THREADS": "2"},
            [],
        ),
    ]


def test_shown_output_is_compared_exactly_except_measurements_and_elisions(tmp_path):
    printed = (
        "wrote syn.safetensors (20 rows, imagebinddc, 1.3 s, final loss -0.5944)\nwhole data: 74.00 %   ratio 0.865\n"
    )
    check_shown(["wrote syn.safetensors (20 rows, imagebinddc, 4.1 s, final loss 16.9367)", "…"], printed)
    check_shown(["…", "whole data: 64.00 % ratio 0.9…"], printed)  # spaces stretch, `…` in a line is any text
    check_shown(["licences: FSDD CC BY-SA 4.0 (…)"], "licences: FSDD CC BY-SA 4.0 (share-alike)\n")
    for shown, problem in [
        (["wrote syn.safetensors (50 rows, imagebinddc, 1.3 s, final loss 3.5944)", "…"], "shows"),  # an integer
        (["wrote syn.safetensors (20 rows, imagebinddc, 1.3 s, final loss 3.59)", "…"], "shows"),  # decimals
        (["whole data: 74.00 %   ratio 0.865"], "shows"),  # not the first line, and no `…` above it
        (["wrote syn.safetensors (20 rows, imagebinddc, 1.3 s, final loss 3.5944)"], "printed more"),
        (["licences: FSDD CC BY-SA 3.0 (…)"], "shows"),  # a licence's version is a name, not a measurement
    ]:
        with pytest.raises(pytest.fail.Exception, match=problem):
            check_shown(shown, printed if "licences" not in shown[0] else "licences: FSDD CC BY-SA 4.0 (x)\n")
    launched = Command("page.md", 3, 0, "torchrun --nproc_per_node 2 -m ibdc_cli inspect s", shown=["store s"])
    with pytest.raises(AssertionError, match="only parsed here"):  # an output no test could check
        Runner({}, None, None).run(launched, Workspace(tmp_path))


def test_a_renamed_option_or_bad_value_fails():
    check_ibdc_parses(["-q", "condense", "stores/train", "-m", "audio,image", "--dpc", "2", "--resume"])
    with pytest.raises(AssertionError, match="has no option --iters"):
        check_ibdc_parses(["condense", "stores/train", "--iters", "5"])
    with pytest.raises(pytest.fail.Exception, match="dpc"):
        check_ibdc_parses(["condense", "stores/train", "--dpc", "many"])
    with pytest.raises(AssertionError, match="no command 'condence'"):
        check_ibdc_parses(["condence"])
    assert check_launcher("torchrun", ["--nproc_per_node", "2", "-m", "ibdc_cli", "embed", "--x"]) == ["embed", "--x"]
    with pytest.raises(pytest.fail.Exception, match="torchrun rejects"):
        check_launcher("torchrun", ["--nproc_per_nodes", "2", "-m", "ibdc_cli", "embed"])
    with pytest.raises(AssertionError, match="has no option --precison"):
        check_benchmark(["python", "benchmarks/gpu_imagebind_huge.py", "--precison", "bf16"])


def test_small_settings_cap_and_add_options(monkeypatch):
    monkeypatch.delenv("IBDC_DOCS_SMALL", raising=False)
    assert small(["condense", "s", "-m", "audio", "--iterations", "300", "--device", "cuda:1"]) == [
        "condense", "s", "-m", "audio", "--iterations", "2", "--device", "cpu", "--num-freqs", "64", "--dpc", "2",
    ]  # fmt: skip
    assert small(["datasets", "av-digits", "d", "--per-class=1"]) == ["datasets", "av-digits", "d", "--per-class=1"]
    assert placeholders(["bind", "MANIFEST", "--out", "/tmp/e.safetensors"]) == [
        "bind", "data/av-digits/train.csv", "--out", "tmp/e.safetensors",
    ]  # fmt: skip
    monkeypatch.setenv("IBDC_DOCS_SMALL", "0")
    assert small(["bind", "m.csv", "--epochs", "30"]) == ["bind", "m.csv", "--epochs", "30"]


def test_a_redirect_is_the_commands_stdout_written_to_a_file():
    assert stdout_redirect(["condense", "s", "--print-config", ">", "c.toml"]) == (
        ["condense", "s", "--print-config"],
        "c.toml",
    )
    assert stdout_redirect(["condense", "s", "--dpc", "2"]) == (["condense", "s", "--dpc", "2"], None)
