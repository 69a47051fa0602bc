"""Rank-list pictures: size, frame colours, letterboxing, and a 'missing' tile instead of a crash."""

from __future__ import annotations

import logging

import pytest
from PIL import Image

from vreid.viz import ranklist as rl


def make_image(path, colour, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_layout_arithmetic():
    layout = rl.ranklist_layout(3, (64, 48))
    cell_w, box_h = 64 + 2 * rl.BORDER, 48 + 2 * rl.BORDER
    width = 2 * rl.MARGIN + 4 * cell_w + rl.QUERY_GAP + 2 * rl.GAP
    assert layout.size == (width, 2 * rl.MARGIN + box_h + layout.caption_height)
    assert len(layout.boxes) == 4
    assert all(right - left == cell_w and bottom - top == box_h for left, top, right, bottom in layout.boxes)
    assert layout.boxes[1][0] - layout.boxes[0][2] == rl.QUERY_GAP
    assert layout.boxes[2][0] - layout.boxes[1][2] == rl.GAP


def test_draw_ranklist_frames_and_size(tmp_path, caplog):
    tile = (64, 64)
    query = make_image(tmp_path / "q.png", (0, 0, 255), (40, 40))
    wide = make_image(tmp_path / "g0.jpg", (250, 250, 0), (80, 40))  # letterboxed top and bottom
    tall = make_image(tmp_path / "g1.png", (255, 0, 255), (20, 60))  # letterboxed left and right
    missing = tmp_path / "nope.jpg"
    corrupt = tmp_path / "bad.jpg"
    corrupt.write_bytes(b"not an image")
    gallery = [wide, tall, missing, corrupt]
    matches = [True, False, None, True]
    with caplog.at_level(logging.WARNING, logger="vreid.viz.ranklist"):
        out = rl.draw_ranklist(query, gallery, matches, tmp_path / "out" / "r.png", query_label="id 7",
                               labels=["0.12", "0.34", "0.56", "0.78"], tile=tile)
    assert out == tmp_path / "out" / "r.png"
    img = Image.open(out)
    assert img.format == "PNG" and img.mode == "RGB"
    layout = rl.ranklist_layout(4, tile)
    assert img.size == layout.size

    expected = [rl.QUERY_COLOUR, rl.MATCH_COLOUR, rl.NON_MATCH_COLOUR, rl.UNKNOWN_COLOUR, rl.MATCH_COLOUR]
    for (left, top, right, bottom), colour in zip(layout.boxes, expected, strict=True):
        for x, y in [(left + 1, top + 1), (right - 2, bottom - 2), (left + 1, (top + bottom) // 2),
                     ((left + right) // 2, top + rl.BORDER - 1)]:
            assert img.getpixel((x, y)) == colour, (x, y)

    def inside(box, dx, dy):
        return img.getpixel((box[0] + rl.BORDER + dx, box[1] + rl.BORDER + dy))

    b_wide, b_tall, b_missing, b_corrupt = layout.boxes[1:]
    assert inside(b_wide, 32, 2) == rl.LETTERBOX_COLOUR  # 80x40 -> 64x32, bars of 16 px above and below
    assert _close(inside(b_wide, 32, 32), (250, 250, 0))
    assert inside(b_tall, 2, 32) == rl.LETTERBOX_COLOUR  # 20x60 -> 21x64, bars left and right
    assert _close(inside(b_tall, 32, 32), (255, 0, 255))
    assert inside(b_missing, 2, 2) == rl.MISSING_COLOUR
    assert inside(b_corrupt, 2, 2) == rl.MISSING_COLOUR
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "nope.jpg" in warned and "bad.jpg" in warned
    # the missing tile carries text: some pixels differ from its fill
    crop = img.crop((b_missing[0] + rl.BORDER, b_missing[1] + rl.BORDER, b_missing[2] - rl.BORDER,
                     b_missing[3] - rl.BORDER))
    assert len(crop.getcolors(maxcolors=1 << 16)) > 1
    # captions are drawn under the boxes
    caption = img.crop((b_wide[0], b_wide[3], b_wide[2], b_wide[3] + layout.caption_height))
    assert any(colour != rl.BACKGROUND_COLOUR for _, colour in caption.getcolors(maxcolors=1 << 16))


def _close(a, b, tol=8):
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def test_draw_ranklists_stacks_rows(tmp_path):
    q = make_image(tmp_path / "q.png", (10, 10, 10), (30, 30))
    g = make_image(tmp_path / "g.png", (200, 200, 200), (30, 30))
    rows = [rl.RankListRow(q, [g, g, g], [True, False, True]), rl.RankListRow(q, [g], [False], query_label="x")]
    out = rl.draw_ranklists(rows, tmp_path / "sheet.png", tile=(32, 32))
    img = Image.open(out)
    first, second = rl.ranklist_layout(3, (32, 32)), rl.ranklist_layout(1, (32, 32))
    assert img.size == (first.size[0], first.size[1] + second.size[1])
    left, top, _, _ = second.boxes[1]
    assert img.getpixel((left + 1, first.size[1] + top + 1)) == rl.NON_MATCH_COLOUR
    assert img.getpixel((first.boxes[3][0] + 1, first.boxes[3][1] + 1)) == rl.MATCH_COLOUR
    assert img.getpixel((first.size[0] - 1, first.size[1] + second.size[1] // 2)) == rl.BACKGROUND_COLOUR


def test_length_mismatch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="match flags"):
        rl.draw_ranklist(tmp_path / "q.png", [tmp_path / "g.png"], [], tmp_path / "r.png")
    with pytest.raises(ValueError, match="labels"):
        rl.draw_ranklist(tmp_path / "q.png", [tmp_path / "g.png"], [True], tmp_path / "r.png", labels=[])
    with pytest.raises(ValueError, match="at least one row"):
        rl.draw_ranklists([], tmp_path / "r.png")
