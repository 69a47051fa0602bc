"""Reading images, with a clear error or a counted skip for files that cannot be decoded.

Readers only check that listed files exist; decoding happens here, when a batch is built. A
corrupt file either stops the run with its path (the default) or, with
``DATALOADER.SKIP_UNREADABLE``, is dropped from its batch and counted, and the count and the
paths are reported (:class:`SkipReport`), so a few bad files in a 50k-image set do not kill a
long training run silently or otherwise.

Only JPEG, PNG, WebP and BMP decoders ever run, and the pixel count is checked from the header before
any pixel is decoded (:class:`ImageTooLarge`), for dataset files, ``--images`` folders and uploads alike.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, UnidentifiedImageError

from vreid.data.records import ImageRecord
from vreid.errors import DatasetError

log = logging.getLogger(__name__)

# Only these decoders ever run: the other Pillow plugins (EPS runs Ghostscript, and many rarely used parsers have
# had memory-safety bugs) are never tried, whatever the bytes or the file name claim.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
FORMAT_NAMES = "JPEG, PNG, WebP or BMP"
# Largest image read from a file (width x height, checked from the header before any pixel is decoded): Pillow's
# own decompression-bomb threshold, so that its warning never fires before this clearer error.
MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
SUFFIXES = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}
# the pixel checks below refuse such images with an error naming the file; Pillow's warning would only add noise
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageTooLarge(DatasetError):
    """More pixels than allowed (also when only the header claims them): HTTP 413 in the service."""


class NotAnImage(DatasetError):
    """Not a decodable JPEG, PNG, WebP or BMP image: HTTP 415 in the service."""


@dataclass(frozen=True)
class ImageHeader:
    width: int
    height: int
    format: str  # one of IMAGE_FORMATS

    @property
    def pixels(self) -> int:
        return self.width * self.height


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _claimed_png_size(source: str | Path | BinaryIO) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, read by hand: Pillow refuses a PNG that has a header but no pixel
    data at all, yet what it claims still decides between "too large" (413) and "not an image" (415)."""
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as f:
                head = f.read(24)
        else:
            source.seek(0)
            head = source.read(24)
    except OSError:
        return None
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _open(source: str | Path | BinaryIO, name: str | Path, max_pixels: int) -> Image.Image:
    """Open (header only) with the allowed decoders; any failure becomes a DatasetError naming ``name``."""
    try:
        img = Image.open(source, formats=IMAGE_FORMATS)
    except FileNotFoundError:
        raise DatasetError("image file not found", path=name) from None
    except Image.DecompressionBombError as exc:  # Pillow's own bomb check, inside open(): same meaning as ours
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        what = f"image of {claimed.group(1)} pixels" if claimed else "image"
        raise ImageTooLarge(f"{what} has more than {max_pixels} pixels", path=name) from None
    except Exception as exc:  # a decoder's parser can raise nearly anything (struct.error, IndexError, ...)
        claimed = _claimed_png_size(source)
        if claimed is not None and claimed[0] * claimed[1] > max_pixels:
            raise ImageTooLarge(f"image {claimed[0]}x{claimed[1]} has more than {max_pixels} pixels",
                                path=name) from None
        if isinstance(exc, UnidentifiedImageError):
            raise NotAnImage(f"unreadable image (not a {FORMAT_NAMES} file)", path=name) from None
        raise NotAnImage(f"unreadable image ({type(exc).__name__}: {exc})", path=name) from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ImageTooLarge(f"image {width}x{height} has more than {max_pixels} pixels", path=name)
    return img


def image_header(source: str | Path | BinaryIO, name: str | Path | None = None,
                 max_pixels: int = MAX_PIXELS) -> ImageHeader:
    """Size and format from the header alone (no pixel decoded), checked against ``max_pixels``."""
    with _open(source, source if name is None else name, max_pixels) as img:
        return ImageHeader(img.size[0], img.size[1], str(img.format))


def decode_image(source: str | Path | BinaryIO, name: str | Path | None = None,
                 max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, ImageHeader]:
    """Decode fully as RGB (JPEG, PNG, WebP, BMP only, at most ``max_pixels``); failures name ``name``."""
    name = source if name is None else name
    with _open(source, name, max_pixels) as img:
        header = ImageHeader(img.size[0], img.size[1], str(img.format))
        try:
            return img.convert("RGB"), header  # convert() forces the full decode inside the try
        except Exception as exc:  # truncated data, decoder errors of any type
            raise NotAnImage(f"unreadable image ({type(exc).__name__}: {exc})", path=name) from None


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file fully as RGB; any failure becomes a DatasetError naming the file."""
    return decode_image(path, max_pixels=max_pixels)[0]


def find_unreadable(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """Decode every image; return (path, reason) for those that fail."""
    bad = []
    for p in paths:
        try:
            read_image(p)
        except DatasetError as exc:
            bad.append((Path(p), str(exc)))
    return bad


class ImageDataset:
    """Records -> ``{"image": transform(PIL image), "index": i}``: a map-style dataset for a torch DataLoader.

    A plain class (a DataLoader needs only ``__len__`` and ``__getitem__``), so that decoding images never imports
    torch: the report and the service's checks read images without it.

    With ``skip_unreadable`` a file that fails to decode yields ``{"skipped": path}`` instead of
    raising; :func:`collate_images` drops it from the batch and lists it under ``"skipped"``.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable[[Image.Image], Any] | None = None,
        skip_unreadable: bool = False,
    ):
        self.records = records
        self.transform = transform
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.records[index].path
        try:
            image = read_image(path)
        except DatasetError:
            if not self.skip_unreadable:
                raise
            log.warning("skipping unreadable image %s", path)
            return {"skipped": str(path)}
        return {"image": self.transform(image) if self.transform else image, "index": index}


def collate_images(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable samples; list the skipped ones (a batch may shrink, never crash).

    ``image`` is stacked (tensors) or kept as a list (PIL images); every other field becomes a tensor.
    """
    import torch  # the batch is torch's; decoding alone never needs it

    good = [b for b in batch if "skipped" not in b]
    out: dict[str, Any] = {"skipped": [b["skipped"] for b in batch if "skipped" in b]}
    keys = good[0].keys() if good else ("image", "index")
    for key in keys:
        values = [b[key] for b in good]
        if key == "image":
            out[key] = torch.stack(values) if values and isinstance(values[0], torch.Tensor) else values
        else:
            out[key] = torch.tensor(values, dtype=torch.long)
    return out


@dataclass
class SkipReport:
    """Accumulates the unreadable images met during a run and reports them once."""

    paths: list[str] = field(default_factory=list)

    def update(self, batch: dict[str, Any]) -> None:
        self.paths.extend(batch.get("skipped", ()))

    @property
    def count(self) -> int:
        return len(self.paths)

    def report(self) -> int:
        if self.paths:
            shown = ", ".join(sorted(set(self.paths))[:10])
            log.warning("skipped %d unreadable image reads (%d distinct files), e.g. %s",
                        self.count, len(set(self.paths)), shown)
        return self.count
