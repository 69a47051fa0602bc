"""Batch-hard triplet loss (Hermans et al., 2017) on Euclidean distances.

Differences from the official code (docs/method.md): mining works with plain masks, so identities may have
different numbers of images in a batch (the official code reshapes the masks and silently requires every anchor
to have the same number of positives); anchors without a positive or without a negative are skipped instead of
producing garbage; a batch with no valid anchor returns a zero that keeps the graph connected.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from vreid.losses.pairs import check_embedding_batch, connected_zero, pair_masks

log = logging.getLogger(__name__)

MINING_METHODS = ("hard",)


def euclidean_distance_matrix(features: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise Euclidean distances ``sqrt(clamp(|a|² + |b|² - 2a·b, eps))`` of the rows of ``features``.

    The clamp keeps the square root (and its gradient) finite on the diagonal and for duplicate features.
    """
    sq_norms = features.pow(2).sum(dim=1)
    d2 = sq_norms.unsqueeze(1) + sq_norms.unsqueeze(0) - 2.0 * (features @ features.t())
    return d2.clamp(min=eps).sqrt()


class TripletLoss(nn.Module):
    """Batch-hard triplet loss: for each anchor, its farthest positive against its closest negative.

    ``loss = mean_i relu(d(a_i, p_i*) - d(a_i, n_i*) + margin)`` over the anchors that have at least one positive
    (another image of the same identity) and one negative; ``margin=None`` or ``margin <= 0`` selects the soft
    margin ``softplus(d_ap - d_an)`` (as the official code does for ``margin <= 0``). ``normalize=True``
    L2-normalises the features first, which makes the margin independent of the feature scale (the paper's
    setting applies the loss to the un-normalised post-BN feature, whose scale starts near zero; docs/method.md).
    Only ``mining="hard"`` exists; the argument is there so other strategies can be added.
    """

    def __init__(self, margin: float | None = 0.3, normalize: bool = False, mining: str = "hard") -> None:
        super().__init__()
        if mining not in MINING_METHODS:
            raise ValueError(f"mining must be one of {MINING_METHODS}, got {mining!r}")
        if margin is not None:
            margin = float(margin)
            if margin != margin:  # NaN
                raise ValueError("margin must be a number or None, got NaN")
        self.margin: float | None = margin if margin is not None and margin > 0 else None
        self.normalize = bool(normalize)
        self.mining = mining

    @property
    def soft_margin(self) -> bool:
        """True when the soft-margin form is used."""
        return self.margin is None

    def extra_repr(self) -> str:
        margin = "soft" if self.margin is None else self.margin
        return f"margin={margin}, normalize={self.normalize}, mining={self.mining!r}"

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss for ``features`` (N, D) and identity ``labels`` (N,)."""
        labels = check_embedding_batch(features, labels)
        if self.normalize:
            features = F.normalize(features, dim=1)
        n = features.shape[0]
        dist = euclidean_distance_matrix(features)
        pos_mask, neg_mask, _ = pair_masks(labels)
        valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
        if not bool(valid.any()):
            log.debug("triplet loss: no anchor has both a positive and a negative in this batch of %d", n)
            return connected_zero(features)
        dist, pos_mask, neg_mask = dist[valid], pos_mask[valid], neg_mask[valid]
        d_ap = dist.masked_fill(~pos_mask, float("-inf")).amax(dim=1)
        d_an = dist.masked_fill(~neg_mask, float("inf")).amin(dim=1)
        if self.margin is None:
            return F.softplus(d_ap - d_an).mean()
        return F.relu(d_ap - d_an + self.margin).mean()
