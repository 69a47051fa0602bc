"""Classifier logits against their published formulas, one element at a time."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vreid.models.classifiers import ArcFace, CircleSoftmax, CosFace, LinearClassifier


def cosines(clf, x):
    w = clf.weight.detach()
    return torch.tensor([[float(F.cosine_similarity(x[i], w[j], dim=0)) for j in range(w.shape[0])]
                         for i in range(x.shape[0])])


@pytest.mark.parametrize("cls", [ArcFace, CosFace, CircleSoftmax])
def test_margin_logits_elementwise(cls):
    torch.manual_seed(0)
    s, m = 30.0, 0.3
    clf = cls(4, 5, scale=s, margin=m)
    x = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    logits = clf(x, labels)
    cos = cosines(clf, x)
    for i in range(6):
        for j in range(5):
            c = float(cos[i, j])
            target = j == int(labels[i])
            if cls is CosFace:
                want = s * (c - m) if target else s * c
            elif cls is ArcFace:
                theta = math.acos(max(-1.0, min(1.0, c)))
                if target:
                    want = s * math.cos(theta + m) if theta + m <= math.pi else s * (c - math.sin(math.pi - m) * m)
                else:
                    want = s * c
            else:
                want = s * max(0.0, 1 + m - c) * (c - (1 - m)) if target else s * max(0.0, c + m) * (c - m)
            assert abs(float(logits[i, j].detach()) - want) < 1e-3, (i, j)
    assert torch.allclose(clf(x), s * cos, atol=1e-4)  # without labels: scaled cosine
    logits.sum().backward()
    assert torch.isfinite(clf.weight.grad).all() and clf.weight.grad.abs().sum() > 0


def test_linear_classifier_is_a_bias_free_fc():
    clf = LinearClassifier(4, 3)
    x = torch.randn(2, 4)
    assert torch.allclose(clf(x), x @ clf.weight.T)
    assert clf.weight.std() < 0.01  # N(0, 0.001) init


def test_circle_weights_start_kaiming_uniform_as_the_official_code():
    """U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform, a = sqrt(5)), not xavier's wider U(-sqrt(6/(in+out)), ...)."""
    torch.manual_seed(0)
    in_dim, classes = 400, 1000
    w = CircleSoftmax(in_dim, classes).weight.detach()
    bound = 1 / math.sqrt(in_dim)  # 0.05; xavier's bound here would be sqrt(6/1400) = 0.065
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.99 * bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.002  # the std of U(-b, b)
