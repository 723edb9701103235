"""ibdc: multimodal dataset condensation in ImageBind's joint embedding space (ImageBindDC)."""

__version__ = "0.1.0"
