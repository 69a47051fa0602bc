"""Reading images, with a clear error or a counted skip for files that cannot be decoded.

Readers only check that listed files exist; decoding happens here, when a batch is built. A
corrupt file either stops the run with its path (the default) or, with
``DATALOADER.SKIP_UNREADABLE``, is dropped from its batch and counted, and the count and the
paths are reported (:class:`SkipReport`), so a few bad files in a 50k-image set do not kill a
long training run silently or otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from vreid.data.records import ImageRecord
from vreid.errors import DatasetError

log = logging.getLogger(__name__)


def read_image(path: str | Path) -> Image.Image:
    """Decode an image fully as RGB; any failure becomes a DatasetError naming the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() forces the full decode inside the try
    except FileNotFoundError:
        raise DatasetError("image file not found", path=path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"unreadable image ({type(exc).__name__}: {exc})", path=path) from None


def find_unreadable(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """Decode every image; return (path, reason) for those that fail."""
    bad = []
    for p in paths:
        try:
            read_image(p)
        except DatasetError as exc:
            bad.append((Path(p), str(exc)))
    return bad


class ImageDataset(torch.utils.data.Dataset):
    """Records -> ``{"image": transform(PIL image), "index": i}``.

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
