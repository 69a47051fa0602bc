"""Per-camera batch-norm statistics at test time (``TEST.CAMERA_NORM.BN``): each camera's images are embedded by the
model with its batch-norm layers' running statistics re-estimated on that camera's own test images.

Per-camera feature normalisation (vreid.retrieval.camera_norm) removes what a camera adds to the *final* features.
A colour cast or another angle changes the activations of every layer, and a network whose batch-norm statistics were
estimated on the training cameras normalises a new camera's activations with the wrong mean and variance from the
first layer on. Re-estimating them per camera (AdaBN, applied camera by camera as in camera-based batch normalisation)
puts each camera's activations back where the network's later layers expect them. The weights do not change; the
statistics of every batch-norm layer (the backbone's and the BNNeck's) are the mean and variance of its inputs over
the camera's images, and the model's own are restored afterwards.

Transductive, like the feature normalisation: it reads each camera's unlabelled test images together, so it belongs to
offline evaluation (``vreid test``, ``vreid extract`` of a dataset's splits, pipelines). A camera with fewer than
``TEST.CAMERA_NORM.MIN_IMAGES`` images is embedded with statistics of all the test images. It costs one more pass
over the test images (statistics, then features).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from vreid.data.images import ImageDataset, collate_images
from vreid.data.records import ImageRecord
from vreid.engine.runtime import OnnxModel
from vreid.errors import ConfigError
from vreid.features import FeatureSet

log = logging.getLogger(__name__)

POOLED = None  # the group of the cameras too small for statistics of their own (never a camera id)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def statistics_of(model: nn.Module, batches: Iterator[torch.Tensor], weight: float = 1.0) -> Iterator[None]:
    """Inside the context, every batch-norm layer of ``model`` holds the mean and the (unbiased) variance of its
    inputs over all images of ``batches`` (transformed images; sums accumulated in float64, so batches of any sizes
    weigh by their images and the spread between batches counts); the model's own statistics and every module's
    mode are restored on exit. During the pass each layer normalises with its batch's statistics, as in training.
    Batches of one image are skipped (a batch-norm layer in training mode cannot normalise one).

    ``weight`` < 1 mixes the images' statistics with the model's own: the mean and variance of the mixture that
    draws a fraction ``weight`` of its inputs from these images and the rest from the training distribution."""
    norms = batch_norms(model)
    if not norms:
        raise ConfigError("TEST.CAMERA_NORM.BN: the model has no batch-norm layers to re-estimate")
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    modes = [(m, m.training) for m in model.modules()]
    sums: dict[nn.Module, list] = {m: [0.0, 0.0, 0] for m in norms}  # sum, sum of squares (per channel), count

    def accumulate(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().double().transpose(0, 1).reshape(inputs[0].shape[1], -1)  # channels first
        acc = sums[module]
        acc[0], acc[1], acc[2] = acc[0] + x.sum(dim=1), acc[1] + (x * x).sum(dim=1), acc[2] + x.shape[1]

    hooks = [m.register_forward_pre_hook(accumulate) for m in norms]
    try:
        model.eval()
        for m in norms:
            m.train()
        with torch.no_grad():
            for images in batches:
                if len(images) > 1:
                    model(images)
        for h in hooks:
            h.remove()
        hooks = []
        for m in norms:
            total, squares, n = sums[m]
            if n < 2:
                raise ConfigError("TEST.CAMERA_NORM.BN: no batch of two or more images to estimate statistics from")
            mean = total / n
            var = (squares / n - mean * mean).clamp_min(0.0) * (n / (n - 1))  # unbiased, as batch norm keeps it
            if weight < 1.0:
                own_mean, own_var = (t.double() for t in saved[norms.index(m)][:2])
                var = weight * var + (1 - weight) * own_var + weight * (1 - weight) * (mean - own_mean) ** 2
                mean = weight * mean + (1 - weight) * own_mean
            m.running_mean.copy_(mean.to(m.running_mean.dtype))
            m.running_var.copy_(var.to(m.running_var.dtype))
            m.eval()
        yield
    finally:
        for h in hooks:
            h.remove()
        for m, (mean, var, count) in zip(norms, saved, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
        for module, training in modes:
            module.training = training


def _batches(records: Sequence[ImageRecord], transform, batch_size: int, device: torch.device,
             channels_last: bool, num_workers: int) -> Iterator[torch.Tensor]:
    """The test-transformed images of ``records``, batch by batch, on ``device`` (as extraction feeds the model);
    the caller runs the forward passes under the extraction's autocast."""
    per_image, per_batch = getattr(transform, "per_image", transform), getattr(transform, "per_batch", None)
    loader = torch.utils.data.DataLoader(ImageDataset(records, per_image), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=collate_images)
    for batch in loader:
        images = batch["image"].to(device)
        if per_batch is not None:
            images = per_batch(images)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        yield images


def camera_groups(cameras: Sequence[str], min_images: int) -> dict[str | None, list[int]]:
    """Camera -> indices of its images; cameras with fewer than ``min_images`` (or than 2) images are one group,
    :data:`POOLED`, whose statistics come from every image."""
    groups: dict[str | None, list[int]] = {}
    for i, camera in enumerate(cameras):
        groups.setdefault(str(camera), []).append(i)
    small = [c for c, idx in groups.items() if len(idx) < max(min_images, 2)]
    if small:
        groups[POOLED] = sorted(i for c in small for i in groups.pop(c))
        log.info("camera batch norm: %d camera(s) with fewer than %d images use statistics of all test images: %s",
                 len(small), min_images, ", ".join(small[:10]) + (" ..." if len(small) > 10 else ""))
    return groups


def embed_per_camera(embedder, splits: Mapping[str, Sequence[ImageRecord]], min_images: int,
                     weight: float = 1.0) -> dict[str, FeatureSet]:
    """FeatureSets of ``splits`` (e.g. query and gallery), each camera's images embedded with batch-norm statistics
    of that camera's images in all splits together; each split in the order of its records."""
    model, setup = embedder.setup.model, embedder.setup
    if isinstance(model, OnnxModel) or not isinstance(model, nn.Module):
        raise ConfigError("TEST.CAMERA_NORM.BN needs a PyTorch model (TEST.WEIGHT a .pth/.safetensors file), not an "
                          "ONNX Runtime session: give the .pth weights, or TEST.CAMERA_NORM.BN False")
    names = list(splits)
    every = [(name, j, r) for name in names for j, r in enumerate(splits[name])]
    groups = camera_groups([r.camera_id or "" for _, _, r in every], min_images)
    rows: dict[tuple[str, int], np.ndarray] = {}  # (split, row) -> feature
    amp = setup.options["amp_dtype"]
    for camera, idx in groups.items():
        estimate = [r for _, _, r in every] if camera == POOLED else [every[i][2] for i in idx]
        batches = _batches(estimate, embedder.transform, embedder.batch_size, setup.device,
                           setup.options["channels_last"], embedder.num_workers)
        autocast = torch.autocast(setup.device.type, dtype=amp, enabled=amp is not None)
        with autocast, statistics_of(model, batches, weight):  # estimated on entry, restored on exit
            feats = embedder.embed_records([every[i][2] for i in idx]).features
        for i, f in zip(idx, feats, strict=True):
            rows[every[i][:2]] = f
        log.info("camera batch norm: %s, %d images embedded", "small cameras together" if camera is POOLED
                 else f"camera {camera}", len(idx))
    out = {}
    for name in names:
        recs = splits[name]
        feats = np.stack([rows[name, j] for j in range(len(recs))]) if recs else np.zeros((0, 0), np.float32)
        out[name] = FeatureSet.from_records(feats.astype(np.float32), recs)
    return out
