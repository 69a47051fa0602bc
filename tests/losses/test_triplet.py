"""Batch-hard triplet loss against an explicit loop over anchors."""

from __future__ import annotations

import math

import pytest
import torch

from vreid.losses import TripletLoss


def _dist(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def brute_force_triplet(
    features: torch.Tensor, labels: list[int], margin: float | None, normalize: bool = False
) -> tuple[float, list[int]]:
    """Loss and the anchors that were used."""
    rows = [[float(v) for v in f] for f in features]
    if normalize:
        rows = [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]
    terms, used = [], []
    for i, anchor in enumerate(rows):
        pos = [_dist(anchor, rows[j]) for j in range(len(rows)) if j != i and labels[j] == labels[i]]
        neg = [_dist(anchor, rows[j]) for j in range(len(rows)) if labels[j] != labels[i]]
        if not pos or not neg:
            continue
        x = max(pos) - min(neg)
        terms.append(math.log1p(math.exp(x)) if margin is None else max(0.0, x + margin))
        used.append(i)
    return (sum(terms) / len(terms) if terms else 0.0), used


def _features(n: int, d: int = 5, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("margin", [0.3, 5.0])
def test_unequal_positives_match_brute_force(margin: float) -> None:
    labels = [0, 0, 0, 1, 1, 2]  # 3, 2 and 1 images: the official reshape-based mining cannot do this
    feats = _features(6).requires_grad_(True)
    loss = TripletLoss(margin=margin)(feats, torch.tensor(labels))
    expected, used = brute_force_triplet(feats.detach(), labels, margin)
    assert used == [0, 1, 2, 3, 4]
    assert expected > 0
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0


def test_singleton_identity_is_not_an_anchor_but_is_a_negative() -> None:
    labels = [0, 0, 1, 1, 2]
    feats = _features(5, seed=3)
    # Move the singleton (id 2) right next to anchor 0: it must become anchor 0's hardest negative.
    feats[4] = feats[0] + 1e-3
    loss = TripletLoss(margin=0.3)(feats, torch.tensor(labels))
    expected, used = brute_force_triplet(feats, labels, 0.3)
    assert 4 not in used
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # A version that kept the singleton as an anchor with a zero (or -inf-masked) term would divide by 5, not 4.
    assert expected > 0
    assert loss.item() != pytest.approx(expected * len(used) / len(labels), abs=1e-6)


def test_soft_margin() -> None:
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    feats = _features(8, seed=4).requires_grad_(True)
    for margin in (None, 0.0, -1.0):
        loss = TripletLoss(margin=margin)(feats, torch.tensor(labels))
        expected, _ = brute_force_triplet(feats.detach(), labels, None)
        assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0


def test_normalize() -> None:
    labels = [3, 1, 3, 1, 7, 7]
    feats = _features(6, seed=5) * 10
    loss = TripletLoss(margin=0.3, normalize=True)(feats, torch.tensor(labels))
    expected, _ = brute_force_triplet(feats, labels, 0.3, normalize=True)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(TripletLoss(0.3, normalize=True)(feats / 10, torch.tensor(labels)).item())


@pytest.mark.parametrize("labels", [[4, 4, 4, 4], [0, 1, 2, 3]])
def test_no_valid_anchor_gives_connected_zero(labels: list[int]) -> None:
    feats = _features(4, seed=6).requires_grad_(True)
    loss = TripletLoss()(feats, torch.tensor(labels))
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert feats.grad is not None and torch.equal(feats.grad, torch.zeros_like(feats))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mining"):
        TripletLoss(mining="semi")
    with pytest.raises(ValueError, match="labels"):
        TripletLoss()(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
