"""Pooling and feature-statistics layers: GeM and MixStyle (docs/method.md, MixStyle and Pooling)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIX_RANDOM, MIX_DOMAIN = "random", "domain"


class GeM(nn.Module):
    """Generalised-mean pooling: (mean over h,w of clamp(x, eps)^p)^(1/p); p=1 is average, p->inf max.

    The paper uses p=3 fixed (the official constructor's ``freeze_p=True``); ``learnable=True`` makes
    p a parameter, as in Radenovic et al.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = False):
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM p must be > 0, got {p}")
        self.eps = eps
        self.learnable = learnable
        if learnable:
            self.p = nn.Parameter(torch.tensor(float(p)))
        else:
            self.register_buffer("p", torch.tensor(float(p)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.to(x.dtype)
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(p), 1).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={float(self.p):.2f}, learnable={self.learnable}"


POOLINGS = ("gem", "avg", "max")


def make_pooling(name: str, p: float = 3.0, learnable: bool = False) -> nn.Module:
    """The global pooling ``name``; ``p`` and ``learnable`` are GeM's (the other two have no parameters)."""
    if name == "gem":
        return GeM(p=p, learnable=learnable)
    if name == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if name == "max":
        return nn.AdaptiveMaxPool2d(1)
    raise ValueError(f"unknown pooling {name!r}; choose from {', '.join(POOLINGS)}")


def style_statistics(x: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and std over the spatial dims (unbiased variance, as MixStyle)."""
    mu = x.mean(dim=(2, 3), keepdim=True)
    sigma = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt()
    return mu, sigma


def mix_styles(x: torch.Tensor, lam: torch.Tensor, partner: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MixStyle's arithmetic (paper Eq. 1-3): normalise each sample, then re-style it with statistics
    mixed from its own and its partner's: x_hat * (lam*sigma + (1-lam)*sigma') + (lam*mu + (1-lam)*mu').

    ``lam`` has one value per sample, ``partner`` one index per sample. Statistics are detached.
    """
    mu, sigma = style_statistics(x, eps)
    mu, sigma = mu.detach(), sigma.detach()
    x_hat = (x - mu) / sigma
    lam = lam.view(-1, 1, 1, 1).to(x.dtype)
    mu_mix = lam * mu + (1 - lam) * mu[partner]
    sigma_mix = lam * sigma + (1 - lam) * sigma[partner]
    return x_hat * sigma_mix + mu_mix


def domain_partners(domains: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each sample, a random partner from another domain (or from the whole batch if none exists).

    This is the real<->synthetic pairing the paper describes; the official ``MixStyle2`` instead pairs
    the two halves of the batch, which its sampler never fills with one domain each (docs/method.md, MixStyle).
    """
    n = domains.numel()
    partner = torch.empty(n, dtype=torch.long)
    domains = domains.cpu()
    for i in range(n):
        others = (domains != domains[i]).nonzero().flatten()
        pool = others if others.numel() else torch.arange(n)
        partner[i] = pool[torch.randint(pool.numel(), (1,), generator=generator)]
    return partner


class MixStyle(nn.Module):
    """Mixes feature statistics between samples during training (Zhou et al., ICLR 2021; paper 3.2).

    Applied with probability ``p`` per call (one torch random draw, so seeds reproduce it), only in
    training mode; lambda ~ Beta(alpha, alpha) per sample. ``mix="random"`` pairs each sample with a
    random permutation partner; ``mix="domain"`` pairs it with a sample of another domain, using the
    per-sample domain labels passed in ``forward`` (0 = real, 1 = synthetic).
    """

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6, mix: str = MIX_RANDOM):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"MixStyle p must be in [0, 1], got {p}")
        if alpha <= 0:
            raise ValueError(f"MixStyle alpha must be > 0, got {alpha}")
        if mix not in (MIX_RANDOM, MIX_DOMAIN):
            raise ValueError(f"MixStyle mix must be {MIX_RANDOM!r} or {MIX_DOMAIN!r}, got {mix!r}")
        self.p, self.alpha, self.eps, self.mix = p, alpha, eps, mix

    def forward(self, x: torch.Tensor, domains: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training or x.shape[0] < 2 or torch.rand(()) >= self.p:
            return x
        n = x.shape[0]
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((n,)).to(x.device)
        if self.mix == MIX_DOMAIN:
            if domains is None:
                raise ValueError("MixStyle(mix='domain') needs the batch's domain labels")
            partner = domain_partners(domains)
        else:
            partner = torch.randperm(n)
        return mix_styles(x, lam, partner.to(x.device), self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p}, alpha={self.alpha}, mix={self.mix}"
