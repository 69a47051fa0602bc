"""Translating a folder of images with a trained UNIT generator (Liu, Breuel, Kautz, NeurIPS 2017).

The output keeps the input's layout: every image (found recursively) is written under the same relative path
and file name, at its original size (translated at the model's square size, then resized back), as JPEG or
PNG according to its extension; every non-image file (e.g. ``train_label.xml``) is copied beside. So a
translated copy of the synthetic AIC21 set is read by the same reader as the original::

    translate_folder("runs/unit/translator.pth", ".../AIC21_Track2_ReID_Simulation",
                     ".../translated/AIC21_Track2_ReID_Simulation")

Translation is deterministic: the latent mean is decoded, no noise is sampled.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vreid.data.formats.common import IMAGE_SUFFIXES
from vreid.data.images import read_image
from vreid.engine.checkpoint import load_checkpoint
from vreid.engine.distributed import default_device
from vreid.errors import VreidError
from vreid.prep.unit.networks import UnitGenerator
from vreid.prep.unit.train import find_images, to_image, to_tensor

log = logging.getLogger(__name__)

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}


def load_translator(checkpoint: str | Path, device: str | torch.device | None = None) -> tuple[UnitGenerator, int]:
    """The generator (eval mode, on ``device``) and its image size, from ``translator.pth`` or ``last.pth``."""
    state = load_checkpoint(checkpoint)
    arch = state.get("model")
    if not isinstance(arch, dict) or "generator" not in state:
        raise VreidError(f"{checkpoint}: not a UNIT translator or training checkpoint (no 'model'/'generator')")
    try:
        generator = UnitGenerator(3, arch["width"], arch["n_downsample"], arch["n_res"], arch["n_shared"])
        generator.load_state_dict(state["generator"])
    except (KeyError, RuntimeError) as exc:
        raise VreidError(f"{checkpoint}: UNIT generator does not match its stored options ({exc})") from None
    device = torch.device(device) if device else default_device()
    return generator.to(device).eval(), int(arch["image_size"])


class _FolderDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, tuple[int, int], int]:
        image = read_image(self.paths[i])
        return to_tensor(image.resize((self.size, self.size), Image.Resampling.BICUBIC)), image.size, i


def _collate(batch: list[tuple[torch.Tensor, tuple[int, int], int]]) -> tuple[torch.Tensor, list, list]:
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch], [b[2] for b in batch]


def _write_image(image: Image.Image, path: Path, jpeg_quality: int) -> None:
    """Write by extension through a temporary name, so an interrupted run leaves no truncated image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = _FORMATS.get(path.suffix.lower(), "PNG")
    kwargs: dict[str, Any] = {"quality": jpeg_quality} if fmt in ("JPEG", "WEBP") else {}
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, fmt, **kwargs)
    os.replace(tmp, path)


def translate_folder(checkpoint: str | Path, in_dir: str | Path, out_dir: str | Path, direction: str = "a2b",
                     batch_size: int = 16, *, device: str | torch.device | None = None, workers: int = 0,
                     skip_existing: bool = False, jpeg_quality: int = 95) -> int:
    """Translate every image under ``in_dir`` into ``out_dir`` (same relative paths); return how many.

    ``direction`` 'a2b' maps the training source domain (synthetic) to the target (real); 'b2a' the reverse.
    Non-image files under ``in_dir`` are copied. ``skip_existing`` leaves images already in ``out_dir``
    alone (to finish an interrupted run).
    """
    if direction not in ("a2b", "b2a"):
        raise VreidError(f"direction must be 'a2b' or 'b2a', got {direction!r}")
    if batch_size < 1:
        raise VreidError(f"batch_size must be >= 1, got {batch_size}")
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    images = find_images(in_dir)
    src, dst = in_dir.resolve(), out_dir.resolve()
    if dst == src or src in dst.parents:
        raise VreidError(f"{out_dir}: the output folder must not be the input folder {in_dir} or inside it")
    generator, size = load_translator(checkpoint, device)
    device = next(generator.parameters()).device

    out_dir.mkdir(parents=True, exist_ok=True)
    copied = 0
    for path in sorted(in_dir.rglob("*")):
        if path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES:
            target = out_dir / path.relative_to(in_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied += 1
    if copied:
        log.info("copied %d non-image files (e.g. label XML) from %s to %s", copied, in_dir, out_dir)

    relative = [p.relative_to(in_dir) for p in images]
    todo = [i for i, rel in enumerate(relative) if not (skip_existing and (out_dir / rel).is_file())]
    if len(todo) < len(images):
        log.info("skipping %d images already translated in %s", len(images) - len(todo), out_dir)
    loader = torch.utils.data.DataLoader(_FolderDataset([images[i] for i in todo], size), batch_size=batch_size,
                                         num_workers=workers, collate_fn=_collate,
                                         pin_memory=device.type == "cuda")
    done, t0, t_log = 0, time.perf_counter(), time.perf_counter()
    with torch.inference_mode():
        for batch, sizes, indices in loader:
            translated = generator.translate(batch.to(device, non_blocking=True), direction).float().cpu()
            for t, orig_size, k in zip(translated, sizes, indices, strict=True):
                image = to_image(t)
                if image.size != tuple(orig_size):
                    image = image.resize(tuple(orig_size), Image.Resampling.BICUBIC)
                _write_image(image, out_dir / relative[todo[k]], jpeg_quality)
            done += len(indices)
            if time.perf_counter() - t_log > 30:
                t_log = time.perf_counter()
                log.info("UNIT %s: %d/%d images (%.1f/s)", direction, done, len(todo), done / (t_log - t0))
    log.info("UNIT %s: translated %d images from %s into %s", direction, done, in_dir, out_dir)
    return done
