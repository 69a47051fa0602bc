"""EfficientNet-Lite trunks (Tan and Le, 2019; the "Lite" variants for mobile CPUs), loadable from ImageNet files.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 instead of swish, and with the stem (32
channels) and head (1280 channels) kept fixed for every size; the first and last stages are not repeated more at
larger sizes. Those choices make it quantisation- and CPU-friendly, which is why it is offered here beside MobileNetV2.

Checkpoint compatibility: module names are those of the ``efficientnet_pytorch`` layout that the public ports of the
Lite weights use: ``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` / ``_bn0`` / ``_depthwise_conv`` / ``_bn1`` /
``_project_conv`` / ``_bn2`` (block 0, with expansion 1, has no ``_expand_conv`` / block ``_bn0``), ``_conv_head``,
``_bn1``; the classifier ``_fc`` is dropped on load. Every conv has ``bias=False``; BatchNorm eps 1e-3, momentum 0.01
(TensorFlow's 0.99 decay). Convolutions pad like TensorFlow's ``SAME`` (asymmetric at stride 2: the extra pixel goes
right and bottom), computed from the actual input size so any input size gives the original network's alignment.

Which input normalisation the weight files expect is written nowhere; docs/models.md records how it was settled
(the statistics the stem's BatchNorm saw in training, matched against real images under each candidate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LITE_VARIANTS", "EfficientNetLite", "efficientnet_lite"]

BN_EPS, BN_MOMENTUM = 1e-3, 0.01
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280


@dataclass(frozen=True)
class _Stage:
    """One row of EfficientNet-B0's block table (before width and depth scaling)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    out_channels: int


# EfficientNet-B0's seven stages, shared by every Lite size.
_B0_STAGES = (
    _Stage(1, 3, 1, 1, 16),
    _Stage(2, 3, 2, 6, 24),
    _Stage(2, 5, 2, 6, 40),
    _Stage(3, 3, 2, 6, 80),
    _Stage(3, 5, 1, 6, 112),
    _Stage(4, 5, 2, 6, 192),
    _Stage(1, 3, 1, 6, 320),
)

# name -> (width multiplier, depth multiplier, native input size), the published Lite0..Lite4 coefficients.
LITE_VARIANTS: dict[str, tuple[float, float, int]] = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
    "efficientnet_lite3": (1.2, 1.4, 280),
    "efficientnet_lite4": (1.4, 1.8, 300),
}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: scale, round to a multiple of ``divisor``, never drop more than 10 %."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``SAME`` padding computed from the input size (asymmetric when odd)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvLite(nn.Module):
    """Inverted residual block without squeeze-and-excitation: expand 1x1, depthwise kxk, project 1x1 (linear)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_channels * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_channels, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """Feature-map trunk: stem -> 7 stages of MBConv blocks -> 1x1 head conv to 1280 channels (output stride 32)."""

    def __init__(self, width: float = 1.0, depth: float = 1.0, last_stride: int = 2, name: str = "efficientnet_lite0"
                 ) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        self.model_name = name
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        stage_ends: list[int] = []
        in_channels = STEM_CHANNELS
        last_downsampling = max(i for i, s in enumerate(_B0_STAGES) if s.stride == 2)
        for index, stage in enumerate(_B0_STAGES):
            fixed = index in (0, len(_B0_STAGES) - 1)  # Lite keeps the first and last stage at one block
            repeats = stage.repeats if fixed else int(math.ceil(stage.repeats * depth))
            out_channels = round_channels(stage.out_channels, width)
            for r in range(repeats):
                stride = stage.stride if r == 0 else 1
                if index == last_downsampling and r == 0 and last_stride == 1:
                    stride = 1
                blocks.append(MBConvLite(in_channels, out_channels, stage.kernel, stride, stage.expand))
                in_channels = out_channels
            stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(in_channels, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self.out_channels = HEAD_CHANNELS
        self.last_stride = last_stride
        # ends of the stages at output stride 4, 8, 16 and 32 (stage 0 ends at stride 2, stages 3/5 share a stride)
        strides_end = [i for i, s in enumerate(_B0_STAGES) if i + 1 == len(_B0_STAGES) or _B0_STAGES[i + 1].stride == 2]
        self.stage_names = tuple(f"_blocks.{stage_ends[i]}" for i in strides_end if i > 0)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop the ImageNet classifier (``_fc.*``), which the generic loader's ``fc.`` rule does not match."""
        return {name: tensor for name, tensor in state.items() if not name.startswith("_fc.")}


def efficientnet_lite(name: str, last_stride: int = 2) -> EfficientNetLite:
    """Build one of :data:`LITE_VARIANTS` with random weights."""
    if name not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}: use one of {sorted(LITE_VARIANTS)}")
    width, depth, _ = LITE_VARIANTS[name]
    return EfficientNetLite(width, depth, last_stride, name)
