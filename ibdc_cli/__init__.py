"""ibdc: multimodal dataset condensation in ImageBind's joint embedding space (ImageBindDC).

The command line is `ibdc` (`ibdc_cli.cli`). The Python API works on tensors (docs/api.md)::

    import ibdc_cli as ibdc

    synthetic = ibdc.condense_embeddings({"audio": a, "image": v}, labels, dpc=10)   # a SyntheticSet
    report = ibdc.evaluate_set(synthetic, ({"audio": a_test, "image": v_test}, test_labels))

The names of `__all__` are loaded on first use (module `__getattr__`), so `import ibdc_cli` imports
no torch and `ibdc --help` starts fast.
"""

from ibdc_cli.version import __version__

__all__ = [
    "condense_embeddings",
    "evaluate_set",
    "write_store",
    "open_store",
    "Store",
    "SyntheticSet",
    "CondenseConfig",
    "EvaluateConfig",
    "IbdcError",
    "run_condense",
    "run_evaluate",
    "__version__",
]

_CONFIGS = ("CondenseConfig", "EvaluateConfig")


def __getattr__(name: str):
    # The configs and the error type import no torch; the rest comes with ibdc_cli.api (which does).
    if name in _CONFIGS:
        from ibdc_cli import config as module
    elif name == "IbdcError":
        from ibdc_cli import errors as module
    elif name in __all__:
        from ibdc_cli import api as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
