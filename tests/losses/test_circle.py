"""Pairwise circle loss against an explicit loop over anchors and pairs."""

from __future__ import annotations

import math

import pytest
import torch

from vreid.losses import PairwiseCircleLoss


def _lse(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def brute_force_circle(features: torch.Tensor, labels: list[int], m: float, gamma: float) -> tuple[float, list[int]]:
    rows = [[float(v) for v in f] for f in features]
    rows = [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]
    n = len(rows)
    per_anchor, used = [], []
    for i in range(n):
        logits_p, logits_n = [], []
        for j in range(n):
            if j == i:
                continue
            s = sum(a * b for a, b in zip(rows[i], rows[j], strict=True))
            if labels[j] == labels[i]:
                alpha_p = max(0.0, 1 + m - s)
                logits_p.append(-gamma * alpha_p * (s - (1 - m)))
            else:
                alpha_n = max(0.0, s + m)
                logits_n.append(gamma * alpha_n * (s - m))
        if logits_p and logits_n:
            per_anchor.append(_softplus(_lse(logits_n) + _lse(logits_p)))
            used.append(i)
    return sum(per_anchor) / len(per_anchor), used


@pytest.mark.parametrize(("margin", "gamma"), [(0.25, 128.0), (0.4, 16.0)])
def test_matches_brute_force(margin: float, gamma: float) -> None:
    labels = [0, 0, 0, 1, 1, 2, 3, 3]  # unequal groups; id 2 is a singleton, never an anchor
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(8, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = PairwiseCircleLoss(margin=margin, gamma=gamma)(feats, torch.tensor(labels))
    expected, used = brute_force_circle(feats.detach(), labels, margin, gamma)
    assert 5 not in used and len(used) == 7
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0


def test_alphas_are_constants_in_the_gradient() -> None:
    # The alphas must not be differentiated: compare autograd with a reference whose alphas are frozen constants.
    m, gamma = 0.25, 4.0
    feats = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    loss = PairwiseCircleLoss(margin=m, gamma=gamma)(feats, labels)
    loss.backward()
    with torch.no_grad():
        z = torch.nn.functional.normalize(feats, dim=1)
        sim0 = z @ z.t()

    def frozen_alpha_loss(x: torch.Tensor) -> torch.Tensor:
        z = torch.nn.functional.normalize(x, dim=1)
        sim = z @ z.t()
        total = x.new_zeros(())
        for i, (p, n) in enumerate([(1, 2), (0, 2)]):
            lp = -gamma * torch.relu(1 + m - sim0[i, p]) * (sim[i, p] - (1 - m))
            ln = gamma * torch.relu(sim0[i, n] + m) * (sim[i, n] - m)
            total = total + torch.nn.functional.softplus(lp + ln)
        return total / 2

    x = feats.detach().clone().requires_grad_(True)
    frozen_alpha_loss(x).backward()
    assert torch.allclose(feats.grad, x.grad, atol=1e-10)


def test_perfect_separation_gives_small_loss() -> None:
    # Two identities, each with two identical images; the identities are orthogonal: s_p = 1, s_n = 0.
    # Then gamma*alpha_p*(s_p - (1-m)) = 128*0.25*0.25 = 8 and gamma*alpha_n*(s_n - m) = -8, so each anchor's loss is
    # softplus(-16 + ln 2) ~ 2.3e-7.
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    loss = PairwiseCircleLoss(margin=0.25, gamma=128.0)(feats, labels)
    assert loss.item() == pytest.approx(math.log1p(2 * math.exp(-16)), rel=1e-9)
    assert loss.item() < 1e-6
    mixed = PairwiseCircleLoss(margin=0.25, gamma=128.0)(feats, torch.tensor([0, 1, 0, 1]))
    assert mixed.item() > 10


def test_no_valid_anchor_gives_connected_zero() -> None:
    feats = torch.randn(3, 4, requires_grad=True)
    loss = PairwiseCircleLoss()(feats, torch.tensor([1, 1, 1]))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(feats.grad, torch.zeros_like(feats))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="gamma"):
        PairwiseCircleLoss(gamma=0.0)
    with pytest.raises(ValueError, match="margin"):
        PairwiseCircleLoss(margin=float("nan"))
