"""ResNet-IBN-a and ResNeXt-IBN-a trunks (Pan et al., "Two at Once", ECCV 2018), as used by the AIC21 strong baseline.

Instance normalisation in the shallow stages removes appearance (colour, illumination, camera style) variation while
batch normalisation keeps content discrimination; that is why the vehicle ReID baselines use IBN-a trunks.

Checkpoint compatibility, confirmed against the official code (XingangPan/IBN-Net, ``ibnnet/resnet_ibn.py``,
``ibnnet/resnext_ibn.py``, ``ibnnet/modules.py`` of the v1.0 release, and the older ``models/imagenet/*_ibn_a.py`` that
produced the ``.pth.tar`` files):

- stem: ``conv1`` (7x7/2, 3->64, ``bias=False``), ``bn1`` (BatchNorm2d 64), ``relu``, 3x3/2 max-pool (called
  ``maxpool`` in ResNet-IBN and ``maxpool1`` in ResNeXt-IBN; it has no parameters, so it is ``maxpool`` here for both);
- stages ``layer1``..``layer4`` (``nn.Sequential`` of bottlenecks, planes 64/128/256/512, expansion 4, strides
  1/2/2/last_stride); bottleneck children ``conv1`` (1x1), ``bn1``, ``conv2`` (3x3, carries the stride; ``groups=32``
  for ResNeXt), ``bn2``, ``conv3`` (1x1), ``bn3``, ``relu``, ``downsample`` = ``Sequential(Conv2d 1x1 stride s,
  bias=False; BatchNorm2d)`` i.e. keys ``downsample.0.weight`` / ``downsample.1.*``; every conv has ``bias=False``;
- IBN-a: ``bn1`` of every bottleneck in layer1..layer3 is ``IBN`` with children ``IN`` (InstanceNorm2d(half,
  affine=True): keys ``bn1.IN.weight``/``bn1.IN.bias`` only, no running stats) and ``BN`` (BatchNorm2d(C - half)),
  half = int(C * 0.5), the first ``half`` channels go to ``IN``; layer4 (planes == 512) keeps a plain BatchNorm2d;
- ResNeXt bottleneck width D*C with D = floor(planes * baseWidth / 64), C = cardinality (32x4d: 128/256/512/1024);
- the classifier is ``fc`` (Linear 2048->1000); the backbone here has no ``fc`` and loads those checkpoints with
  ``strict`` matching once ``fc.*`` is dropped (see :mod:`vreid.models.backbones.weights`);
- random init: conv weight ~ N(0, sqrt(2 / (k*k*C_out))), IN/BN weight 1, bias 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["IBN", "IBNBottleneck", "ResNetIBN", "resnet50_ibn_a", "resnet101_ibn_a", "resnext101_ibn_a"]


class IBN(nn.Module):
    """Instance-Batch Normalisation: InstanceNorm on the first ``int(C*ratio)`` channels, BatchNorm on the rest.

    Attribute names ``IN``/``BN`` are those of the official checkpoints.
    """

    def __init__(self, planes: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.half = int(planes * ratio)
        if not 0 < self.half < planes:
            raise ValueError(f"IBN needs 0 < int(planes*ratio) < planes, got planes={planes}, ratio={ratio}")
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, rest = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat((self.IN(first.contiguous()), self.BN(rest.contiguous())), dim=1)


class IBNBottleneck(nn.Module):
    """ResNet (groups=1) / ResNeXt (groups=cardinality) bottleneck whose first norm is optionally IBN."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        width: int,
        stride: int = 1,
        groups: int = 1,
        ibn: bool = False,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False)
        self.bn1: nn.Module = IBN(width) if ibn else nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetIBN(nn.Module):
    """Stem + layer1..layer4 of a ResNet/ResNeXt-IBN-a, returning the last feature map (no pooling, no fc).

    ``last_stride`` is layer4's first-block stride: 1 keeps a 16x16-downsampled map (the ReID "last stride" trick,
    more spatial detail for the same weights), 2 is the ImageNet layout.
    """

    stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        last_stride: int = 1,
        cardinality: int = 1,
        base_width: int = 64,
        ibn_stages: tuple[bool, bool, bool, bool] = (True, True, True, False),
    ) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        self.cardinality = cardinality
        self.base_width = base_width
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1, ibn_stages[0])
        self.layer2 = self._make_layer(128, layers[1], 2, ibn_stages[1])
        self.layer3 = self._make_layer(256, layers[2], 2, ibn_stages[2])
        self.layer4 = self._make_layer(512, layers[3], last_stride, ibn_stages[3])
        self.out_channels: int = 512 * IBNBottleneck.expansion
        self.last_stride = last_stride
        self._init_weights()

    def _width(self, planes: int) -> int:
        if self.cardinality == 1:
            return planes * self.base_width // 64
        return math.floor(planes * self.base_width / 64) * self.cardinality

    def _make_layer(self, planes: int, blocks: int, stride: int, ibn: bool) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * IBNBottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * IBNBottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * IBNBottleneck.expansion),
            )
        width = self._width(planes)
        modules = [IBNBottleneck(self.inplanes, planes, width, stride, self.cardinality, ibn, downsample)]
        self.inplanes = planes * IBNBottleneck.expansion
        modules += [IBNBottleneck(self.inplanes, planes, width, 1, self.cardinality, ibn) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def _init_weights(self) -> None:
        """The official IBN-Net init (He et al. normal with fan-out, norms to identity)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def resnet50_ibn_a(last_stride: int = 1) -> ResNetIBN:
    """ResNet-50-IBN-a trunk ([3, 4, 6, 3]); official checkpoint ``resnet50_ibn_a-d9d0bb7b.pth``."""
    return ResNetIBN((3, 4, 6, 3), last_stride=last_stride)


def resnet101_ibn_a(last_stride: int = 1) -> ResNetIBN:
    """ResNet-101-IBN-a trunk ([3, 4, 23, 3]); official checkpoint ``resnet101_ibn_a-59ea0ac6.pth``."""
    return ResNetIBN((3, 4, 23, 3), last_stride=last_stride)


def resnext101_ibn_a(last_stride: int = 1) -> ResNetIBN:
    """ResNeXt-101-32x4d-IBN-a trunk, the paper's main model; official checkpoint ``resnext101_ibn_a-6ace051d.pth``."""
    return ResNetIBN((3, 4, 23, 3), last_stride=last_stride, cardinality=32, base_width=4)
