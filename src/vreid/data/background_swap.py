"""Background swap: this image's vehicle on another training image's background (docs/method.md, Background swap).

The paper's README describes pasting Mask R-CNN foregrounds onto other images' inpainted backgrounds; its
code was never published, and the consuming side has defects this version avoids (docs/method.md,
Background swap): masks are keyed by the path relative to a root, not the basename (:mod:`vreid.prep.masks`); the
candidate backgrounds are listed once, not globbed per sample; the *background* is resized to the image's
size, so the vehicle, which carries the identity, is never resampled; an image is never its own background.
Whether the swap runs for a model at all (it destroys part of the camera cue a camera-ReID model needs) is
the caller's decision.

It runs on the decoded PIL image before the other transforms, and draws its randomness from torch's global
generator only, so per-sample seeding (``vreid.data.loader.seed_sample``) makes it exactly reproducible.
Backgrounds are read lazily; filled backgrounds are kept in a small per-process LRU.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from vreid.data.images import read_image
from vreid.data.masks import default_root, load_mask_index, mask_key, read_mask
from vreid.data.records import ImageRecord

log = logging.getLogger(__name__)

FILLS = ("blur", "mean")
NEUTRAL_GREY = 128.0  # fill of a background whose mask covers the whole image (nothing to fill from)


# --------------------------------------------------------------------------------------------------
# Pure numpy/PIL pieces


def soft_mask(mask: np.ndarray, feather: int = 1) -> np.ndarray:
    """A boolean mask as float in [0, 1], feathered *outwards* by ``feather`` px.

    Pixels inside the mask stay exactly 1, so the vehicle is pasted unchanged; the ramp outside hides the
    hard cut along a mask that is never pixel-exact.
    """
    m = mask.astype(np.float32)
    if feather <= 0 or not mask.any():
        return m
    blurred = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).filter(ImageFilter.BoxBlur(feather))
    return np.maximum(m, np.asarray(blurred, dtype=np.float32) / 255.0)


def compose(foreground: np.ndarray, background: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``fg * m + bg * (1 - m)`` for HxWx3 uint8 images and an HxW float mask in [0, 1]; uint8 out.

    Pixels with m = 1 or m = 0 are copied (the formula gives them exactly); only the feathered band is
    computed in float, which makes this several times faster than the plain formula.
    """
    if foreground.shape != background.shape or foreground.shape[:2] != mask.shape:
        raise ValueError(f"compose: shapes differ (foreground {foreground.shape}, background {background.shape}, "
                         f"mask {mask.shape})")
    out = np.where((mask >= 1.0)[..., None], foreground, background)
    band = (mask > 0.0) & (mask < 1.0)
    if band.any():
        m = mask[band].astype(np.float32)[:, None]
        mixed = foreground[band].astype(np.float32) * m + background[band].astype(np.float32) * (1.0 - m)
        out[band] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a boolean mask by ``pixels`` in every direction (a square structuring element, separable)."""
    if pixels <= 0 or not mask.any():
        return mask
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        view, orig = np.moveaxis(out, axis, 0), np.moveaxis(src, axis, 0)
        for shift in range(1, min(pixels, view.shape[0] - 1) + 1):
            view[shift:] |= orig[:-shift]
            view[:-shift] |= orig[shift:]
    return out


def _upsample2(x: np.ndarray) -> np.ndarray:
    """Bilinear x2 upsampling (half-pixel centres, edges clamped) of an HxWxC array."""
    for axis in (0, 1):
        n = x.shape[axis]
        prev = np.take(x, np.r_[0, np.arange(n - 1)], axis=axis)
        nxt = np.take(x, np.r_[np.arange(1, n), n - 1], axis=axis)
        pair = np.stack((0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt), axis=axis + 1)
        shape = list(x.shape)
        shape[axis] *= 2
        x = pair.reshape(shape)
    return x


def _diffuse(x: np.ndarray, hole: np.ndarray, iterations: int) -> np.ndarray:
    """Masked 4-neighbour averaging: hole pixels relax towards their neighbours, known pixels stay fixed."""
    if iterations <= 0 or not hole.any():
        return x
    ys, xs = np.nonzero(hole)
    y0, y1 = max(ys.min() - 1, 0), min(ys.max() + 2, hole.shape[0])  # work on the hole's box only
    x0, x1 = max(xs.min() - 1, 0), min(xs.max() + 2, hole.shape[1])
    sub, sub_hole = x[y0:y1, x0:x1], hole[y0:y1, x0:x1, None]
    for _ in range(iterations):
        p = np.pad(sub, ((1, 1), (1, 1), (0, 0)), mode="edge")
        avg = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]) * 0.25
        sub = np.where(sub_hole, avg, sub)
    x = x.copy()
    x[y0:y1, x0:x1] = sub
    return x


def _push_pull(color: np.ndarray, weight: np.ndarray, iterations: int, finest: bool = True) -> np.ndarray:
    """Fill the cells of zero weight of a premultiplied colour sum image, coarse to fine.

    Each level halves the resolution by summing 2x2 blocks (colour and weight), is filled from the level
    below, upsampled bilinearly into its holes and relaxed by masked diffusion: diffusion from the hole's
    border, but in O(pixels) instead of the O(hole radius^2) iterations it needs at full resolution. The
    finest level is not relaxed: measured, it changed nothing but cost a third of the time.
    """
    known = weight > 0
    # finest level: weights are 0/1, so the colour sum already is the mean where known
    mean = color if finest else color / np.maximum(weight, 1e-12)[..., None]
    if known.all():
        return mean
    h, w = weight.shape
    if not known.any() or (h == 1 and w == 1):
        return np.full_like(mean, NEUTRAL_GREY)
    hh, ww = h + h % 2, w + w % 2
    c = np.zeros((hh, ww, color.shape[2]), np.float32)
    c[:h, :w] = color
    wt = np.zeros((hh, ww), np.float32)
    wt[:h, :w] = weight
    coarse = _push_pull(c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2],
                        wt[0::2, 0::2] + wt[1::2, 0::2] + wt[0::2, 1::2] + wt[1::2, 1::2], iterations, False)
    filled = np.where(known[..., None], mean, _upsample2(coarse)[:h, :w])
    return filled if finest else _diffuse(filled, ~known, iterations)


def fill_background(image: np.ndarray, hole: np.ndarray, fill: str = "blur", dilation: int = 2,
                    iterations: int = 4) -> np.ndarray:
    """Remove the vehicle (``hole``, HxW bool) from an HxWx3 uint8 image and fill its place.

    The hole is first grown by ``dilation`` px, because a mask is never pixel-exact and the vehicle's edge
    colours would otherwise bleed in from the border. ``fill="blur"`` diffuses the surrounding background into
    the hole (multi-scale, ``iterations`` relaxation steps per coarser level); ``fill="mean"`` paints it the mean
    background colour. A hole covering everything is painted neutral grey.
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    hole = _dilate(hole, dilation)
    if not hole.any():
        return image
    known = ~hole
    if fill == "mean":
        out = image.copy()
        colour = image[known].mean(axis=0) if known.any() else np.full(3, NEUTRAL_GREY)
        out[hole] = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
        return out
    weight = known.astype(np.float32)
    filled = _push_pull(image.astype(np.float32) * weight[..., None], weight, iterations)
    out = image.copy()
    out[hole] = np.clip(np.rint(filled[hole]), 0, 255).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------------
# The augmentation


class BackgroundSwap:
    """With probability ``p``, this image's vehicle pasted onto another training image's filled background.

    Call it as ``swap(image, path)`` on the decoded RGB image of ``path``, before the other transforms. The
    candidate backgrounds are the images of ``records_or_paths`` with a mask in ``mask_index`` (see
    :func:`vreid.data.masks.load_mask_index`; keys are paths relative to ``root``, by default the folder
    holding ``cache_dir``); they are also the only images it swaps. An image without a mask (none found,
    outside ``root``, not listed) is returned unchanged, as is one with no other candidate background. The
    vehicle's mask is feathered outwards by ``feather`` px, the other vehicle's hole grown by ``dilation`` px
    before filling (:func:`fill_background`); up to ``cache_size`` filled backgrounds are kept per process
    (at native size, so the output does not depend on the cache; with a large set most picks miss it).
    """

    def __init__(
        self,
        records_or_paths: Iterable[ImageRecord | str | Path],
        mask_index: Mapping[str, str | None],
        cache_dir: str | Path,
        p: float = 0.6,
        fill: str = "blur",
        *,
        root: str | Path | None = None,
        feather: int = 1,
        dilation: int = 2,
        cache_size: int = 16,
    ):
        if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
            raise ValueError(f"BackgroundSwap: p must be in [0, 1], got {p!r}")
        if fill not in FILLS:
            raise ValueError(f"BackgroundSwap: fill must be one of {FILLS}, got {fill!r}")
        for name, value in (("feather", feather), ("dilation", dilation), ("cache_size", cache_size)):
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"BackgroundSwap: {name} must be an integer >= 0, got {value!r}")
        self.p, self.fill = float(p), fill
        self.feather, self.dilation, self.cache_size = feather, dilation, cache_size
        self.cache_dir = Path(cache_dir)
        self.root = default_root(cache_dir) if root is None else Path(root)
        # Only the listed images' entries are kept (an index may cover more, e.g. query/test images).
        self._bg_paths: list[str] = []  # candidate j: image path, mask file (relative to cache_dir)
        self._bg_masks: list[str] = []
        self._bg_pos: dict[str, int] = {}  # cache key -> j
        outside = total = 0
        for item in records_or_paths:
            total += 1
            path = item.path if isinstance(item, ImageRecord) else Path(item)
            key = self._key(path)
            if key is None:
                outside += 1
            elif mask_index.get(key) is not None and key not in self._bg_pos:
                self._bg_pos[key] = len(self._bg_paths)
                self._bg_paths.append(str(path))
                self._bg_masks.append(mask_index[key])
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        if outside:
            log.warning("background swap: %d of %d images lie outside the mask root %s and are never swapped",
                        outside, total, self.root)
        if not self._bg_paths:
            log.warning("background swap: none of the %d images has a mask in %s (root %s): it changes nothing",
                        total, self.cache_dir, self.root)
        else:
            log.info("background swap: p=%g, fill=%s, %d of %d images have masks", self.p, fill,
                     len(self._bg_paths), total)

    @classmethod
    def from_cache(cls, records_or_paths: Iterable[ImageRecord | str | Path], cache_dir: str | Path,
                   **kwargs: Any) -> BackgroundSwap:
        """The swap for a mask cache made by :func:`vreid.prep.masks.compute_masks` (reads its index)."""
        return cls(records_or_paths, load_mask_index(cache_dir), cache_dir, **kwargs)

    @property
    def num_backgrounds(self) -> int:
        return len(self._bg_paths)

    def __repr__(self) -> str:
        return f"BackgroundSwap(p={self.p}, fill={self.fill!r}, backgrounds={len(self._bg_paths)})"

    def _key(self, path: str | Path) -> str | None:
        try:
            return mask_key(path, self.root)
        except ValueError:
            return None

    def _coin(self) -> bool:
        if self.p <= 0.0:
            return False
        return self.p >= 1.0 or torch.rand(()).item() < self.p

    def _pick(self, key: str) -> int | None:
        """A uniformly drawn candidate background other than the image itself (None if there is none)."""
        own = self._bg_pos.get(key)
        others = len(self._bg_paths) - (own is not None)
        if others < 1:
            return None
        j = int(torch.randint(others, ()).item())
        return j + 1 if own is not None and j >= own else j

    def _filled_background(self, j: int) -> np.ndarray:
        cached = self._cache.get(j)
        if cached is not None:
            self._cache.move_to_end(j)
            return cached
        image = read_image(self._bg_paths[j])
        hole = read_mask(self.cache_dir / self._bg_masks[j], image.size)
        filled = fill_background(np.asarray(image), hole, self.fill, self.dilation)
        if self.cache_size:
            self._cache[j] = filled
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return filled

    def __call__(self, image: Image.Image, path: str | Path) -> Image.Image:
        key = self._key(path)
        own = None if key is None else self._bg_pos.get(key)
        if own is None or not self._coin():
            return image
        j = self._pick(key)
        if j is None:
            return image
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        mask = read_mask(self.cache_dir / self._bg_masks[own], rgb.size)
        background = Image.fromarray(self._filled_background(j))
        if background.size != rgb.size:
            background = background.resize(rgb.size, Image.Resampling.BILINEAR)
        out = compose(np.asarray(rgb), np.asarray(background), soft_mask(mask, self.feather))
        return Image.fromarray(out)
