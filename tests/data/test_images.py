"""Image decoding: clear errors, and the counted skip of unreadable files."""

from __future__ import annotations

import pytest
import torch

from conftest import write_jpeg
from vreid.data.images import ImageDataset, SkipReport, collate_images, find_unreadable, read_image
from vreid.data.records import ImageRecord
from vreid.errors import DatasetError


def test_unreadable_and_truncated_images_are_named(tmp_path):
    good = write_jpeg(tmp_path / "good.jpg", size=(32, 16))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    assert read_image(good).size == (32, 16)
    with pytest.raises(DatasetError, match=r"bad\.jpg: unreadable image"):
        read_image(bad)
    with pytest.raises(DatasetError, match=r"trunc\.jpg: unreadable image"):
        read_image(truncated)
    assert [p.name for p, _ in find_unreadable([good, bad, truncated])] == ["bad.jpg", "trunc.jpg"]


def test_skip_unreadable_drops_counts_and_reports(tmp_path):
    paths = [write_jpeg(tmp_path / f"{i}.jpg", size=(4, 4)) for i in range(4)]
    paths[2].write_bytes(b"\x00\x01")
    records = [ImageRecord(p, str(i), "c1") for i, p in enumerate(paths)]
    to_tensor = lambda im: torch.zeros(3, im.size[1], im.size[0])  # noqa: E731
    strict = torch.utils.data.DataLoader(ImageDataset(records, to_tensor), batch_size=4,
                                         collate_fn=collate_images)
    with pytest.raises(DatasetError, match=r"2\.jpg"):
        next(iter(strict))
    loader = torch.utils.data.DataLoader(ImageDataset(records, to_tensor, skip_unreadable=True), batch_size=4,
                                         collate_fn=collate_images)
    report = SkipReport()
    for batch in loader:
        assert batch["image"].shape == (3, 3, 4, 4)
        assert batch["index"].tolist() == [0, 1, 3]
        report.update(batch)
    assert report.count == 1 and report.paths == [str(paths[2])]
    assert report.report() == 1


def _png(width: int, height: int, pixel_data: bool) -> bytes:
    """A PNG claiming width x height, written by hand from the format: signature, IHDR, then IDAT and IEND, or
    nothing at all (a bare header, which Pillow cannot open)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rest = chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b"") if pixel_data else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + rest


@pytest.mark.parametrize("pixel_data", [True, False])
def test_a_png_claiming_too_many_pixels_is_too_large_even_without_pixel_data(tmp_path, pixel_data):
    import io

    from vreid.data.images import ImageTooLarge, NotAnImage, decode_image

    path = tmp_path / "bomb.png"
    path.write_bytes(_png(100_000, 100_000, pixel_data))
    for source in (path, io.BytesIO(path.read_bytes())):
        with pytest.raises(ImageTooLarge, match="100000x100000|10000000000 pixels"):
            decode_image(source, "bomb.png", max_pixels=1_000_000)
    path.write_bytes(_png(10, 10, pixel_data=False))  # small and without pixels: simply not a readable image
    with pytest.raises(NotAnImage):
        decode_image(path, "small.png", max_pixels=1_000_000)
