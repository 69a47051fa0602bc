"""Label-smoothed cross-entropy against F.cross_entropy, a loop version of Eq. 4-5 and a hand-computed case."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vreid.losses import CrossEntropyLabelSmooth


def brute_force_ls_ce(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> float:
    n, c = logits.shape
    total = 0.0
    for i in range(n):
        row = [float(v) for v in logits[i]]
        lse = math.log(sum(math.exp(v) for v in row))
        for j in range(c):
            q = (1 - eps) * (1.0 if j == int(labels[i]) else 0.0) + eps / c
            total += -q * (row[j] - lse)
    return total / n


def test_epsilon_zero_equals_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (7,), generator=gen)
    ours = CrossEntropyLabelSmooth(epsilon=0.0)(logits, labels)
    assert torch.allclose(ours, F.cross_entropy(logits, labels), atol=1e-12, rtol=0)


@pytest.mark.parametrize("eps", [0.1, 0.35])
def test_matches_brute_force_and_gradient(eps: float) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 1, 1, 2, 0])
    loss = CrossEntropyLabelSmooth(epsilon=eps)(logits, labels)
    assert loss.item() == pytest.approx(brute_force_ls_ce(logits.detach(), labels, eps), abs=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_hand_computed_2x3() -> None:
    # Row 0: logits (1, 2, 3), label 2. lse = 3 + ln(1 + e^-1 + e^-2) = 3.4076060;
    #   -log p = (2.4076060, 1.4076060, 0.4076060); q = (0.1/3, 0.1/3, 0.9 + 0.1/3)
    #   loss = 0.9 * 0.4076060 + 0.1 * mean(-log p) = 0.3668454 + 0.1407606 = 0.5076060.
    # Row 1: logits (0, 0, 0), label 0: every -log p = ln 3 and q sums to 1, so loss = ln 3 = 1.0986123.
    # Mean = 0.8031091.
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([2, 0])
    loss = CrossEntropyLabelSmooth(epsilon=0.1)(logits, labels)
    assert loss.item() == pytest.approx(0.8031091265562449, abs=1e-9)


def test_rejects_bad_epsilon_and_shapes() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        CrossEntropyLabelSmooth(epsilon=-0.1)
    with pytest.raises(ValueError, match="epsilon"):
        CrossEntropyLabelSmooth(epsilon=1.5)
    loss = CrossEntropyLabelSmooth()
    with pytest.raises(ValueError, match="labels"):
        loss(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        loss(torch.zeros(3, 4), torch.zeros(3))
