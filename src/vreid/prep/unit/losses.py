"""The UNIT objective (Liu, Breuel, Kautz, NeurIPS 2017, Eq. 2-5), with the official release's weights.

Generators/encoders minimise, for both domains,
``gan_w * L_GAN + recon_x_w * L1(x, G(z)) + recon_kl_w * KL + recon_x_cyc_w * L1(x, x_cyc) + recon_kl_cyc_w * KL_cyc``;
the discriminators minimise ``gan_w * L_GAN^D``. GANs are least-squares (LSGAN, summed over the D scales);
as in the official code the KL term of a unit-variance Gaussian posterior is reduced to ``mean(mu ** 2)``
(the constant and the variance terms drop out), and the cycle KL is taken on the re-encoded translation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from vreid.config import get_defaults
from vreid.prep.unit.networks import UnitModel

_UNIT = get_defaults().UNIT  # the loss weights' defaults are the config's (config.py: UNIT.*), written once there
GAN_W = _UNIT.GAN_W
RECON_X_W = _UNIT.RECON_X_W
RECON_KL_W = _UNIT.RECON_KL_W
RECON_X_CYC_W = _UNIT.RECON_X_CYC_W
RECON_KL_CYC_W = _UNIT.RECON_KL_CYC_W


def kl_loss(mu: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, I) || N(0, I)) up to constants and scale: ``mean(mu ** 2)`` (official UNIT)."""
    return mu.float().pow(2).mean()


def recon_loss(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (the paper's Laplacian likelihood)."""
    return F.l1_loss(x.float(), target.float())


def lsgan_d_loss(fake: Sequence[torch.Tensor], real: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over scales of mean(D(fake)^2) + mean((D(real) - 1)^2)."""
    return sum((f.float().pow(2).mean() + (r.float() - 1).pow(2).mean() for f, r in zip(fake, real, strict=True)),
               torch.zeros((), device=fake[0].device))


def lsgan_g_loss(fake: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over scales of mean((D(fake) - 1)^2)."""
    return sum((f.float().sub(1).pow(2).mean() for f in fake), torch.zeros((), device=fake[0].device))


def discriminator_loss(model: UnitModel, x_a: torch.Tensor, x_b: torch.Tensor,
                       gan_w: float = GAN_W) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """D step: translations are made without gradient (sampled latents, as in training) and judged against reals.

    Returns the weighted total (to back-propagate) and detached scalar parts (no device sync).
    """
    g = model.generator
    with torch.no_grad():
        _, z_a = g.encode(x_a, "a", sample=True)
        _, z_b = g.encode(x_b, "b", sample=True)
        x_ba = g.decode(z_b, "a")
        x_ab = g.decode(z_a, "b")
    loss_a = lsgan_d_loss(model.dis_a(x_ba), model.dis_a(x_a))
    loss_b = lsgan_d_loss(model.dis_b(x_ab), model.dis_b(x_b))
    total = gan_w * (loss_a + loss_b)
    return total, {"d_total": total.detach(), "d_a": loss_a.detach(), "d_b": loss_b.detach()}


def generator_loss(model: UnitModel, x_a: torch.Tensor, x_b: torch.Tensor, gan_w: float = GAN_W,
                   recon_x_w: float = RECON_X_W, recon_kl_w: float = RECON_KL_W,
                   recon_x_cyc_w: float = RECON_X_CYC_W,
                   recon_kl_cyc_w: float = RECON_KL_CYC_W) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """E/G step: VAE reconstruction + KL, adversarial, cycle reconstruction + cycle KL for both domains."""
    g = model.generator
    mu_a, z_a = g.encode(x_a, "a", sample=True)
    mu_b, z_b = g.encode(x_b, "b", sample=True)
    x_aa = g.decode(z_a, "a")  # within-domain reconstruction (VAE)
    x_bb = g.decode(z_b, "b")
    x_ba = g.decode(z_b, "a")  # cross-domain translation
    x_ab = g.decode(z_a, "b")
    mu_ab, z_ab = g.encode(x_ab, "b", sample=True)  # re-encode the translations for the cycle
    mu_ba, z_ba = g.encode(x_ba, "a", sample=True)
    x_aba = g.decode(z_ab, "a")
    x_bab = g.decode(z_ba, "b")

    parts = {
        "recon_x_a": recon_loss(x_aa, x_a), "recon_x_b": recon_loss(x_bb, x_b),
        "kl_a": kl_loss(mu_a), "kl_b": kl_loss(mu_b),
        "adv_a": lsgan_g_loss(model.dis_a(x_ba)), "adv_b": lsgan_g_loss(model.dis_b(x_ab)),
        "cyc_x_a": recon_loss(x_aba, x_a), "cyc_x_b": recon_loss(x_bab, x_b),
        "kl_cyc_a": kl_loss(mu_ab), "kl_cyc_b": kl_loss(mu_ba),
    }
    total = (gan_w * (parts["adv_a"] + parts["adv_b"])
             + recon_x_w * (parts["recon_x_a"] + parts["recon_x_b"])
             + recon_kl_w * (parts["kl_a"] + parts["kl_b"])
             + recon_x_cyc_w * (parts["cyc_x_a"] + parts["cyc_x_b"])
             + recon_kl_cyc_w * (parts["kl_cyc_a"] + parts["kl_cyc_b"]))
    stats = {"g_total": total.detach(), **{k: v.detach() for k, v in parts.items()}}
    return total, stats
