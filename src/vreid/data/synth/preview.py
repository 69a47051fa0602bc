"""A labelled contact sheet of the synthetic city, to eyeball what a model will be trained on.

Rows are identities (real-like first, then sim-like), columns their sightings (first and last frame of each
camera's tracklet). The cells are the very JPEG bytes the dataset writer produces for those frames. A first row
shows one vehicle at the eight canonical orientations, to check the orientation convention by eye.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from vreid.data.synth.city import RenderJob, real_tracklets, render_job, vehicle_tracklets
from vreid.data.synth.options import SynthOptions
from vreid.data.synth.scene import Tracklet, render_view
from vreid.data.synth.vehicles import identity_attributes

log = logging.getLogger(__name__)

_CELL_W, _IMG_H, _CAPTION_H = 120, 84, 13
_LABEL_W, _HEADER_H, _COLS = 236, 26, 8
_BG, _CELL_BG, _TEXT = (250, 250, 248), (214, 214, 212), (20, 20, 24)


def _fit(img: Image.Image) -> Image.Image:
    """Scale into the cell keeping the aspect ratio, so small crops look small-but-whole, as a model sees them."""
    s = min(_CELL_W / img.width, _IMG_H / img.height)
    size = (max(1, round(img.width * s)), max(1, round(img.height * s)))
    return img.resize(size, Image.BILINEAR)


def _sighting_cells(options: SynthOptions, tracks: list[Tracklet]) -> list[tuple[Image.Image, str]]:
    cells: list[tuple[Image.Image, str]] = []
    frames = [(t, f) for t in tracks for f in sorted({0, t.n_frames - 1})]
    for t, f in frames[:_COLS]:
        data, attrs = render_job(RenderJob(options.seed, options.group_size, t, f))
        img = Image.open(io.BytesIO(data)).convert("RGB")
        cells.append((img, f"c{t.camera:03d} f{f} {float(attrs['orientation']):.0f}deg {img.width}x{img.height}"))
    return cells


def write_contact_sheet(out_png: Path, options: SynthOptions, num_ids: int = 8) -> Path:
    """Render a labelled grid PNG of ``num_ids`` real-like and ``num_ids`` sim-like identities; return its path."""
    options.check()
    if num_ids < 1:
        raise ValueError(f"num_ids must be >= 1, got {num_ids}")
    font = ImageFont.load_default()
    small = ImageFont.load_default(size=9) if hasattr(ImageFont, "FreeTypeFont") else font
    rows: list[tuple[list[str], list[tuple[Image.Image, str]]]] = []

    ref = identity_attributes(options.seed, 0, options.group_size, "real")
    rows.append(([f"orientation check: real 0001 {ref.type_name}",
                  "0=front faces camera, 90=points right,", "180=rear faces camera, 270=points left"],
                 [(render_view(ref, a, 20.0, long_side=110), f"orientation {a}") for a in range(0, 360, 45)]))
    n_real = min(num_ids, options.num_ids)
    for v in range(n_real):
        ident = identity_attributes(options.seed, v, options.group_size, "real")
        split = "train" if v < options.num_train_ids else "test"
        rows.append(([f"real {v + 1:04d} [{split}] group {v // options.group_size}",
                      f"{ident.type_name} / {ident.color_name}", ident.describe()],
                     _sighting_cells(options, real_tracklets(options, v))))
    for v in range(min(num_ids, options.sim_ids)):
        ident = identity_attributes(options.seed, v, options.group_size, "sim")
        rows.append(([f"sim {v + 1:05d} group {v // options.group_size}",
                      f"{ident.type_name} / {ident.color_name}", ident.describe()],
                     _sighting_cells(options, vehicle_tracklets(options, "sim", v))))

    row_h = _IMG_H + _CAPTION_H + 6
    sheet = Image.new("RGB", (_LABEL_W + _COLS * (_CELL_W + 4) + 4, _HEADER_H + len(rows) * row_h), _BG)
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), f"vreid synthetic city - seed {options.seed}, {options.num_ids} real-like ids, "
                      f"{options.sim_ids} sim-like ids, {options.num_cameras} cameras, group size "
                      f"{options.group_size}", fill=_TEXT, font=font)
    for r, (label, cells) in enumerate(rows):
        y = _HEADER_H + r * row_h
        for k, line in enumerate(label):
            draw.text((6, y + 8 + 15 * k), line, fill=_TEXT, font=font)
        for c, (img, caption) in enumerate(cells):
            x = _LABEL_W + c * (_CELL_W + 4)
            draw.rectangle([x, y, x + _CELL_W - 1, y + _IMG_H - 1], fill=_CELL_BG)
            thumb = _fit(img)
            sheet.paste(thumb, (x + (_CELL_W - thumb.width) // 2, y + (_IMG_H - thumb.height) // 2))
            draw.text((x + 1, y + _IMG_H + 1), caption, fill=_TEXT, font=small)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png, "PNG")
    log.info("contact sheet with %d rows: %s", len(rows), out_png)
    return out_png
