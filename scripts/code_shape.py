"""The shape of ibdc's code, measured from its source with `ast` (no import, no torch):

- the longest functions (lines) and the largest parameter counts;
- for every option of embed, condense, bind and evaluate: in how many places its default is written
  (a config field with a default, a parameter with a default in the command's CLI function or in the
  recipe's entry function). One home per option means 1 everywhere.

    python scripts/code_shape.py                  # this checkout's ibdc_cli/
    python scripts/code_shape.py OLD/ibdc_cli     # another tree, e.g. `git archive d8cc1ea ibdc_cli | tar -x -C OLD`
"""

from __future__ import annotations

import argparse
import ast
import json
from collections import Counter
from pathlib import Path

# command -> (its CLI function in cli.py, (module, entry function) of its recipe, config class name)
COMMANDS = {
    "embed": ("embed", ("embed.py", "embed_manifest"), "EmbedConfig"),
    "condense": ("condense", ("condense.py", "condense"), "CondenseConfig"),
    "bind": ("bind", ("bind.py", "bind_encoder"), "BindConfig"),
    "evaluate": ("evaluate", ("evaluation/runner.py", "evaluate"), "EvaluateConfig"),
}
# where the evaluate runner lived before it became a package
FALLBACK_MODULES = {"evaluation/runner.py": ["evaluation/__init__.py", "evaluate.py"]}


def functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def parameter_count(node: ast.FunctionDef) -> int:
    args = node.args
    count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
    names = [a.arg for a in args.posonlyargs + args.args]
    return count - (1 if names[:1] in (["self"], ["cls"]) else 0)


def defaulted_parameters(node: ast.FunctionDef) -> set[str]:
    args = node.args
    positional = args.posonlyargs + args.args
    with_default = positional[len(positional) - len(args.defaults) :] if args.defaults else []
    names = {a.arg for a in with_default}
    names |= {a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None}
    return names


def class_field_defaults(tree: ast.AST, class_name: str) -> dict[str, bool] | None:
    """{field: has a default} of the dataclass `class_name`, or None if the tree has no such class."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            fields = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    annotation = ast.unparse(item.annotation)
                    if "ClassVar" in annotation:
                        continue
                    fields[item.target.id] = item.value is not None and not _is_required_option(item.value)
            return fields
    return None


def _is_required_option(value: ast.expr) -> bool:
    """`option(help=...)` without a default (ibdc's config fields) writes no default."""
    if isinstance(value, ast.Call) and getattr(value.func, "id", "").endswith("option"):
        return not value.args and not any(k.arg == "default" for k in value.keywords)
    return False


def parse(root: Path, relative: str) -> ast.AST | None:
    for candidate in [relative, *FALLBACK_MODULES.get(relative, [])]:
        path = root / candidate
        if path.is_file():
            return ast.parse(path.read_text())
    return None


def find_function(tree: ast.AST | None, name: str) -> ast.FunctionDef | None:
    if tree is None:
        return None
    top = [n for n in getattr(tree, "body", []) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return next((n for n in top if n.name == name), None)


def default_places(root: Path) -> dict[str, dict[str, int]]:
    """{command: {option: number of places its default is written}}."""
    trees = {p: ast.parse(p.read_text()) for p in sorted(root.rglob("*.py"))}
    cli = parse(root, "cli.py")
    result = {}
    for command, (cli_name, (module, entry), class_name) in COMMANDS.items():
        config_fields: dict[str, bool] = {}
        for tree in trees.values():
            found = class_field_defaults(tree, class_name)
            if found is not None:
                config_fields = found
                break
        cli_function = find_function(cli, cli_name)
        entry_function = find_function(parse(root, module), entry)
        cli_defaults = defaulted_parameters(cli_function) if cli_function is not None else set()
        entry_defaults = defaulted_parameters(entry_function) if entry_function is not None else set()
        options = set(config_fields) | cli_defaults | entry_defaults
        options -= {"ctx", "as_json", "config"}  # the config itself is not an option
        result[command] = {
            name: int(config_fields.get(name, False)) + int(name in cli_defaults) + int(name in entry_defaults)
            for name in sorted(options)
        }
    return result


def measure(root: Path, top: int) -> dict:
    rows = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in functions(tree):
            rows.append(
                {
                    "function": f"{path.relative_to(root.parent)}:{node.name}",
                    "lines": node.end_lineno - node.lineno + 1,
                    "parameters": parameter_count(node),
                }
            )
    places = default_places(root)
    return {
        "longest": sorted(rows, key=lambda r: -r["lines"])[:top],
        "most_parameters": sorted(rows, key=lambda r: -r["parameters"])[:top],
        "default_places": {
            command: dict(sorted(Counter(counts.values()).items())) for command, counts in places.items()
        },
        "options_with_more_than_one_default": {
            command: sorted(name for name, n in counts.items() if n > 1) for command, counts in places.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", default=str(Path(__file__).resolve().parents[1] / "ibdc_cli"))
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure(Path(args.package), args.top), indent=2))


if __name__ == "__main__":
    main()
