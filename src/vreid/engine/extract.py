"""Feature extraction: records -> a FeatureSet that can be saved and used without the model.

Everything after extraction (distances, re-ranking, metrics, submissions) works on FeatureSets, so
post-processing never needs the model or a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vreid.data.images import ImageDataset, collate_images
from vreid.data.records import ImageRecord
from vreid.errors import VreidError
from vreid.fileio import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass
class FeatureSet:
    """Embeddings of a list of images with what is known about each image.

    Ids, cameras and tracks are strings ("" where unknown), paths as strings.
    """

    features: np.ndarray
    vehicle_ids: np.ndarray
    camera_ids: np.ndarray
    track_ids: np.ndarray
    paths: np.ndarray

    def __len__(self) -> int:
        return len(self.features)

    @classmethod
    def from_records(cls, features: np.ndarray, records: Sequence[ImageRecord]) -> FeatureSet:
        def col(values):
            return np.array(["" if v is None else str(v) for v in values], dtype=str)

        return cls(features.astype(np.float32), col(r.vehicle_id for r in records),
                   col(r.camera_id for r in records), col(r.track_id for r in records), col(r.path for r in records))

    def save(self, path: str | Path) -> Path:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, features=self.features, vehicle_ids=self.vehicle_ids, camera_ids=self.camera_ids,
                 track_ids=self.track_ids, paths=self.paths)
        return atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        path = Path(path)
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise VreidError(f"{path}: not a vreid feature file ({type(exc).__name__}: {exc})") from None
        if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array: no paths or ids to go with it
            raise VreidError(f"{path}: not a vreid feature file (a single array; `vreid extract` writes .npz "
                             "files with features, paths and ids)")
        try:
            with data:
                return cls(*(data[k] for k in ("features", "vehicle_ids", "camera_ids", "track_ids", "paths")))
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise VreidError(f"{path}: not a vreid feature file ({exc})") from None


@torch.no_grad()
def embed_batch(
    model: nn.Module,
    images: torch.Tensor,
    flip: bool = False,
    normalize: bool = True,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Features of one batch of transformed images (on the model's device): the one place that defines them.

    ``flip`` averages with the mirror image, ``normalize`` L2-normalises; used by extraction, search and the
    HTTP service alike so that a gallery and a query are always embedded the same way.
    """
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    device_type = images.device.type
    with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        feats = model(images).float()
        if flip:
            feats = (feats + model(torch.flip(images, dims=[3])).float()) / 2
    return F.normalize(feats, dim=1) if normalize else feats


@torch.no_grad()
def extract_features(
    model: nn.Module,
    records: Sequence[ImageRecord],
    transform,
    batch_size: int = 64,
    flip: bool = False,
    normalize: bool = True,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    channels_last: bool = False,
    progress: bool = True,
) -> FeatureSet:
    """Embed ``records`` with ``model`` in eval mode (see :func:`embed_batch`).

    A ``transform`` with ``per_image`` and ``per_batch`` halves (:class:`vreid.data.transforms.TestTransform`)
    runs its first half in the loader and its second once per batch on ``device``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    per_image, per_batch = getattr(transform, "per_image", transform), getattr(transform, "per_batch", None)
    loader = torch.utils.data.DataLoader(ImageDataset(records, per_image), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=collate_images,
                                         persistent_workers=False, pin_memory=device.type == "cuda")
    chunks = []
    try:
        for batch in tqdm(loader, desc="extract", disable=None if progress else True, leave=False):
            images = batch["image"].to(device, non_blocking=True)
            if per_batch is not None:
                images = per_batch(images)
            feats = embed_batch(model, images, flip, normalize, amp_dtype, channels_last)
            chunks.append(feats.cpu())
    finally:
        model.train(was_training)
    features = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)
    return FeatureSet.from_records(features, records)
