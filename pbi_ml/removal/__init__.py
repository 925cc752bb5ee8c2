"""Object removal by inpainting (docs/method.md#removal). Importing this loads no torch.

`make_inpainter(RemovalConfig(...))` returns the backend the config names:
- "opencv" (default, embedded, CPU, no weights): pbi_ml/removal/opencv.py;
- "diffusers" (the paper's recipe, SD 1.5 inpainting): pbi_ml/removal/sd_inpaint.py.
"""

from __future__ import annotations

from pbi_ml.config import RemovalConfig
from pbi_ml.config.stages import REMOVAL_BACKENDS
from pbi_ml.errors import ConfigError
from pbi_ml.removal.base import Inpainter


def make_inpainter(config: RemovalConfig) -> Inpainter:
    """The inpainter for `config.backend`. The diffusers model loads on the first `inpaint` call."""
    if config.backend == "opencv":
        from pbi_ml.removal.opencv import OpenCVInpainter

        return OpenCVInpainter(config)
    if config.backend == "diffusers":
        from pbi_ml.removal.sd_inpaint import DiffusersInpainter

        return DiffusersInpainter(config)
    raise ConfigError(f"removal backend {config.backend!r} not one of {REMOVAL_BACKENDS}")


__all__ = ["REMOVAL_BACKENDS", "Inpainter", "make_inpainter"]
