"""PBI's ML and data library: plain functions over paths, dataclasses and Arrow tables.

This package never imports dagster (a test enforces it). Heavy modules (torch, diffusers,
transformers, open_clip) are imported lazily inside the functions that need them.
"""

__version__ = "0.1.0"
