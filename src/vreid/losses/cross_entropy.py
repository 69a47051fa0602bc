"""Label-smoothed cross-entropy, the ID loss of the paper (Eq. 4-5)."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against a smoothed one-hot target (paper Eq. 4-5, ε = 0.1 in the paper).

    The target is ``q = (1 - ε)·onehot(y) + ε/C``, i.e. ``q_y = 1 - (C-1)ε/C`` and ``q_j = ε/C`` otherwise, and
    the loss is ``mean_i Σ_j -q_ij log softmax(logits_i)_j``. Smoothing keeps the classifier from becoming
    over-confident on the training identities, which helps retrieval on unseen ones. ``epsilon=0`` is exactly
    :func:`torch.nn.functional.cross_entropy`. Unlike the official code, the number of classes is read from the
    logits instead of being a constructor argument, so one instance works for any classifier width.
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        epsilon = float(epsilon)
        if not (math.isfinite(epsilon) and 0.0 <= epsilon <= 1.0):
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = epsilon

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss for ``logits`` (N, C) and integer class ``labels`` (N,)."""
        if logits.dim() != 2:
            raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
        if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
            raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
        if logits.shape[0] == 0:
            return logits[:0].sum()  # zero that stays connected to the graph
        log_probs = F.log_softmax(logits, dim=1)
        labels = labels.to(device=logits.device, dtype=torch.long)
        # Σ_j -q_j log p_j split into its two parts: (1-ε)·(-log p_y) + ε·mean_j(-log p_j).
        nll = -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)
        uniform = -log_probs.mean(dim=1)
        return ((1.0 - self.epsilon) * nll + self.epsilon * uniform).mean()


def group_loss(group_logits: torch.Tensor, group_labels: torch.Tensor) -> torch.Tensor:
    """GroupFace's self-distributed grouping loss: CE of the GDN logits (from the multi-head attention head)
    against its balanced group labels."""
    return F.cross_entropy(group_logits, group_labels)
