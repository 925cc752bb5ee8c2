"""Reading photos safely and writing images losslessly and atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pbi_ml.errors import ItemError
from pbi_ml.storage import WrittenFile, write_file

# Decompression-bomb guard: refuse images over ~180 megapixels (PIL warns at 89M by default).
Image.MAX_IMAGE_PIXELS = 180_000_000


def resolve_inside(root: str | os.PathLike, relative: str) -> Path:
    """Join an annotation-supplied path to its dataset root, refusing anything that escapes it.

    Raises ItemError("path_escapes_root") for absolute paths, `..` tricks and symlinks pointing out.
    """
    if not relative:
        raise ItemError("image_missing", "no file name in the annotation")
    root_path = Path(root).resolve()
    candidate = Path(relative)
    if candidate.is_absolute():
        raise ItemError("path_escapes_root", f"{relative!r} is absolute")
    resolved = (root_path / candidate).resolve()
    if resolved != root_path and root_path not in resolved.parents:
        raise ItemError("path_escapes_root", f"{relative!r} resolves outside {root_path}")
    return resolved


def check_image(root: str | os.PathLike, relative: str) -> tuple[int, int]:
    """Cheap check that an image exists inside its root and has a readable header. Returns (w, h)."""
    path = resolve_inside(root, relative)
    if not path.is_file():
        raise ItemError("image_missing", str(path))
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ItemError("image_unreadable", f"{path}: {exc}") from None


def load_rgb(root: str | os.PathLike, relative: str) -> np.ndarray:
    """Decode an image inside `root` to an HxWx3 uint8 RGB array (EXIF orientation NOT applied,
    matching COCO's annotation convention)."""
    path = resolve_inside(root, relative)
    return load_rgb_path(path)


def load_rgb_path(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ItemError("image_missing", str(path))
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ItemError("image_unreadable", f"{path}: {exc}") from None


def png_bytes(array: np.ndarray) -> bytes:
    """Encode an HxW (bool/uint8) or HxWx3 uint8 array as PNG, deterministically."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def save_png(array: np.ndarray, path: str | os.PathLike) -> WrittenFile:
    """Write a lossless PNG atomically; returns its path and the digest of its bytes."""
    return write_file(path, png_bytes(array))


def load_mask_png(path: str | os.PathLike) -> np.ndarray:
    """A stored mask PNG -> HxW bool."""
    return load_gray(path) > 127


def load_gray(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ItemError("mask_missing", str(path))
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ItemError("mask_unreadable", f"{path}: {exc}") from None


def thumbnail_png(array: np.ndarray, max_side: int = 128) -> bytes:
    """A small PNG preview for Dagster metadata (a few kB)."""
    im = Image.fromarray(array if array.dtype != bool else array.astype(np.uint8) * 255)
    im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
