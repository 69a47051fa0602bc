"""GeM and MixStyle against their formulas written out independently."""

from __future__ import annotations

import pytest
import torch

from vreid.models.layers import GeM, MixStyle, domain_partners, mix_styles


def test_gem_matches_formula_and_limits():
    x = torch.rand(2, 3, 4, 5) + 0.01
    expected = torch.stack([torch.stack([(x[n, c] ** 3).mean() ** (1 / 3) for c in range(3)]) for n in range(2)])
    assert torch.allclose(GeM(3.0)(x).flatten(1), expected, atol=1e-6)
    assert torch.allclose(GeM(1.0)(x).flatten(1), x.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(GeM(64.0)(x).flatten(1), x.amax(dim=(2, 3)), rtol=0.1)  # large p approaches max
    assert GeM(3.0)(-x).abs().max() < 1e-5  # negatives are clamped to eps


def test_gem_learnable_p_gets_a_gradient():
    gem = GeM(3.0, learnable=True)
    gem(torch.rand(2, 3, 4, 4) + 0.1).sum().backward()
    assert gem.p.grad is not None and gem.p.grad.abs() > 0
    assert "p" not in GeM(3.0).state_dict()  # fixed p is not a parameter and not saved


def test_mixstyle_output_statistics_equal_the_mixed_statistics():
    torch.manual_seed(0)
    scale = torch.tensor([1.0, 2.0, 0.5, 3.0]).view(4, 1, 1, 1)
    x = torch.randn(4, 3, 6, 6) * scale + torch.arange(4.0).view(4, 1, 1, 1)
    lam = torch.tensor([0.2, 0.9, 0.5, 1.0])
    partner = torch.tensor([1, 0, 3, 2])
    out = mix_styles(x, lam, partner, eps=0.0)
    mu = x.mean(dim=(2, 3))
    sd = x.var(dim=(2, 3)).sqrt()  # unbiased, as MixStyle's
    for i in range(4):
        j = partner[i]
        assert torch.allclose(out[i].mean(dim=(1, 2)), lam[i] * mu[i] + (1 - lam[i]) * mu[j], atol=1e-5)
        assert torch.allclose(out[i].var(dim=(1, 2)).sqrt(), lam[i] * sd[i] + (1 - lam[i]) * sd[j], atol=1e-4)
    assert torch.allclose(out[3], x[3], atol=1e-4)  # lambda 1 keeps the sample's own style


def test_mixstyle_only_in_training_and_with_probability_p():
    x = torch.randn(8, 4, 5, 5)
    ms = MixStyle(p=1.0, alpha=0.1)
    ms.eval()
    assert torch.equal(ms(x), x)
    ms.train()
    assert not torch.equal(ms(x), x)
    assert torch.equal(MixStyle(p=0.0).train()(x), x)
    torch.manual_seed(1)
    half = MixStyle(p=0.5).train()
    changed = sum(not torch.equal(half(x), x) for _ in range(400))
    assert 150 < changed < 250


def test_domain_partners_always_cross_domains():
    domains = torch.tensor([0, 0, 0, 1, 1, 0, 1, 0])
    for seed in range(20):
        partner = domain_partners(domains, torch.Generator().manual_seed(seed))
        assert torch.all(domains[partner] != domains)
    same = domain_partners(torch.zeros(4, dtype=torch.long))  # one domain only: any partner
    assert same.min() >= 0 and same.max() < 4


def test_domain_mix_needs_domains_and_validates_args():
    with pytest.raises(ValueError, match="domain labels"):
        MixStyle(p=1.0, mix="domain").train()(torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match="mix"):
        MixStyle(mix="halves")
    with pytest.raises(ValueError, match="p must be"):
        MixStyle(p=1.5)
