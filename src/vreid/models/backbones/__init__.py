"""Backbone factory: image batch (N, 3, H, W) -> feature map (N, C, h, w).

Every backbone exposes ``out_channels`` (C) and ``stage_names``, the ``named_modules()`` names of its successive
stages, so that callers can attach per-stage hooks (e.g. MixStyle after stage k) without knowing the architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from vreid.models.backbones.efficientnet_lite import LITE_VARIANTS, EfficientNetLite, efficientnet_lite
from vreid.models.backbones.resnet_ibn import ResNetIBN, resnet50_ibn_a, resnet101_ibn_a, resnext101_ibn_a
from vreid.models.backbones.torchvision import (
    TimmBackbone,
    TorchvisionBackbone,
    create_timm_backbone,
    create_torchvision_backbone,
    torchvision_model_names,
)
from vreid.models.backbones.weights import LoadReport, load_pretrained

__all__ = [
    "IBN_BACKBONES",
    "LITE_VARIANTS",
    "EfficientNetLite",
    "LoadReport",
    "ResNetIBN",
    "TimmBackbone",
    "TorchvisionBackbone",
    "create_backbone",
    "expected_weights_file",
    "load_pretrained",
]

# name -> constructor(last_stride). Plain dict: the names the paper's code uses for its IBN-a trunks.
IBN_BACKBONES: dict[str, Callable[[int], nn.Module]] = {
    "resnet50_ibn_a": resnet50_ibn_a,
    "resnet101_ibn_a": resnet101_ibn_a,
    "resnext101_ibn_a": resnext101_ibn_a,
}

TIMM_PREFIX = "timm:"

# The ImageNet release each IBN-a trunk is meant to start from (IBN-Net v1.0 files, plain state_dicts).
IBN_WEIGHT_FILES: dict[str, str] = {
    "resnet50_ibn_a": "resnet50_ibn_a-d9d0bb7b.pth",
    "resnet101_ibn_a": "resnet101_ibn_a-59ea0ac6.pth",
    "resnext101_ibn_a": "resnext101_ibn_a-6ace051d.pth",
}


def expected_weights_file(name: str) -> str:
    """The usual file name of backbone ``name``'s ImageNet weights, for error messages (nothing is downloaded).

    IBN-a trunks: the IBN-Net release; torchvision models: the file of their first ImageNet weights (the
    ``IMAGENET1K_V1`` entry, which the ReID literature uses), read from torchvision's weight tables offline.
    """
    if name in IBN_WEIGHT_FILES:
        return IBN_WEIGHT_FILES[name]
    if name.startswith(TIMM_PREFIX):
        return f"the ImageNet weights of timm model {name[len(TIMM_PREFIX):]!r}"
    try:
        from torchvision.models import get_model_weights

        weights = get_model_weights(name)
        entry = weights.__members__.get("IMAGENET1K_V1") or weights.DEFAULT
        return entry.url.rsplit("/", 1)[-1]
    except (ValueError, KeyError, AttributeError):
        return f"the ImageNet weights of {name!r}"


def create_backbone(name: str, last_stride: int = 1, pretrained_path: str | Path | None = None) -> nn.Module:
    """Build backbone ``name`` with random init, then load ``pretrained_path`` (a local file) if given.

    ``name`` is one of :data:`IBN_BACKBONES`, an EfficientNet-Lite size (:data:`LITE_VARIANTS`), any torchvision
    classification model name with a convolutional trunk (``resnet152``, ``mobilenet_v2``, ``efficientnet_b0``...),
    or ``timm:<name>`` when timm is installed.
    ``last_stride=1`` (the ReID default) keeps layer4 at output stride 16; families whose last downsampling cannot
    be removed that way raise ``ValueError`` asking for ``last_stride=2``.
    """
    if name in IBN_BACKBONES:
        backbone = IBN_BACKBONES[name](last_stride)
    elif name in LITE_VARIANTS:
        backbone = efficientnet_lite(name, last_stride)
    elif name.startswith(TIMM_PREFIX):
        backbone = create_timm_backbone(name[len(TIMM_PREFIX):], last_stride)
    elif name in torchvision_model_names():
        backbone = create_torchvision_backbone(name, last_stride)
    else:
        raise ValueError(
            f"unknown backbone {name!r}: use one of {sorted(IBN_BACKBONES) + sorted(LITE_VARIANTS)}, "
            "any torchvision classification model "
            "name (torchvision.models.list_models(module=torchvision.models), e.g. 'resnet152', 'mobilenet_v2'), "
            "or 'timm:<name>' when timm is installed"
        )
    if pretrained_path is not None:
        load_pretrained(backbone, pretrained_path)
    return backbone
