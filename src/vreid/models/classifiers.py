"""Identity classifiers on the BNNeck feature: linear, ArcFace, CosFace, circle-softmax (docs/method.md, Classifiers).

The margin-based ones need the labels in training; without labels (evaluation) they return the
scaled cosine logits. One-hot targets are built on the logits' device: nothing hard-codes CUDA,
unlike the official code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LinearClassifier(nn.Module):
    """Plain FC without bias, weights N(0, 0.001) as in BoT: the paper's "FC layers -> Smooth CE"."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim).normal_(0.0, 0.001))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, self.weight)


class _CosineClassifier(nn.Module):
    """Shared part: cos(theta) between L2-normalised features and class weights."""

    def __init__(self, in_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.35):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"classifier scale must be > 0, got {scale}")
        self.scale, self.margin = scale, margin
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosine(x)
        if labels is None:
            return self.scale * cos
        onehot = F.one_hot(labels, cos.shape[1]).to(dtype=torch.bool)
        return self.margin_logits(cos, onehot)

    def margin_logits(self, cos: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # each subclass states its formula

    def extra_repr(self) -> str:
        return f"classes={self.weight.shape[0]}, scale={self.scale}, margin={self.margin}"


class CosFace(_CosineClassifier):
    """s*(cos - m) for the target class, s*cos elsewhere (Wang et al., CVPR 2018)."""

    def margin_logits(self, cos: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.where(onehot, cos - self.margin, cos)


class ArcFace(_CosineClassifier):
    """s*cos(theta + m) for the target class (Deng et al., CVPR 2019).

    Where theta + m would exceed pi the target logit falls back to cos - m*sin(m), keeping it
    monotonic in theta (the standard ``th``/``mm`` rule).
    """

    def margin_logits(self, cos: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        m = self.margin
        sin = (1.0 - cos.pow(2)).clamp(min=0.0).sqrt()
        target = cos * math.cos(m) - sin * math.sin(m)
        target = torch.where(cos > math.cos(math.pi - m), target, cos - math.sin(math.pi - m) * m)
        return self.scale * torch.where(onehot, target, cos)


class CircleSoftmax(_CosineClassifier):
    """Circle loss in softmax form (Sun et al., CVPR 2020; the shipped config's classifier).

    alpha_p = relu(1 + m - cos), alpha_n = relu(cos + m) (detached);
    target s*alpha_p*(cos - (1 - m)), others s*alpha_n*(cos - m).
    Weights start as in the official code: kaiming-uniform with a = sqrt(5) (nn.Linear's default),
    i.e. U(-1/sqrt(in_dim), 1/sqrt(in_dim)).
    """

    def __init__(self, in_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.35):
        super().__init__(in_dim, num_classes, scale, margin)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def margin_logits(self, cos: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        m = self.margin
        c = cos.detach()
        alpha_p = (1.0 + m - c).clamp(min=0.0)
        alpha_n = (c + m).clamp(min=0.0)
        target = alpha_p * (cos - (1.0 - m))
        other = alpha_n * (cos - m)
        return self.scale * torch.where(onehot, target, other)


CLASSIFIERS = {"linear": LinearClassifier, "arcface": ArcFace, "cosface": CosFace, "circle": CircleSoftmax}
