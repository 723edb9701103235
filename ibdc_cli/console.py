"""The stderr console and the --quiet switch: torch-free, so the CLI can start without importing torch."""

from __future__ import annotations

from rich.console import Console

stderr = Console(stderr=True, highlight=False)
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet
