"""Trained weights -> a model ready to embed images, with the PyTorch or the ONNX Runtime backend.

The one place that decides how query and gallery images are embedded (`vreid test`, `vreid extract`,
`vreid search`, `vreid serve`): same model, same transform, same flip averaging and normalisation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from vreid.data.records import ImageRecord
from vreid.data.transforms import build_test_transform
from vreid.engine.checkpoint import model_weights
from vreid.engine.checks import check_inference_config
from vreid.engine.distributed import default_device
from vreid.engine.extract import embed_batch, extract_features
from vreid.engine.precision import amp_dtype
from vreid.errors import ConfigError, VreidError
from vreid.features import FeatureSet
from vreid.models import build_model

log = logging.getLogger(__name__)

CLASSIFIER_PREFIX = "classifier."


def resolve_backend(cfg) -> str:
    """``TEST.BACKEND`` with ``auto`` resolved: an ``.onnx`` ``TEST.WEIGHT`` runs on ONNX Runtime."""
    backend, weight = cfg.TEST.BACKEND, str(cfg.TEST.WEIGHT)
    is_onnx = weight.lower().endswith(".onnx")
    if backend == "auto":
        return "onnxruntime" if is_onnx else "torch"
    if backend == "torch" and is_onnx:
        raise ConfigError(f"TEST.WEIGHT {weight} is an ONNX file: use TEST.BACKEND onnxruntime (--backend onnxruntime)")
    if backend == "onnxruntime" and not is_onnx:
        raise ConfigError(f"TEST.BACKEND onnxruntime needs TEST.WEIGHT to be an exported .onnx file (`vreid export`), "
                          f"got {weight or 'nothing'!r}")
    return backend


def load_inference_model(cfg, device: torch.device) -> torch.nn.Module:
    """The network of ``cfg`` without its classifier, with the weights of ``TEST.WEIGHT`` (eval mode)."""
    if resolve_backend(cfg) == "onnxruntime":
        from vreid.engine.runtime import OnnxModel

        model = OnnxModel(cfg.TEST.WEIGHT, threads=cfg.TEST.THREADS)
        model.check_input_size(tuple(cfg.INPUT.SIZE_TEST))
        return model.eval()
    model = build_model(cfg, 0, pretrained=not cfg.TEST.WEIGHT)
    if not cfg.TEST.WEIGHT:
        if not cfg.MODEL.PRETRAIN_PATH:
            raise VreidError("TEST.WEIGHT is empty: give the trained weights, e.g. TEST.WEIGHT out/model_final.pth")
        log.warning("no TEST.WEIGHT: evaluating the pretrained backbone %s as it is (an untrained baseline)",
                    cfg.MODEL.PRETRAIN_PATH)
        return model.to(device).eval()
    state = {k: v for k, v in model_weights(cfg.TEST.WEIGHT).items() if not k.startswith(CLASSIFIER_PREFIX)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise VreidError(f"{cfg.TEST.WEIGHT}: weights do not fit the configured model (MODEL.* must match the "
                         f"training config): missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval()


@dataclass
class InferenceSetup:
    """A loaded model and the keyword arguments of :func:`vreid.engine.extract.extract_features` for it."""

    model: torch.nn.Module
    device: torch.device
    options: dict[str, Any]  # flip, amp_dtype, channels_last


def inference_setup(cfg) -> InferenceSetup:
    backend = resolve_backend(cfg)
    if backend == "onnxruntime":  # ORT picks its own device; tensors go in and out on the CPU
        device, amp, channels_last = torch.device("cpu"), None, False
    else:
        device = default_device()
        amp = amp_dtype(cfg.SOLVER.AMP, device)
        channels_last = cfg.SOLVER.CHANNELS_LAST
        if cfg.TEST.THREADS:
            torch.set_num_threads(cfg.TEST.THREADS)
    model = load_inference_model(cfg, device)
    log.info("inference backend %s on %s", backend, device)
    return InferenceSetup(model, device, {"flip": cfg.TEST.FLIP, "amp_dtype": amp, "channels_last": channels_last})


class Embedder:
    """In-memory images -> L2-normalised features, exactly as `vreid extract` embeds files."""

    def __init__(self, cfg):
        check_inference_config(cfg)
        self.cfg = cfg
        self.setup = inference_setup(cfg)
        self.transform = build_test_transform(cfg)
        self.batch_size = cfg.TEST.IMS_PER_BATCH
        self.num_workers = cfg.DATALOADER.NUM_WORKERS

    def embed_records(self, records: Sequence[ImageRecord]) -> FeatureSet:
        """Image files -> FeatureSet, decoded by a DataLoader batch by batch (memory stays bounded)."""
        return extract_features(self.setup.model, records, self.transform, batch_size=self.batch_size,
                                device=self.setup.device, num_workers=self.num_workers, **self.setup.options)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            # no needless copy of an image that is already RGB
            batch = torch.stack([self.transform.per_image(im if im.mode == "RGB" else im.convert("RGB"))
                                 for im in images[start:start + self.batch_size]])
            batch = self.transform.per_batch(batch.to(self.setup.device))
            feats = embed_batch(self.setup.model, batch, **self.setup.options)
            chunks.append(feats.cpu().numpy())
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, 0), np.float32)
