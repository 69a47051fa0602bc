"""Domain-balanced batches + domain-aware MixStyle: every mixed pair is a real/synthetic pair (issue 6)."""

from __future__ import annotations

import torch

import vreid.models.layers as layers
from vreid.config import load_config
from vreid.data.samplers import DomainBalancedIdentitySampler
from vreid.models import build_model


def test_mixed_pairs_cross_domains_in_sampled_batches(monkeypatch):
    labels = [i // 4 for i in range(64)]  # 16 identities x 4 images
    domains = [0 if i < 8 else 1 for i in labels]  # ids 0-7 real, 8-15 synthetic
    sampler = DomainBalancedIdentitySampler(labels, domains, batch_size=16, num_instances=4, seed=3)
    cfg = load_config(None, ["MODEL.BACKBONE", "resnet18", "MODEL.MIXSTYLE.ENABLED", "True", "MODEL.MIXSTYLE.P",
                             "1.0", "MODEL.MIXSTYLE.MIX", "domain", "MODEL.MIXSTYLE.AFTER", "(1, 2)"])
    model = build_model(cfg, 16).train()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_mix = layers.mix_styles

    def spy(x, lam, partner, eps=1e-6):
        seen.append((partner.clone(), batch_domains))
        return real_mix(x, lam, partner, eps)

    monkeypatch.setattr(layers, "mix_styles", spy)
    sampler.set_epoch(0)
    for batch in list(sampler)[:3]:
        idx = torch.tensor([i for i, _ in batch])
        batch_domains = torch.tensor(domains)[idx]
        assert batch_domains[:8].eq(0).all() and batch_domains[8:].eq(1).all()  # fixed halves
        model(torch.rand(len(idx), 3, 32, 32), labels=torch.tensor(labels)[idx], domains=batch_domains)
    assert len(seen) == 6  # two positions x three batches
    for partner, doms in seen:
        assert torch.all(doms[partner] != doms)  # each sample's style partner is from the other domain
