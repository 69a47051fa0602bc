"""Feature extraction: records -> a FeatureSet that can be saved and used without the model.

Everything after extraction (distances, re-ranking, metrics, submissions) works on FeatureSets, so
post-processing never needs the model or a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vreid.data.images import ImageDataset, collate_images
from vreid.data.records import ImageRecord
from vreid.features import FeatureSet

log = logging.getLogger(__name__)


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
