"""Supervised contrastive loss (Khosla et al., NeurIPS 2020), the paper's metric loss (Eq. 6).

Differences from the official code (docs/method.md, Losses and MALW):

* Features are L2-normalised by default (``normalize=True``), as in standard SupCon. The official code feeds the
  raw post-BN feature to ``exp(z_i·z_a/τ)``; dot products then scale with the square of the feature norm, so the
  effective temperature is ``τ/|z|²`` and changes as the BN-neck weights grow during training (near-uniform
  softmax at the start, when the BN-neck γ is ~N(0, 0.001); near-hard-max later). ``normalize=False`` keeps that
  behaviour for reproduction.
* Positives come from comparing labels, so the batch may be in any order and of any size. The official code
  reshapes it to (P, K, D), assuming K consecutive images per identity and a batch divisible by K.
* The max subtracted for stability is taken over the denominator's entries (all samples except the anchor). The
  reference implementation takes it over the whole row including the anchor itself; with un-normalised features the
  self-similarity |z_i|²/τ usually dominates, and every other term can underflow to 0, giving log(0).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from vreid.losses.pairs import check_embedding_batch, connected_zero, pair_masks

log = logging.getLogger(__name__)


class SupConLoss(nn.Module):
    """Supervised contrastive loss, "all" contrast mode: every sample is an anchor.

    For anchor ``i`` with positives ``P(i)`` (other samples with the same label) and ``A(i)`` (all samples but i)::

        L_i = -(τ / τ_base) · mean_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ) )

    averaged over the anchors that have at least one positive (paper Eq. 6 writes a sum; the official code and
    the SupCon reference average). ``base_temperature=None`` means no τ/τ_base factor, which is the official
    setting (τ = τ_base = 0.07). Called as ``loss(features, labels)`` with features (N, D) and integer labels (N,).
    """

    def __init__(
        self, temperature: float = 0.07, normalize: bool = True, base_temperature: float | None = None
    ) -> None:
        super().__init__()
        temperature = float(temperature)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        if base_temperature is not None:
            base_temperature = float(base_temperature)
            if not (math.isfinite(base_temperature) and base_temperature > 0):
                raise ValueError(f"base_temperature must be a positive number or None, got {base_temperature}")
        self.temperature = temperature
        self.normalize = bool(normalize)
        self.base_temperature = base_temperature

    @property
    def scale(self) -> float:
        """The factor τ/τ_base applied to the loss (1 when ``base_temperature`` is None)."""
        return 1.0 if self.base_temperature is None else self.temperature / self.base_temperature

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, normalize={self.normalize}, base_temperature={self.base_temperature}"

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss for ``features`` (N, D) and identity ``labels`` (N,)."""
        labels = check_embedding_batch(features, labels)
        n = features.shape[0]
        pos_mask, _, eye = pair_masks(labels)
        num_pos = pos_mask.sum(dim=1)
        has_pos = num_pos > 0
        if not bool(has_pos.any()):
            log.debug("supcon loss: no anchor has a positive in this batch of %d", n)
            return connected_zero(features)

        z = F.normalize(features, dim=1) if self.normalize else features
        logits = (z @ z.t()) / self.temperature
        logits = logits.masked_fill(eye, float("-inf"))  # the anchor is not in its own denominator
        # Shift by the row max over A(i): the largest term becomes exp(0) = 1, so the denominator is >= 1 and
        # nothing overflows. The shift cancels in the ratio, hence detach (the gradient is unchanged).
        shifted = logits - logits.amax(dim=1, keepdim=True).detach()
        log_prob = shifted - torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))

        log_prob, pos_mask, num_pos = log_prob[has_pos], pos_mask[has_pos], num_pos[has_pos]
        # where() rather than a product: the diagonal of log_prob is -inf and 0·(-inf) would be NaN.
        pos_sum = torch.where(pos_mask, log_prob, torch.zeros((), dtype=log_prob.dtype, device=log_prob.device))
        mean_log_prob_pos = pos_sum.sum(dim=1) / num_pos.to(log_prob.dtype)
        return -self.scale * mean_log_prob_pos.mean()
