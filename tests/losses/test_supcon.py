"""SupCon against an explicit loop over anchors and positives, plus its invariances."""

from __future__ import annotations

import math

import pytest
import torch

from vreid.losses import SupConLoss


def brute_force_supcon(
    features: torch.Tensor,
    labels: list[int],
    temperature: float,
    normalize: bool,
    base_temperature: float | None = None,
) -> tuple[float, list[int]]:
    """Loss and the anchors that count (those with a positive)."""
    rows = [[float(v) for v in f] for f in features]
    if normalize:
        rows = [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]
    n = len(rows)

    def sim(i: int, j: int) -> float:
        return sum(a * b for a, b in zip(rows[i], rows[j], strict=True)) / temperature

    per_anchor, used = [], []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(sim(i, a)) for a in range(n) if a != i)
        terms = [math.log(math.exp(sim(i, p)) / denominator) for p in positives]
        scale = 1.0 if base_temperature is None else temperature / base_temperature
        per_anchor.append(-scale * sum(terms) / len(terms))
        used.append(i)
    return sum(per_anchor) / len(per_anchor), used


LABELS = [0, 1, 0, 2, 1, 0, 2, 3]  # unequal group sizes, not contiguous, not divisible by any K


def _features(n: int = 8, d: int = 6, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, d, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize(
    ("normalize", "temperature", "base_temperature", "scale"),
    [(True, 0.07, None, 1.0), (True, 0.5, 0.07, 1.0), (False, 0.07, None, 0.4), (False, 1.0, 2.0, 1.0)],
)
def test_matches_brute_force(normalize: bool, temperature: float, base_temperature: float | None, scale: float) -> None:
    feats = _features(scale=scale).requires_grad_(True)
    loss = SupConLoss(temperature, normalize=normalize, base_temperature=base_temperature)(feats, torch.tensor(LABELS))
    expected, used = brute_force_supcon(feats.detach(), LABELS, temperature, normalize, base_temperature)
    assert used == [0, 1, 2, 3, 4, 5, 6]  # anchor 7 (singleton id 3) is left out of the mean
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0


def test_singleton_anchor_excluded_from_mean() -> None:
    feats = _features(seed=1)
    loss = SupConLoss(temperature=0.5)(feats, torch.tensor(LABELS))
    expected, used = brute_force_supcon(feats, LABELS, 0.5, True)
    assert 7 not in used
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # A version that counted the singleton as a zero-loss anchor would average over 8 anchors instead of 7.
    assert loss.item() != pytest.approx(expected * 7 / 8, abs=1e-6)


def test_invariant_to_batch_order() -> None:
    feats = _features(seed=2)
    labels = torch.tensor(LABELS)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    for normalize in (True, False):
        loss = SupConLoss(0.1, normalize=normalize)
        assert loss(feats[perm], labels[perm]).item() == pytest.approx(loss(feats, labels).item(), abs=1e-10)


def test_scale_invariance_only_when_normalized() -> None:
    feats = _features(seed=4)
    labels = torch.tensor(LABELS)
    normalized = SupConLoss(0.07, normalize=True)
    assert normalized(3.0 * feats, labels).item() == pytest.approx(normalized(feats, labels).item(), abs=1e-9)
    raw = SupConLoss(0.07, normalize=False)
    assert abs(raw(3.0 * feats, labels).item() - raw(feats, labels).item()) > 1e-3


def test_stable_for_large_unnormalized_features() -> None:
    # Norm ~1e3 in float32: logits ~1e7, far past exp() overflow; the self term is the row maximum, so
    # subtracting a max that included it would underflow every denominator term.
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(16, 2048, generator=gen)
    feats = (1e3 * feats / feats.norm(dim=1, keepdim=True)).requires_grad_(True)
    labels = torch.arange(16) % 4
    loss = SupConLoss(0.07, normalize=False)(feats, labels)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(feats.grad).all()


def test_no_positive_gives_connected_zero() -> None:
    feats = _features(n=4, seed=6).requires_grad_(True)
    for labels in ([0, 1, 2, 3], [5]):
        x = feats[: len(labels)]
        loss = SupConLoss()(x, torch.tensor(labels))
        assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(feats.grad, torch.zeros_like(feats))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=0.0)
    with pytest.raises(ValueError, match="base_temperature"):
        SupConLoss(base_temperature=-1.0)
    with pytest.raises(ValueError, match="labels"):
        SupConLoss()(torch.zeros(4, 3), torch.zeros(4, dtype=torch.float32))
