"""Pairwise circle loss (Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization", CVPR 2020).

Formula check: the stored copies of the paper that could be searched expose only its abstract and introduction
(which state the "reduce (α_n s_n - α_p s_p)" re-weighting idea); Eq. 4 and its one-margin re-parameterisation were
checked against the pytorch-metric-learning documentation page for ``CircleLoss``, which reproduces them:
``L = log[1 + Σ_j exp(γ α_n^j (s_n^j - Δ_n)) · Σ_i exp(-γ α_p^i (s_p^i - Δ_p))]``, ``α_p = [O_p - s_p]_+``,
``α_n = [s_n - O_n]_+`` with ``O_p = 1 + m``, ``O_n = -m``, ``Δ_p = 1 - m``, ``Δ_n = m``. Since
``log(1 + e^a·e^b) = softplus(a + b)``, computing the two sums with log-sum-exp gives exactly what
:class:`PairwiseCircleLoss` does. α_p and α_n are detached (constants in the gradient), as those notes also state.
The default ``gamma=128`` is this project's choice; the paper tunes (m, γ) per task and its re-ID values were not
verified here.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from vreid.losses.pairs import check_embedding_batch, connected_zero, pair_masks

log = logging.getLogger(__name__)


class PairwiseCircleLoss(nn.Module):
    """Circle loss on cosine similarities between the samples of a batch (pair-wise labels, paper Eq. 4).

    For each anchor ``i``, with ``s`` the cosine similarities to its positives (same label, not itself) and
    negatives::

        L_i = softplus( logsumexp_n γ α_n (s_n - m) + logsumexp_p -γ α_p (s_p - (1 - m)) ),
        α_p = relu(1 + m - s_p), α_n = relu(s_n + m)   (both detached)

    averaged over the anchors that have both a positive and a negative. Each similarity is re-weighted by how
    far it is from its optimum (1 + m for s_p, -m for s_n), so well-separated pairs stop dominating the gradient.
    """

    def __init__(self, margin: float = 0.25, gamma: float = 128.0) -> None:
        super().__init__()
        margin, gamma = float(margin), float(gamma)
        if not math.isfinite(margin):
            raise ValueError(f"margin must be a finite number, got {margin}")
        if not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be a positive number, got {gamma}")
        self.margin = margin
        self.gamma = gamma

    def extra_repr(self) -> str:
        return f"margin={self.margin}, gamma={self.gamma}"

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss for ``features`` (N, D) and identity ``labels`` (N,)."""
        labels = check_embedding_batch(features, labels)
        n = features.shape[0]
        pos_mask, neg_mask, _ = pair_masks(labels)
        valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
        if not bool(valid.any()):
            log.debug("circle loss: no anchor has both a positive and a negative in this batch of %d", n)
            return connected_zero(features)

        z = F.normalize(features, dim=1)
        sim = (z @ z.t())[valid]
        pos_mask, neg_mask = pos_mask[valid], neg_mask[valid]
        m, gamma = self.margin, self.gamma
        alpha_p = F.relu(1.0 + m - sim).detach()
        alpha_n = F.relu(sim + m).detach()
        logit_p = (-gamma * alpha_p * (sim - (1.0 - m))).masked_fill(~pos_mask, float("-inf"))
        logit_n = (gamma * alpha_n * (sim - m)).masked_fill(~neg_mask, float("-inf"))
        # Every kept row has at least one finite entry in each, so logsumexp (and its gradient) stays finite.
        loss = F.softplus(torch.logsumexp(logit_n, dim=1) + torch.logsumexp(logit_p, dim=1))
        return loss.mean()
