"""ibdc's version, in a module of its own: building blocks read it from here, never from the package
`ibdc_cli`, whose lazy attributes are the Python API (a recipe; see tests/test_imports.py)."""

__version__ = "0.1.0"
