"""UNIT networks: coupled VAE encoders/generators with a shared latent space, and multi-scale LSGAN discriminators.

Liu, Breuel, Kautz, "Unsupervised Image-to-Image Translation Networks", NeurIPS 2017 (UNIT), Sec. 2 / Fig. 1:
each domain has an encoder E_i and a generator G_i; the *last* layers of E_1/E_2 and the *first* layers of
G_1/G_2 share weights, so both domains map into one latent space Z. The encoder output is the mean of a
unit-variance Gaussian q(z|x) = N(E(x), I); training samples z = E(x) + n, n ~ N(0, I); translation uses the
mean. The layer layout follows the official PyTorch release (7x7 stem, stride-2 4x4 down-sampling convolutions,
instance-normalised residual blocks, nearest up-sampling + 5x5 layer-normalised convolutions, 7x7 tanh output)
with the explicit weight sharing of the paper's (NIPS) code: ``n_shared`` residual blocks at the end of the
encoders and ``n_shared`` at the start of the generators.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

DOMAINS = ("a", "b")


def _pad(pad_type: str, size: int) -> nn.Module:
    if pad_type == "reflect":
        return nn.ReflectionPad2d(size)
    if pad_type == "zero":
        return nn.ZeroPad2d(size)
    raise ValueError(f"pad_type must be 'reflect' or 'zero', got {pad_type!r}")


class ConvBlock(nn.Sequential):
    """pad -> conv -> norm ('in', 'ln' or 'none') -> activation ('relu', 'lrelu', 'tanh' or 'none')."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, padding: int,
                 norm: str = "none", activation: str = "relu", pad_type: str = "reflect"):
        layers: list[nn.Module] = [_pad(pad_type, padding), nn.Conv2d(in_ch, out_ch, kernel, stride, bias=True)]
        if norm == "in":
            layers.append(nn.InstanceNorm2d(out_ch))
        elif norm == "ln":  # layer norm over (C, H, W) with a per-channel affine, as the official decoder
            layers.append(nn.GroupNorm(1, out_ch))
        elif norm != "none":
            raise ValueError(f"norm must be 'in', 'ln' or 'none', got {norm!r}")
        if activation == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif activation == "lrelu":
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        elif activation == "tanh":
            layers.append(nn.Tanh())
        elif activation != "none":
            raise ValueError(f"activation must be 'relu', 'lrelu', 'tanh' or 'none', got {activation!r}")
        super().__init__(*layers)


class ResBlock(nn.Module):
    """x + IN(conv(ReLU(IN(conv(x))))) with 3x3 convolutions."""

    def __init__(self, dim: int, pad_type: str = "reflect"):
        super().__init__()
        self.body = nn.Sequential(
            ConvBlock(dim, dim, 3, 1, 1, norm="in", activation="relu", pad_type=pad_type),
            ConvBlock(dim, dim, 3, 1, 1, norm="in", activation="none", pad_type=pad_type),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def res_blocks(n: int, dim: int, pad_type: str = "reflect") -> nn.Sequential:
    return nn.Sequential(*(ResBlock(dim, pad_type) for _ in range(n)))


class Encoder(nn.Module):
    """E_i: domain-specific stem, down-sampling and residual blocks, then the SHARED residual blocks.

    ``forward`` returns the latent mean mu, shape (N, width * 2**n_downsample, H / 2**n_downsample, W / ...).
    """

    def __init__(self, shared: nn.Module, in_channels: int = 3, width: int = 64, n_downsample: int = 2,
                 n_private_res: int = 3, pad_type: str = "reflect"):
        super().__init__()
        layers: list[nn.Module] = [ConvBlock(in_channels, width, 7, 1, 3, norm="in", pad_type=pad_type)]
        dim = width
        for _ in range(n_downsample):
            layers.append(ConvBlock(dim, dim * 2, 4, 2, 1, norm="in", pad_type=pad_type))
            dim *= 2
        layers.append(res_blocks(n_private_res, dim, pad_type))
        self.private = nn.Sequential(*layers)
        self.shared = shared
        self.out_channels = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(self.private(x))


class Generator(nn.Module):
    """G_i: the SHARED residual blocks, then domain-specific residual blocks and up-sampling to a tanh image."""

    def __init__(self, shared: nn.Module, latent_channels: int, out_channels: int = 3, n_upsample: int = 2,
                 n_private_res: int = 3, pad_type: str = "reflect"):
        super().__init__()
        self.shared = shared
        layers: list[nn.Module] = [res_blocks(n_private_res, latent_channels, pad_type)]
        dim = latent_channels
        for _ in range(n_upsample):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       ConvBlock(dim, dim // 2, 5, 1, 2, norm="ln", pad_type=pad_type)]
            dim //= 2
        layers.append(ConvBlock(dim, out_channels, 7, 1, 3, norm="none", activation="tanh", pad_type=pad_type))
        self.private = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.private(self.shared(z))


class MultiScaleDiscriminator(nn.Module):
    """PatchGAN discriminators on the image and ``n_scales - 1`` average-pooled copies (LSGAN outputs).

    Each scale: ``n_layers`` stride-2 4x4 convolutions (LeakyReLU 0.2, no normalisation, widths doubling from
    ``width``) and a 1x1 convolution to one channel. ``forward`` returns one patch map per scale.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, n_layers: int = 4, n_scales: int = 3,
                 pad_type: str = "reflect"):
        super().__init__()
        self.n_layers = n_layers
        self.nets = nn.ModuleList(self._make_net(in_channels, width, n_layers, pad_type) for _ in range(n_scales))

    @staticmethod
    def _make_net(in_channels: int, width: int, n_layers: int, pad_type: str) -> nn.Sequential:
        layers: list[nn.Module] = [ConvBlock(in_channels, width, 4, 2, 1, activation="lrelu", pad_type=pad_type)]
        dim = width
        for _ in range(n_layers - 1):
            layers.append(ConvBlock(dim, dim * 2, 4, 2, 1, activation="lrelu", pad_type=pad_type))
            dim *= 2
        layers.append(nn.Conv2d(dim, 1, 1, 1, 0))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for i, net in enumerate(self.nets):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(net(x))
        return outputs


def init_weights(module: nn.Module, kind: str) -> None:
    """Official UNIT initialisation: 'kaiming' (fan-in normal) for generators, 'gaussian' N(0, 0.02) for D."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            if kind == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif kind == "gaussian":
                nn.init.normal_(m.weight, 0.0, 0.02)
            else:
                raise ValueError(f"unknown init {kind!r}")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"domain must be 'a' or 'b', got {domain!r}")
    return domain


class UnitGenerator(nn.Module):
    """Both encoders and both generators; the shared blocks are single modules registered in both domains.

    Domain ``a`` is the source (synthetic) domain and ``b`` the target (real) domain of :func:`train_unit`.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, n_downsample: int = 2, n_res: int = 4,
                 n_shared: int = 1, pad_type: str = "reflect"):
        super().__init__()
        if not 0 <= n_shared <= n_res:
            raise ValueError(f"n_shared must be in [0, n_res={n_res}], got {n_shared}")
        self.n_downsample = n_downsample
        latent = width * 2 ** n_downsample
        shared_enc = res_blocks(n_shared, latent, pad_type)  # last layers of E_a / E_b
        shared_gen = res_blocks(n_shared, latent, pad_type)  # first layers of G_a / G_b
        private = n_res - n_shared
        self.enc_a = Encoder(shared_enc, in_channels, width, n_downsample, private, pad_type)
        self.enc_b = Encoder(shared_enc, in_channels, width, n_downsample, private, pad_type)
        self.gen_a = Generator(shared_gen, latent, in_channels, n_downsample, private, pad_type)
        self.gen_b = Generator(shared_gen, latent, in_channels, n_downsample, private, pad_type)
        init_weights(self, "kaiming")

    def encoder(self, domain: str) -> Encoder:
        return self.enc_a if _check_domain(domain) == "a" else self.enc_b

    def generator(self, domain: str) -> Generator:
        return self.gen_a if _check_domain(domain) == "a" else self.gen_b

    def encode(self, x: torch.Tensor, domain: str, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, z): z = mu + N(0, I) noise when ``sample`` (training), else z = mu."""
        mu = self.encoder(domain)(x)
        return mu, (mu + torch.randn_like(mu)) if sample else mu

    def decode(self, z: torch.Tensor, domain: str) -> torch.Tensor:
        return self.generator(domain)(z)

    def translate(self, x: torch.Tensor, direction: str = "a2b") -> torch.Tensor:
        """Deterministic translation (latent mean, no noise): ``direction`` is 'a2b' or 'b2a'."""
        if direction not in ("a2b", "b2a"):
            raise ValueError(f"direction must be 'a2b' or 'b2a', got {direction!r}")
        src, dst = direction[0], direction[2]
        return self.decode(self.encode(x, src)[0], dst)

    def translate_a2b(self, x: torch.Tensor) -> torch.Tensor:
        return self.translate(x, "a2b")

    def translate_b2a(self, x: torch.Tensor) -> torch.Tensor:
        return self.translate(x, "b2a")


class UnitModel(nn.Module):
    """UNIT: :class:`UnitGenerator` (``enc_a, enc_b, gen_a, gen_b``) plus one multi-scale D per domain."""

    def __init__(self, in_channels: int = 3, width: int = 64, n_downsample: int = 2, n_res: int = 4,
                 n_shared: int = 1, dis_width: int = 64, dis_layers: int = 4, dis_scales: int = 3,
                 pad_type: str = "reflect"):
        super().__init__()
        self.generator = UnitGenerator(in_channels, width, n_downsample, n_res, n_shared, pad_type)
        self.dis_a = MultiScaleDiscriminator(in_channels, dis_width, dis_layers, dis_scales, pad_type)
        self.dis_b = MultiScaleDiscriminator(in_channels, dis_width, dis_layers, dis_scales, pad_type)
        init_weights(self.dis_a, "gaussian")
        init_weights(self.dis_b, "gaussian")

    @property
    def enc_a(self) -> Encoder:
        return self.generator.enc_a

    @property
    def enc_b(self) -> Encoder:
        return self.generator.enc_b

    @property
    def gen_a(self) -> Generator:
        return self.generator.gen_a

    @property
    def gen_b(self) -> Generator:
        return self.generator.gen_b

    def discriminator(self, domain: str) -> MultiScaleDiscriminator:
        return self.dis_a if _check_domain(domain) == "a" else self.dis_b

    def generator_parameters(self) -> list[nn.Parameter]:
        """Encoder + generator parameters, each shared Parameter once."""
        return list(self.generator.parameters())  # Module.parameters() de-duplicates shared modules

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [*self.dis_a.parameters(), *self.dis_b.parameters()]

    def translate_a2b(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator.translate(x, "a2b")

    def translate_b2a(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator.translate(x, "b2a")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
