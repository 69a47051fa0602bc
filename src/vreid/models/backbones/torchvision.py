"""Feature-map backbones cut out of classification model zoos: torchvision (always) and timm (when installed).

The wrappers keep the zoo's own module names for the parts they keep (``conv1``, ``layer1``.., ``features``,
``stem``/``trunk_output``...), so the zoo's ImageNet weight files load into them by name once the classifier keys are
dropped (see :mod:`vreid.models.backbones.weights`). Models are always built with ``weights=None``: nothing downloads.

Stage boundaries are not hard-coded per model: a dummy forward at 64x64 records the resolution after each unit, and a
stage ends where the next unit halves the resolution (the last unit of the network ends the last stage). Stages at
output stride 2 (the stem) and stages without parameters (a lone max-pool) are left out of ``stage_names``.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import nn
from torchvision import models as tvm

from vreid.models.backbones.resnet_ibn import IBN

__all__ = ["TimmBackbone", "TorchvisionBackbone", "create_timm_backbone", "create_torchvision_backbone",
           "torchvision_model_names"]

logger = logging.getLogger(__name__)

_PROBE_SIZE = 64

# Models listed by torchvision that have no usable NCHW feature map trunk.
_UNSUPPORTED: dict[str, str] = {
    "vit_": "vision transformers produce a token sequence, not a feature map",
    "swin_": "Swin transformers produce channels-last token grids, not NCHW feature maps",
    "maxvit_": "MaxViT is built for a fixed input size",
    "googlenet": "GoogLeNet needs its auxiliary heads and TF-style input transform handled",
    "inception_v3": "Inception-v3 needs its auxiliary head, TF-style input transform and >= 75 px inputs handled",
}


@dataclass(frozen=True)
class _Layout:
    """Which children of a torchvision model make the trunk, and how to walk and modify them."""

    keep: tuple[str, ...]  # top-level children kept, in forward order (torchvision's names, so weights line up)
    expand: tuple[str, ...] = ()  # kept children whose own children are the units walked for stage detection
    last_stride_one: bool = False  # the last downsampling is done by stride-2 convs that can be set to stride 1
    final_relu: bool = False  # torchvision applies a ReLU after ``features`` (DenseNet)


_RESNET_STEM = ("conv1", "bn1", "relu", "maxpool")
_FEATURES = _Layout(keep=("features",), expand=("features",))
_FEATURES_LAST_STRIDE = _Layout(keep=("features",), expand=("features",), last_stride_one=True)

# torchvision model class -> trunk layout. Plain dict on purpose: adding a family is one line.
_LAYOUTS: dict[type[nn.Module], _Layout] = {
    tvm.ResNet: _Layout(keep=(*_RESNET_STEM, "layer1", "layer2", "layer3", "layer4"), last_stride_one=True),
    tvm.RegNet: _Layout(keep=("stem", "trunk_output"), expand=("trunk_output",), last_stride_one=True),
    tvm.MobileNetV2: _FEATURES_LAST_STRIDE,
    tvm.MobileNetV3: _FEATURES_LAST_STRIDE,
    tvm.EfficientNet: _FEATURES_LAST_STRIDE,
    tvm.MNASNet: _Layout(keep=("layers",), expand=("layers",), last_stride_one=True),
    tvm.DenseNet: _Layout(keep=("features",), expand=("features",), final_relu=True),
    tvm.ConvNeXt: _FEATURES,
    tvm.VGG: _FEATURES,
    tvm.AlexNet: _FEATURES,
    tvm.SqueezeNet: _FEATURES,
    tvm.ShuffleNetV2: _Layout(keep=("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5")),
}

# Old torchvision DenseNet files name the layers of a dense layer "norm.1", "conv.2"... instead of "norm1", "conv2".
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def torchvision_model_names() -> list[str]:
    """torchvision's classification model names (what ``get_model`` accepts for this module)."""
    return list(tvm.list_models(module=tvm))


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _probe(model: nn.Module, units: list[tuple[str, nn.Module]]) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """One no-grad eval forward at 64x64 recording each unit's output shape (running stats are left untouched)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            shapes[name] = tuple(output.shape)

        return hook

    handles = [module.register_forward_hook(recorder(name)) for name, module in units]
    reference = next(model.parameters(), None)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            dummy = torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE,
                                device=None if reference is None else reference.device,
                                dtype=torch.float32 if reference is None else reference.dtype)
            output = model(dummy)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [shapes[name] for name, _ in units], output


def _stages(units: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]]) -> list[list[int]]:
    """Group unit indices into stages: a new stage starts at each unit that reduces the spatial resolution."""
    groups: list[list[int]] = []
    previous = _PROBE_SIZE
    for index, shape in enumerate(shapes):
        height = shape[-2]
        if not groups or height < previous:
            groups.append([])
        groups[-1].append(index)
        previous = height
    return groups


def _stage_names(units: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]]) -> tuple[str, ...]:
    names = []
    for group in _stages(units, shapes):
        stride = _PROBE_SIZE // shapes[group[-1]][-2]
        if stride >= 4 and any(_has_parameters(units[i][1]) for i in group):
            names.append(units[group[-1]][0])
    return tuple(names)


def _set_last_stride_one(model_name: str, last_stage: list[nn.Module]) -> None:
    """Set the stride-2 convolutions of the last stage to stride 1 (the ReID "last stride" trick)."""
    convs = [m for unit in last_stage for m in unit.modules() if isinstance(m, nn.Conv2d) and tuple(m.stride) == (2, 2)]
    if not convs:
        raise ValueError(f"{model_name}: found no stride-2 convolution in the last stage; use last_stride=2")
    for conv in convs:
        kernel, padding, dilation = conv.kernel_size[0], conv.padding, conv.dilation[0]
        if not isinstance(padding, tuple) or 2 * padding[0] != dilation * (kernel - 1):
            raise ValueError(f"{model_name}: its last downsampling conv cannot run at stride 1; use last_stride=2")
        conv.stride = (1, 1)


class TorchvisionBackbone(nn.Module):
    """The trunk of a torchvision classifier, up to its last feature map, under torchvision's own module names."""

    def __init__(self, model_name: str, model: nn.Module, layout: _Layout, last_stride: int = 1) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        if last_stride == 1 and not layout.last_stride_one:
            raise ValueError(f"{model_name}: last_stride=1 is not supported for this model family; "
                             "last_stride=2 is required")
        self.model_name = model_name
        self.last_stride = last_stride
        self.final_relu = layout.final_relu
        for child in layout.keep:
            self.add_module(child, getattr(model, child))
        units: list[tuple[str, nn.Module]] = []
        for child in layout.keep:
            module = getattr(self, child)
            if child in layout.expand:
                units += [(f"{child}.{name}", sub) for name, sub in module.named_children()]
            else:
                units.append((child, module))
        shapes, output = _probe(self, units)
        if output.dim() != 4:
            raise ValueError(f"{model_name}: trunk output has shape {tuple(output.shape)}, not a feature map")
        self.out_channels: int = int(output.shape[1])
        self.stage_names: tuple[str, ...] = _stage_names(units, shapes)
        # per named stage, its blocks (units walked inside an expanded child): where IBN-style norms can go
        blocks = {name for child in layout.expand for name, _ in units if name.startswith(f"{child}.")}
        named = [g for g in _stages(units, shapes) if units[g[-1]][0] in self.stage_names]
        self.stage_blocks: tuple[tuple[str, ...], ...] = tuple(
            tuple(units[i][0] for i in group if units[i][0] in blocks) for group in named)
        if last_stride == 1:
            last = _stages(units, shapes)[-1]
            _set_last_stride_one(model_name, [units[i][1] for i in last])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return torch.relu(x) if self.final_relu else x

    def use_instance_norm(self, stages: int, ratio: float = 0.5) -> list[str]:
        """IBN-a on a trunk made of blocks: the first BatchNorm of every block of the first ``stages`` stages
        normalises its first ``int(C*ratio)`` channels per image (InstanceNorm) and the rest per batch.

        IBN-Net's rule: instance statistics in the shallow layers remove per-image style (contrast, colour
        cast, sharpness) that differs between cameras; the last stage stays BatchNorm to keep what tells
        identities apart. Each replaced norm starts from the trained one (affine parameters split, running
        statistics of the BatchNorm half kept), so ImageNet weights stay usable. Returns the replaced modules.
        """
        if not 1 <= stages < len(self.stage_names):
            raise ValueError(f"{self.model_name}: instance norm stages must be in 1..{len(self.stage_names) - 1} "
                             f"(the last stage keeps BatchNorm), got {stages}")
        replaced = []
        for block in (name for group in self.stage_blocks[:stages] for name in group):
            name, norm = next(((n, m) for n, m in self.get_submodule(block).named_modules()
                               if isinstance(m, nn.BatchNorm2d)), ("", None))
            if norm is None:
                continue
            parent_name, _, attr = f"{block}.{name}".rpartition(".")
            setattr(self.get_submodule(parent_name), attr, _ibn_from(norm, ratio))
            replaced.append(f"{block}.{name}")
        if not replaced:
            raise ValueError(f"{self.model_name}: its first {stages} stage(s) have no blocks with a BatchNorm "
                             "to turn into instance norm (supported: trunks made of blocks, e.g. MobileNet, "
                             "EfficientNet; for ResNets use the resnet50_ibn_a family)")
        return replaced

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename legacy DenseNet keys (``norm.1`` -> ``norm1``) as torchvision's own loader does."""
        return {_OLD_DENSENET_KEY.sub(r"\1\2", name): tensor for name, tensor in state.items()}


def _ibn_from(norm: nn.BatchNorm2d, ratio: float) -> IBN:
    """An :class:`IBN` that starts as ``norm``: its affine parameters split between the two halves."""
    ibn = IBN(norm.num_features, ratio)
    half = ibn.half
    ibn.IN.eps = ibn.BN.eps = norm.eps
    ibn.BN.momentum = norm.momentum
    with torch.no_grad():
        ibn.IN.weight.copy_(norm.weight[:half])
        ibn.IN.bias.copy_(norm.bias[:half])
        ibn.BN.weight.copy_(norm.weight[half:])
        ibn.BN.bias.copy_(norm.bias[half:])
        ibn.BN.running_mean.copy_(norm.running_mean[half:])
        ibn.BN.running_var.copy_(norm.running_var[half:])
        ibn.BN.num_batches_tracked.copy_(norm.num_batches_tracked)
    return ibn.to(norm.weight.device, norm.weight.dtype)


def create_torchvision_backbone(name: str, last_stride: int = 1) -> TorchvisionBackbone:
    """Build torchvision model ``name`` with random weights and cut its trunk out."""
    for prefix, reason in _UNSUPPORTED.items():
        if name.startswith(prefix):
            raise ValueError(f"torchvision model {name!r} is not supported as a backbone: {reason}")
    if name not in torchvision_model_names():
        raise ValueError(f"{name!r} is not a torchvision {torchvision.__version__} classification model")
    model = tvm.get_model(name, weights=None)
    layout = _LAYOUTS.get(type(model))
    if layout is None:
        layout = next((lay for cls, lay in _LAYOUTS.items() if isinstance(model, cls)), None)
    if layout is None and isinstance(getattr(model, "features", None), nn.Module):
        layout = _FEATURES
    if layout is None:
        raise ValueError(f"torchvision model {name!r} ({type(model).__name__}) has no known feature-map trunk")
    return TorchvisionBackbone(name, model, layout, last_stride)


class TimmBackbone(nn.Module):
    """A timm model's ``forward_features`` trunk; keys carry a ``body.`` prefix, added to timm checkpoints on load."""

    def __init__(self, model_name: str, body: nn.Module, last_stride: int = 2) -> None:
        super().__init__()
        if last_stride != 2:
            raise ValueError(f"timm:{model_name}: last_stride=1 is not supported for timm models; "
                             "last_stride=2 is required")
        self.model_name = model_name
        self.body = body
        _, output = _probe(self, [])
        channels = getattr(body, "num_features", None)
        if output.dim() != 4 or (channels is not None and output.shape[1] != channels):
            raise ValueError(f"timm:{model_name}: forward_features gives shape {tuple(output.shape)}, "
                             "not an NCHW feature map")
        self.out_channels: int = int(output.shape[1])
        info = getattr(body, "feature_info", None)
        modules = [entry.get("module") for entry in info] if isinstance(info, list) else []
        if modules and all(isinstance(m, str) and m for m in modules):
            self.stage_names: tuple[str, ...] = tuple(f"body.{m}" for m in modules)
        else:
            logger.warning("timm:%s: no feature_info; stage_names is empty", model_name)
            self.stage_names = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_features(x)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoints from timm have no ``body.`` prefix; ours do."""
        return {name if name.startswith("body.") else f"body.{name}": tensor for name, tensor in state.items()}


def create_timm_backbone(name: str, last_stride: int = 1) -> TimmBackbone:
    """Build ``timm.create_model(name)`` with random weights, classifier and pooling removed."""
    try:
        timm = importlib.import_module("timm")
    except ImportError as exc:
        message = f"timm:{name}: timm is not installed (pip install timm), so 'timm:' names are unavailable"
        raise ValueError(message) from exc
    body = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    return TimmBackbone(name, body, last_stride)
