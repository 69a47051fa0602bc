"""Rank-list pictures: a query followed by its top-k gallery images, framed by whether each one is a true match.

A picture is a report, so it never stops on a bad file: an image that is missing or cannot be decoded becomes a grey
"missing" tile and a logged warning. Geometry is fixed by :func:`ranklist_layout`, so callers (and tests) know where
each tile lands.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vreid.data.images import read_image
from vreid.errors import DatasetError
from vreid.features import FeatureSet
from vreid.fileio import atomic_write_bytes
from vreid.retrieval.distance import smallest_k
from vreid.retrieval.metrics import junk_mask

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]

BORDER = 4  # frame width around every tile, in pixels
GAP = 4  # between two gallery cells
QUERY_GAP = 16  # between the query and the first gallery cell
MARGIN = 6  # around a row
MATCH_COLOUR: RGB = (0, 170, 0)
NON_MATCH_COLOUR: RGB = (220, 30, 30)
UNKNOWN_COLOUR: RGB = (128, 128, 128)  # match status not known (unlabelled gallery)
QUERY_COLOUR: RGB = (40, 90, 220)
LETTERBOX_COLOUR: RGB = (24, 24, 24)
MISSING_COLOUR: RGB = (200, 200, 200)
BACKGROUND_COLOUR: RGB = (255, 255, 255)
TEXT_COLOUR: RGB = (0, 0, 0)


@dataclass(frozen=True)
class RankListRow:
    """One query and its ranked gallery images; ``matches[i]`` is True/False, or None when unknown."""

    query_path: str | Path
    gallery_paths: Sequence[str | Path]
    matches: Sequence[bool | None]
    query_label: str = ""
    labels: Sequence[str] | None = None


@dataclass(frozen=True)
class RankListLayout:
    """Pixel geometry of one row: its size and the framed box (border included) of the query, then each gallery
    image; the caption band of ``caption_height`` pixels lies under each box."""

    size: tuple[int, int]
    boxes: tuple[Box, ...]
    caption_height: int


def caption_height(tile: tuple[int, int]) -> int:
    """Height of the caption band under a tile: readable at small tiles, in proportion at large ones."""
    return max(14, tile[1] // 8)


def ranklist_layout(num_gallery: int, tile: tuple[int, int] = (128, 128)) -> RankListLayout:
    """Geometry of a row with ``num_gallery`` gallery images, tiles of ``tile`` = (width, height) pixels."""
    if tile[0] < 1 or tile[1] < 1:
        raise ValueError(f"tile must be a positive (width, height), got {tile}")
    cell_w, box_h = tile[0] + 2 * BORDER, tile[1] + 2 * BORDER
    cap_h = caption_height(tile)
    lefts = [MARGIN] + [MARGIN + cell_w + QUERY_GAP + i * (cell_w + GAP) for i in range(num_gallery)]
    boxes = tuple((x, MARGIN, x + cell_w, MARGIN + box_h) for x in lefts)
    size = (lefts[-1] + cell_w + MARGIN, MARGIN + box_h + cap_h + MARGIN)
    return RankListLayout(size=size, boxes=boxes, caption_height=cap_h)


def match_colour(match: bool | None) -> RGB:
    """Frame colour: green for a true match, red for a false one, grey when unknown."""
    if match is None:
        return UNKNOWN_COLOUR
    return MATCH_COLOUR if bool(match) else NON_MATCH_COLOUR


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text``, shortened with '...' until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def _missing_tile(tile: tuple[int, int]) -> Image.Image:
    img = Image.new("RGB", tile, MISSING_COLOUR)
    draw = ImageDraw.Draw(img)
    font = _font(max(8, min(tile) // 8))
    text = _fit_text(draw, "missing", font, tile[0])
    draw.text((tile[0] / 2, tile[1] / 2), text, fill=(60, 60, 60), font=font, anchor="mm")
    return img


def _load_tile(path: str | Path, tile: tuple[int, int]) -> Image.Image:
    """The image resized to fit ``tile`` with its aspect kept, centred on letterbox bars; "missing" if unreadable."""
    try:
        image = read_image(path)
    except DatasetError as exc:  # missing or undecodable; the message names the file
        log.warning("rank list: %s; drawing a 'missing' tile", exc)
        return _missing_tile(tile)
    except Exception as exc:  # a report must survive any one bad file (decompression bomb, ...)
        log.warning("rank list: cannot read %s (%s: %s); drawing a 'missing' tile", path, type(exc).__name__, exc)
        return _missing_tile(tile)
    scale = min(tile[0] / image.width, tile[1] / image.height)
    size = (max(1, min(tile[0], round(image.width * scale))), max(1, min(tile[1], round(image.height * scale))))
    image = image.resize(size, Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", tile, LETTERBOX_COLOUR)
    canvas.paste(image, ((tile[0] - size[0]) // 2, (tile[1] - size[1]) // 2))
    return canvas


def render_ranklist(row: RankListRow, tile: tuple[int, int]) -> Image.Image:
    """One row as an in-memory picture (for files, see :func:`draw_ranklist`; for HTML, the report)."""
    k = len(row.gallery_paths)
    if len(row.matches) != k:
        raise ValueError(f"{k} gallery images but {len(row.matches)} match flags for query {row.query_path}")
    if row.labels is not None and len(row.labels) != k:
        raise ValueError(f"{k} gallery images but {len(row.labels)} labels for query {row.query_path}")
    layout = ranklist_layout(k, tile)
    img = Image.new("RGB", layout.size, BACKGROUND_COLOUR)
    draw = ImageDraw.Draw(img)
    font = _font(max(8, layout.caption_height - 4))
    colours = [QUERY_COLOUR] + [match_colour(m) for m in row.matches]
    paths = [row.query_path, *row.gallery_paths]
    captions = [f"query {row.query_label}".strip()]
    captions += [f"#{i + 1} {row.labels[i] if row.labels is not None else ''}".strip() for i in range(k)]
    for (left, top, right, bottom), colour, path, caption in zip(layout.boxes, colours, paths, captions, strict=True):
        draw.rectangle((left, top, right - 1, bottom - 1), fill=colour)
        img.paste(_load_tile(path, tile), (left + BORDER, top + BORDER))
        text = _fit_text(draw, caption, font, right - left)
        draw.text(((left + right) / 2, bottom + layout.caption_height / 2), text, fill=TEXT_COLOUR, font=font,
                  anchor="mm")
    return img


def _save_png(img: Image.Image, out_png: str | Path) -> Path:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return atomic_write_bytes(out_png, buf.getvalue())


def draw_ranklist(
    query_path: str | Path,
    gallery_paths: Sequence[str | Path],
    matches: Sequence[bool | None],
    out_png: str | Path,
    *,
    query_label: str = "",
    labels: Sequence[str] | None = None,
    tile: tuple[int, int] = (128, 128),
) -> Path:
    """Write one row — the query (blue frame), then the ranked gallery images framed green (true match), red (false)
    or grey (None, unknown) — with a caption "#rank label" under each, as a PNG; returns its path."""
    row = RankListRow(query_path, gallery_paths, matches, query_label, labels)
    return _save_png(render_ranklist(row, tile), out_png)


def draw_ranklists(
    rows: Sequence[RankListRow], out_png: str | Path, *, tile: tuple[int, int] = (128, 128)
) -> Path:
    """Stack several rank-list rows (one per query) into one PNG; shorter rows are padded on the right."""
    if not rows:
        raise ValueError("draw_ranklists needs at least one row")
    images = [render_ranklist(row, tile) for row in rows]
    sheet = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), BACKGROUND_COLOUR)
    y = 0
    for image in images:
        sheet.paste(image, (0, y))
        y += image.height
    return _save_png(sheet, out_png)


def rank_row(query: FeatureSet, gallery: FeatureSet, dist: np.ndarray, qi: int, top_k: int = 10):
    """Rank-list row of query ``qi``: true matches green, false red, junk (same id, same camera) grey.

    One function for ``vreid test``'s ranklist.png and ``vreid report``'s page, so both draw the same ranking and
    the same junk rule (:func:`vreid.retrieval.metrics.junk_mask`).
    """
    order = smallest_k(dist[qi : qi + 1], top_k)[0]
    same_id = gallery.vehicle_ids[order] == query.vehicle_ids[qi]
    junk = junk_mask(query.vehicle_ids[qi], query.camera_ids[qi], gallery.vehicle_ids[order], gallery.camera_ids[order])
    matches = [None if j else bool(m) for m, j in zip(same_id, junk, strict=True)]
    return RankListRow(query.paths[qi], list(gallery.paths[order]), matches,
                       query_label=query.vehicle_ids[qi], labels=[f"d={dist[qi, g]:.3f}" for g in order])


def rank_rows(query: FeatureSet, gallery: FeatureSet, dist: np.ndarray, num_queries: int, top_k: int = 10):
    """Rank-list rows of the first ``num_queries`` queries (see :func:`rank_row`)."""
    return [rank_row(query, gallery, dist, qi, top_k) for qi in range(min(num_queries, len(query)))]
