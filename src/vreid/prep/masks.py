"""Foreground (vehicle) masks for the background swap, computed once and cached beside the dataset.

The paper's official code consumed precomputed masks whose producing code was never published, and it
keyed them by file basename, so a synthetic image named like a real one was silently replaced by the real
vehicle (docs/method.md, Background swap). Here a mask is keyed by the image's path relative to a root, the
cache has an index (``masks.json``: relative image path -> mask file relative to the cache, or null where no
vehicle was found) so the swap can skip images without a usable mask instead of pasting garbage, and
computing is resumable: images already in the index are never computed again.

Masks come from a :class:`MaskSource`: torchvision's COCO Mask R-CNN loaded from a local weights file
(:class:`MaskRCNNSource`; nothing is ever downloaded) or a folder of masks the user already has
(:class:`FolderMaskSource`). A cached mask is an 8-bit PNG (255 = vehicle, 0 = background) at the image's
size, stored under the image's relative path with the suffix ``.png``, so a cache is itself a valid mask
folder for :class:`FolderMaskSource`.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vreid.data.images import image_header, read_image
from vreid.data.masks import (
    default_root,
    load_mask_index,
    mask_file,
    mask_key,
    read_mask,
    save_mask_index,
    write_mask,
)
from vreid.engine.checkpoint import model_weights
from vreid.errors import DatasetError, VreidError

log = logging.getLogger(__name__)

# torchvision's 91-index COCO labels (MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]); checked by a test.
VEHICLE_LABELS: dict[int, str] = {3: "car", 4: "motorcycle", 6: "bus", 8: "truck"}
SCORE_THRESHOLD = 0.5
MASK_THRESHOLD = 0.5
INDEX_SAVE_INTERVAL_S = 30.0  # the index is rewritten at most this often while computing (and always at the end)

# A torchvision detection model's call: list of CxHxW float images in [0, 1] -> one dict per image with
# "boxes" (Nx4, x1 y1 x2 y2), "labels" (N), "scores" (N) and "masks" (Nx1xHxW probabilities).
Detector = Callable[[list[torch.Tensor]], list[Mapping[str, torch.Tensor]]]


def select_vehicle_mask(
    output: Mapping[str, torch.Tensor],
    labels: Collection[int] = tuple(VEHICLE_LABELS),
    score_threshold: float = SCORE_THRESHOLD,
    mask_threshold: float = MASK_THRESHOLD,
    min_area: float = 0.0,
) -> np.ndarray | None:
    """The mask of this crop's vehicle in one detector output, or None if there is none.

    Candidates are the detections of a vehicle class scoring at least ``score_threshold``. A ReID crop is
    centred on its vehicle, so the detections whose box covers the image centre come first (a sharper,
    higher-scoring neighbour at the border is not the identity); within each group the best score wins.
    The chosen mask is its probability map thresholded at ``mask_threshold``; a mask covering less than
    ``min_area`` of the image (or nothing) is passed over for the next candidate.
    """
    masks = output["masks"]
    if masks.ndim == 4:
        masks = masks[:, 0]
    height, width = masks.shape[-2:]
    scores = output["scores"].detach().cpu().tolist()
    classes = output["labels"].detach().cpu().tolist()
    boxes = output["boxes"].detach().cpu().tolist()
    wanted = set(labels)
    keep = [i for i, (c, s) in enumerate(zip(classes, scores, strict=True)) if c in wanted and s >= score_threshold]
    cx, cy = width / 2.0, height / 2.0

    def covers_centre(i: int) -> bool:
        x1, y1, x2, y2 = boxes[i]
        return x1 <= cx <= x2 and y1 <= cy <= y2

    order = sorted(keep, key=lambda i: (not covers_centre(i), -scores[i], i))
    for i in order:
        mask = (masks[i] >= mask_threshold).cpu().numpy()
        if mask.any() and mask.mean() >= min_area:
            return mask
    return None


def build_maskrcnn(weights: str | Path, device: str | torch.device = "cpu", bn_eps: float = 0.0,
                   **kwargs: Any) -> torch.nn.Module:
    """torchvision's ``maskrcnn_resnet50_fpn`` (91 COCO classes) with weights from a local file, in eval mode.

    Built without any download (``weights=None, weights_backbone=None``), which gives plain BatchNorm layers
    instead of the frozen ones the published file was saved from: their missing ``num_batches_tracked``
    counters are accepted, and ``bn_eps`` = 0 copies what torchvision sets for the COCO_V1 weights. The file
    is a plain state_dict (e.g. torchvision's ``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth``), a checkpoint
    with a ``model`` entry, or safetensors. ``kwargs`` go to ``MaskRCNN`` (e.g. ``min_size``, ``max_size``).
    """
    from torchvision.models.detection import maskrcnn_resnet50_fpn


    path = Path(weights)
    if not path.is_file():
        raise VreidError(f"{path}: Mask R-CNN weights file not found (weights are only read from a local file, "
                         "never downloaded)")
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kwargs)
    missing, unexpected = model.load_state_dict(model_weights(path), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise VreidError(f"{path}: not maskrcnn_resnet50_fpn weights ({len(missing)} missing keys, e.g. "
                         f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = bn_eps
    model.requires_grad_(False)
    return model.eval().to(device)


class MaskSource(abc.ABC):
    """Where masks come from: one boolean HxW mask (True = vehicle) at the image's size per image, or None."""

    name = "source"

    @abc.abstractmethod
    def predict(self, paths: Sequence[Path], keys: Sequence[str], device: str = "cpu") -> list[np.ndarray | None]:
        """Masks of ``paths`` (``keys`` are their paths relative to the dataset root), None = no vehicle."""


class MaskRCNNSource(MaskSource):
    """A COCO Mask R-CNN: the mask of the crop's vehicle (see :func:`select_vehicle_mask`).

    Give ``weights`` (a local file, see :func:`build_maskrcnn`; the model is built on first use) or, for
    tests and other models, a ready ``detector`` with torchvision's detection interface.
    """

    name = "maskrcnn"

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        detector: Detector | None = None,
        labels: Collection[int] = tuple(VEHICLE_LABELS),
        score_threshold: float = SCORE_THRESHOLD,
        mask_threshold: float = MASK_THRESHOLD,
        min_area: float = 0.0,
        **model_kwargs: Any,
    ):
        if (weights is None) == (detector is None):
            raise ValueError("MaskRCNNSource: give exactly one of weights (a local weights file) or detector")
        for name, value in (("score_threshold", score_threshold), ("mask_threshold", mask_threshold),
                            ("min_area", min_area)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"MaskRCNNSource: {name} must be in [0, 1], got {value}")
        self.weights = None if weights is None else Path(weights)
        self.labels = tuple(labels)
        self.score_threshold, self.mask_threshold, self.min_area = score_threshold, mask_threshold, min_area
        self.model_kwargs = model_kwargs
        self._detector = detector
        self._device: str | None = None

    def _get_detector(self, device: str) -> Detector:
        if self.weights is None:  # an injected detector: its owner placed it
            assert self._detector is not None
            return self._detector
        if self._detector is None:
            log.info("loading Mask R-CNN weights from %s", self.weights)
            self._detector = build_maskrcnn(self.weights, device, **self.model_kwargs)
        elif self._device != device:
            self._detector = self._detector.to(device)  # type: ignore[attr-defined]
        self._device = device
        return self._detector

    def predict(self, paths: Sequence[Path], keys: Sequence[str], device: str = "cpu") -> list[np.ndarray | None]:
        detector = self._get_detector(device)
        images = [torch.from_numpy(np.array(read_image(p))).permute(2, 0, 1).float().div_(255.0).to(device)
                  for p in paths]
        with torch.inference_mode():
            outputs = detector(images)
        return [select_vehicle_mask(out, self.labels, self.score_threshold, self.mask_threshold, self.min_area)
                for out in outputs]


class FolderMaskSource(MaskSource):
    """Masks the user already has: ``mask_root/<image's relative path with suffix .png>``.

    A missing or empty mask means "no vehicle"; a mask whose size differs from its image is an error
    (it belongs to another image or a resized copy). 8-bit masks are vehicle where >= 128, 0/1 masks where 1.
    """

    name = "folder"

    def __init__(self, mask_root: str | Path):
        self.mask_root = Path(mask_root)
        if not self.mask_root.is_dir():
            raise DatasetError("mask folder not found", path=self.mask_root)

    def predict(self, paths: Sequence[Path], keys: Sequence[str], device: str = "cpu") -> list[np.ndarray | None]:
        masks: list[np.ndarray | None] = []
        for path, key in zip(paths, keys, strict=True):
            file = self.mask_root / mask_file(key)
            if not file.is_file():
                log.debug("no mask for %s (looked for %s)", path, file)
                masks.append(None)
                continue
            header = image_header(path)  # the header only, the allowed decoders only, errors naming the file
            size = (header.width, header.height)
            mask = read_mask(file, size)
            masks.append(mask if mask.any() else None)
        return masks


def compute_masks(
    image_paths: Iterable[str | Path],
    cache_dir: str | Path,
    source: MaskSource,
    batch_size: int = 4,
    device: str = "cpu",
    *,
    root: str | Path | None = None,
    progress: bool = True,
) -> dict[Path, Path]:
    """Compute and cache the mask of every image not yet in the cache; return image path -> mask file.

    Keys are paths relative to ``root`` (default: the folder holding ``cache_dir``, e.g. a dataset root with
    the cache in ``<root>/masks``); the mask of ``<root>/a/b.jpg`` is ``<cache_dir>/a/b.png``. Images where
    the source finds no vehicle are recorded as null in ``masks.json`` (and left out of the result), so they
    are neither recomputed nor swapped. The index is saved every few seconds and on exit, so an interrupted
    run resumes where it stopped.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cache_dir = Path(cache_dir)
    root = default_root(cache_dir) if root is None else Path(root)
    index = load_mask_index(cache_dir, missing_ok=True)
    owners = {value: key for key, value in index.items() if value is not None}
    keyed: dict[str, Path] = {}
    todo: list[str] = []
    cache_abs = cache_dir.resolve()
    for p in image_paths:
        path = Path(p)
        key = mask_key(path, root)
        if key in keyed:
            continue
        if path.resolve().is_relative_to(cache_abs):
            raise ValueError(f"image {path} lies inside the mask cache {cache_dir}: choose another cache folder")
        keyed[key] = path
        target = mask_file(key)
        if owners.setdefault(target, key) != key:
            raise DatasetError(f"images {owners[target]} and {key} would share the mask file {target}: "
                               "rename one of them", path=root)
        cached = key in index and (index[key] is None or (cache_dir / index[key]).is_file())
        if not cached:
            todo.append(key)
    log.info("masks (%s) in %s: %d images, %d cached, %d to compute", source.name, cache_dir, len(keyed),
             len(keyed) - len(todo), len(todo))
    if todo:
        cache_dir.mkdir(parents=True, exist_ok=True)
        last_save = time.monotonic()
        found = 0
        try:
            with tqdm(total=len(todo), desc="masks", unit="img", disable=None if progress else True) as bar:
                for start in range(0, len(todo), batch_size):
                    keys = todo[start:start + batch_size]
                    masks = source.predict([keyed[k] for k in keys], keys, device)
                    if len(masks) != len(keys):
                        raise RuntimeError(f"mask source {source.name} returned {len(masks)} masks for {len(keys)}")
                    for key, mask in zip(keys, masks, strict=True):
                        if mask is None:
                            index[key] = None
                            continue
                        write_mask(cache_dir / mask_file(key), mask)
                        index[key] = mask_file(key)
                        found += 1
                    bar.update(len(keys))
                    if time.monotonic() - last_save > INDEX_SAVE_INTERVAL_S:
                        save_mask_index(cache_dir, index)
                        last_save = time.monotonic()
        finally:
            save_mask_index(cache_dir, index)
        log.info("masks: a vehicle in %d of %d new images; the others are recorded as having no mask",
                 found, len(todo))
    return {path: cache_dir / index[key] for key, path in keyed.items() if index.get(key) is not None}
