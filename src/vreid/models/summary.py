"""What a model costs: parameters per block, embedding size, and FLOPs at a given input size."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vreid.models.build import ReIDNet


@dataclass(frozen=True)
class BlockSize:
    name: str
    parameters: int
    trainable: int


def _count(params) -> tuple[int, int]:
    params = list(params)
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def block_sizes(model: ReIDNet) -> list[BlockSize]:
    """Parameters of the backbone's stem and each stage, then pooling, head, neck and classifier."""
    rows = []
    stage_names = set(model.backbone.stage_names)
    modules = dict(model.backbone.named_modules())
    in_stages = {id(p) for name in stage_names for p in modules[name].parameters()}
    stem = [p for p in model.backbone.parameters() if id(p) not in in_stages]
    rows.append(BlockSize("backbone.stem", *_count(stem)))
    for name in model.backbone.stage_names:
        rows.append(BlockSize(f"backbone.{name}", *_count(modules[name].parameters())))
    for name in ("pool", "head", "neck", "classifier"):
        part = getattr(model, name)
        if isinstance(part, nn.Module):
            rows.append(BlockSize(name, *_count(part.parameters())))
    return rows


def count_flops(model: nn.Module, height: int, width: int) -> int:
    """FLOPs of one eval forward pass of a single image (a multiply-add counts as 2)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, height, width, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def format_summary(model: ReIDNet, height: int, width: int) -> str:
    rows = block_sizes(model)
    lines = [f"{'block':<24}{'parameters':>15}{'trainable':>15}"]
    lines += [f"{r.name:<24}{r.parameters:>15,}{r.trainable:>15,}" for r in rows]
    total, trainable = _count(model.parameters())
    lines.append(f"{'total':<24}{total:>15,}{trainable:>15,}")
    flops = count_flops(model, height, width)
    lines.append(f"embedding: {model.embedding_dim}-d; input {height}x{width}: {flops / 1e9:.2f} GFLOPs "
                 f"({flops / 2e9:.2f} GMACs) per image")
    return "\n".join(lines)
