"""Optimizer and learning-rate schedule (docs/method.md, Training).

The schedule is a pure function of the (fractional) epoch so that it can be tested against the
official table and so that a resumed run needs no scheduler state: the trainer sets the learning
rate of every parameter group before each iteration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from vreid.config import check_choice
from vreid.engine.precision import AMP_CHOICES

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = ("cosine", "cosine_step", "step")


def check_solver_config(cfg) -> None:
    """The SOLVER keys with a fixed set of choices, each error naming its key."""
    check_choice(cfg, "SOLVER.OPTIMIZER", OPTIMIZERS)
    check_choice(cfg, "SOLVER.SCHEDULER", SCHEDULERS)
    check_choice(cfg, "SOLVER.AMP", AMP_CHOICES)


def lr_factor(
    epoch: float,
    max_epochs: int,
    scheduler: str = "cosine",
    warmup_epochs: float = 0.0,
    warmup_factor: float = 0.01,
    eta_min_ratio: float = 0.0,
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    step_tail_epochs: int = 2,
    tail_gamma: float = 0.3,
) -> float:
    """Multiplier of the base learning rate at ``epoch`` (0-based; fractions are iterations within it).

    - ``cosine``: (1 + cos(pi * epoch / max_epochs)) / 2, floored at ``eta_min_ratio``.
    - ``cosine_step`` (the official ``CosineStepLR``, per epoch): cosine over the first
      ``max_epochs - step_tail_epochs`` epochs, then the last cosine value times ``tail_gamma`` per epoch
      (official: 0.3).
    - ``step``: ``gamma`` to the number of ``steps`` (epochs) passed.
    Linear warm-up from ``warmup_factor`` to 1 over the first ``warmup_epochs`` multiplies any of them.
    """
    if scheduler == "cosine":
        factor = eta_min_ratio + (1 - eta_min_ratio) * (1 + math.cos(math.pi * min(epoch, max_epochs) / max_epochs)) / 2
    elif scheduler == "cosine_step":
        t, cos_epochs = math.floor(epoch), max_epochs - step_tail_epochs
        if cos_epochs <= 0:
            raise ValueError(f"cosine_step needs MAX_EPOCHS ({max_epochs}) > STEP_TAIL_EPOCHS ({step_tail_epochs})")
        if t < cos_epochs:
            factor = (1 + math.cos(math.pi * t / cos_epochs)) / 2
        else:
            last = (1 + math.cos(math.pi * (cos_epochs - 1) / cos_epochs)) / 2
            factor = last * tail_gamma ** (t - cos_epochs + 1)
    elif scheduler == "step":
        factor = gamma ** sum(math.floor(epoch) >= s for s in steps)
    else:
        raise ValueError(f"unknown scheduler {scheduler!r}; use cosine, cosine_step or step")
    if warmup_epochs > 0 and epoch < warmup_epochs:
        factor *= warmup_factor + (1 - warmup_factor) * epoch / warmup_epochs
    return factor


def lr_factor_from_config(cfg, epoch: float) -> float:
    s = cfg.SOLVER
    return lr_factor(epoch, s.MAX_EPOCHS, s.SCHEDULER, s.WARMUP_EPOCHS, s.WARMUP_FACTOR,
                     s.ETA_MIN_LR / s.BASE_LR if s.BASE_LR else 0.0, s.STEPS, s.GAMMA, s.STEP_TAIL_EPOCHS,
                     s.STEP_TAIL_GAMMA)


def param_groups(model: nn.Module, base_lr: float, weight_decay: float, norm_bias_decay: float,
                 head_lr_factor: float = 1.0, backbone: nn.Module | None = None) -> list[dict]:
    """Parameter groups: backbone vs head (learning-rate factor) x decayed vs not (biases, norms).

    Every parameter that requires grad now is included once, so freezing the backbone later (no
    gradients) needs no new optimizer. Each group keeps its ``lr_scale`` for the schedule.
    """
    backbone_ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    no_decay_ids = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, _NORM_TYPES) or name.endswith("bias") or p.ndim <= 1:
                no_decay_ids.add(id(p))
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in backbone_ids, id(p) in no_decay_ids), []).append(p)
    out = []
    for (in_backbone, no_decay), params in sorted(groups.items()):
        scale = 1.0 if in_backbone or backbone is None else head_lr_factor
        out.append({"params": params, "lr": base_lr * scale, "lr_scale": scale,
                    "weight_decay": norm_bias_decay if no_decay else weight_decay})
    return out


def build_optimizer(cfg, model: nn.Module, backbone: nn.Module | None = None) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.SOLVER`` over :func:`param_groups` of ``model``."""
    check_solver_config(cfg)
    s = cfg.SOLVER
    groups = param_groups(model, s.BASE_LR, s.WEIGHT_DECAY, s.WEIGHT_DECAY_NORM_BIAS, s.HEAD_LR_FACTOR, backbone)
    if s.OPTIMIZER == "adam":
        return torch.optim.Adam(groups, lr=s.BASE_LR)
    if s.OPTIMIZER == "sgd":
        return torch.optim.SGD(groups, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=True)
    raise ValueError(f"SOLVER.OPTIMIZER: unknown optimizer {s.OPTIMIZER!r}; use adam or sgd")


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor * group.get("lr_scale", 1.0)
    return base_lr * factor
