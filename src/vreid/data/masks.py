"""The mask cache's format: how foreground masks are keyed, indexed, written and read.

The cache (made by :mod:`vreid.prep.masks`, read by the background swap) has an index (``masks.json``: image path
relative to a root -> mask file relative to the cache, or null where no vehicle was found) and one 8-bit PNG per
image (255 = vehicle). Keys are relative paths, never basenames: real and synthetic datasets reuse names like
``000001.jpg`` (docs/method.md, Background swap). This module is the format alone, so that data/ can read a cache
without the Mask R-CNN runner that writes one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from vreid.errors import DatasetError
from vreid.fileio import atomic_write_bytes, atomic_write_text

MASK_INDEX = "masks.json"


def mask_key(path: str | Path, root: str | Path) -> str:
    """An image's cache key: its path relative to ``root``, POSIX style.

    Never the basename: real and synthetic datasets reuse names like ``000001.jpg`` (docs/method.md, Background swap).
    """
    path, root = Path(path), Path(root)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        pass
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise ValueError(f"image {path} is not under the mask root {root}") from None


def mask_file(key: str) -> str:
    """Where the mask of the image with cache key ``key`` lives, relative to the cache folder."""
    return Path(key).with_suffix(".png").as_posix()


def default_root(cache_dir: str | Path) -> Path:
    """The root image keys are relative to when none is given: the folder holding the cache."""
    return Path(cache_dir).parent


def load_mask_index(cache_dir: str | Path, missing_ok: bool = False) -> dict[str, str | None]:
    """The cache's index: relative image path -> mask file (relative to ``cache_dir``), or None for "no vehicle"."""
    path = Path(cache_dir) / MASK_INDEX
    if not path.is_file():
        if missing_ok:
            return {}
        raise DatasetError("mask index not found: compute the masks first (vreid.prep.masks.compute_masks)",
                           path=path)
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"unreadable mask index ({type(exc).__name__}: {exc})", path=path) from None
    if not isinstance(index, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in index.items()
    ):
        raise DatasetError("mask index must map relative image paths to mask files or null", path=path)
    return index


def save_mask_index(cache_dir: str | Path, index: Mapping[str, str | None]) -> Path:
    return atomic_write_text(Path(cache_dir) / MASK_INDEX, json.dumps(dict(index), indent=1, sort_keys=True) + "\n")


def write_mask(path: str | Path, mask: np.ndarray) -> Path:
    """A boolean HxW mask as an 8-bit PNG (255 = vehicle), written atomically (a kill leaves no half file)."""
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buffer, "PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def read_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A mask PNG as a boolean HxW array (True = vehicle); ``size`` (width, height) must match if given.

    8-bit masks are vehicle where >= 128; masks whose maximum is 1 (0/1 PNGs) are vehicle where 1.
    """
    try:
        with Image.open(path, formats=("PNG",)) as img:  # masks are PNG: no other decoder ever runs on them
            values = np.asarray(img.convert("L"))
    except FileNotFoundError:
        raise DatasetError("mask file not found", path=path) from None
    except Exception as exc:  # a decoder's parser can raise nearly anything
        raise DatasetError(f"unreadable mask ({type(exc).__name__}: {exc})", path=path) from None
    if size is not None and (values.shape[1], values.shape[0]) != tuple(size):
        raise DatasetError(f"mask is {values.shape[1]}x{values.shape[0]} but its image is {size[0]}x{size[1]}: "
                           "the image changed since the mask was made (recompute the masks)", path=path)
    return values >= (1 if values.max(initial=0) == 1 else 128)
