"""What the pair-based losses (triplet, SupCon, circle) share: input checks and same-identity masks."""

from __future__ import annotations

import torch


def check_embedding_batch(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Validate a (N, D) feature batch and its (N,) integer labels; return the labels on the features' device."""
    if features.dim() != 2:
        raise ValueError(f"features must have shape (N, D), got {tuple(features.shape)}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels must have shape ({features.shape[0]},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integer identities, got dtype {labels.dtype}")
    return labels.to(features.device)


def connected_zero(features: torch.Tensor) -> torch.Tensor:
    """A scalar 0 with a grad_fn reaching ``features`` (its gradient is all zeros), even if they hold inf/NaN."""
    return features[:0].sum()


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positives, negatives, eye) as (N, N) boolean masks; an anchor is never its own positive."""
    n = labels.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=labels.device)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    return same & ~eye, ~same, eye
