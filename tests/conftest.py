"""Shared test helpers: tiny images and label files written in the exact on-disk formats."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from PIL import Image

# ../shared beside the checkout (CI lays it there); VREID_SHARED points elsewhere.
SHARED = Path(os.environ.get("VREID_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def write_jpeg(path: Path, color: tuple[int, int, int] = (120, 60, 30), size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG")
    return path


def write_noise_png(path: Path, rng, size: tuple[int, int] = (16, 16)) -> Path:
    """A PNG of uniform RGB noise, ``size`` = (height, width): images whose features differ under a flip."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def write_label_xml(path: Path, items: Iterable[Mapping[str, str]], encoding: str = "gb2312") -> Path:
    """A VeRi/AIC-style label file: declared encoding, <TrainingImages><Items><Item .../>."""
    items = list(items)
    lines = [f'<?xml version="1.0" encoding="{encoding}"?>', '<TrainingImages Version="1.0">',
             f'<Items number="{len(items)}">']
    lines += ["<Item " + " ".join(f'{k}="{v}"' for k, v in item.items()) + " />" for item in items]
    lines += ["</Items>", "</TrainingImages>"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("\n".join(lines).encode(encoding if encoding != "gb2312" else "gb18030") + b"\n")
    return path


def write_lines(path: Path, lines: Iterable[str], trailing_newline: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    path.write_text(text + ("\n" if trailing_newline else ""))
    return path


def error_at(exc: pytest.ExceptionInfo, path: Path, line: int | None = None) -> str:
    """The error message, after checking that it names ``path`` (and ``line``: ``path:line:``)."""
    msg = str(exc.value)
    where = f"{path}:{line}:" if line is not None else str(path)
    assert where in msg, msg
    return msg


@pytest.fixture
def shared_vehicle2cam() -> Path:
    root = SHARED / "data" / "vehicle-2cam"
    if not (root / "train.txt").is_file():
        pytest.skip("../shared/data/vehicle-2cam is not present on this machine")
    return root
