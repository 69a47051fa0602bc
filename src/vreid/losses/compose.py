"""The training objective: any subset of the losses, with fixed weights or MALW (paper 3.3).

total = w_id * CE(logits) + w_metric * sum_k(weight_k * metric_k(features)) + group_weight * group_loss

w_id is ``LOSSES.CE.WEIGHT`` fixed, or adapted by MALW from that start when both an ID loss and a
metric loss are configured; w_metric is 1 (MALW never changes it). :func:`build_criterion` is the
only function here that reads the config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from vreid.config import check_choice
from vreid.errors import ConfigError
from vreid.losses.circle import PairwiseCircleLoss
from vreid.losses.cross_entropy import CrossEntropyLabelSmooth, group_loss
from vreid.losses.malw import RECORD_MODES, UPDATE_RULES, MomentumAdaptiveLossWeight
from vreid.losses.supcon import SupConLoss
from vreid.losses.triplet import TripletLoss

ID_LOSSES = ("ce",)
METRIC_LOSSES = ("triplet", "supcon", "circle")
LOSS_NAMES = ID_LOSSES + METRIC_LOSSES
FEATURE_KEYS = {"before": "features", "after": "bn_features"}


class ReIDCriterion(nn.Module):
    """Combines the configured losses on a :class:`~vreid.models.build.ReIDNet` training output."""

    def __init__(
        self,
        id_loss: nn.Module | None,
        metric_losses: Mapping[str, tuple[nn.Module, float]],
        id_weight: float = 1.0,
        malw: MomentumAdaptiveLossWeight | None = None,
        metric_feat: str = "before",
        group_weight: float = 0.0,
        reduce_scalars: Callable[[list[float]], list[float]] | None = None,
    ):
        super().__init__()
        if id_loss is None and not metric_losses:
            raise ValueError("at least one loss is needed (LOSSES.NAMES is empty)")
        if metric_feat not in FEATURE_KEYS:
            raise ValueError(f"metric_feat must be one of {tuple(FEATURE_KEYS)}, got {metric_feat!r}")
        self.id_loss = id_loss
        self.metric_losses = nn.ModuleDict({k: m for k, (m, _) in metric_losses.items()})
        self.metric_weights = {k: w for k, (_, w) in metric_losses.items()}
        self.id_weight = id_weight
        self.malw = malw if id_loss is not None and metric_losses else None
        self.feature_key = FEATURE_KEYS[metric_feat]
        self.group_weight = group_weight
        # Under DDP the trainer passes an all-reduce mean, so MALW sees the same losses on every rank.
        self.reduce_scalars: Callable[[list[float]], list[float]] = reduce_scalars or (lambda values: values)

    def forward(
        self, outputs: Mapping[str, torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and a dict of its parts (floats, for logging)."""
        parts: dict[str, float] = {}
        id_term = metric_term = None
        if self.id_loss is not None:
            id_term = self.id_loss(outputs["logits"], labels)
            parts["ce"] = float(id_term.detach())
        for name, loss in self.metric_losses.items():
            value = loss(outputs[self.feature_key], labels)
            parts[name] = float(value.detach())
            weighted = self.metric_weights[name] * value
            metric_term = weighted if metric_term is None else metric_term + weighted
        w_id, w_metric = self.id_weight, 1.0
        if self.malw is not None:
            id_value, metric_value = self.reduce_scalars([parts["ce"], float(metric_term.detach())])
            w_id, w_metric = self.malw.step(id_value, metric_value)
            parts["id_weight"] = w_id
        total = sum(w * t for w, t in ((w_id, id_term), (w_metric, metric_term)) if t is not None)
        if self.group_weight and "group_logits" in outputs:
            g = group_loss(outputs["group_logits"], outputs["group_labels"])
            parts["group"] = float(g.detach())
            total = total + self.group_weight * g
        parts["loss"] = float(total.detach())
        return total, parts

    def state_dict_extra(self) -> dict[str, Any]:
        """What a checkpoint must keep to resume exactly (MALW's weights and partial histories)."""
        return {"malw": self.malw.state_dict()} if self.malw is not None else {}

    def load_state_dict_extra(self, state: Mapping[str, Any]) -> None:
        if self.malw is not None and "malw" in state:
            self.malw.load_state_dict(state["malw"])


def check_loss_config(cfg) -> None:
    """The LOSSES keys with a fixed set of choices, each error naming its key."""
    for name in cfg.LOSSES.NAMES:
        if name not in LOSS_NAMES:
            raise ConfigError(f"LOSSES.NAMES: unknown loss {name!r}; choose from {', '.join(LOSS_NAMES)}")
    check_choice(cfg, "LOSSES.METRIC_FEAT", FEATURE_KEYS)
    check_choice(cfg, "LOSSES.MALW.RECORD", RECORD_MODES)
    check_choice(cfg, "LOSSES.MALW.UPDATE", UPDATE_RULES)


def build_criterion(cfg, reduce_scalars: Callable[[list[float]], list[float]] | None = None) -> ReIDCriterion:
    """The objective described by ``cfg.LOSSES``; ``reduce_scalars`` averages MALW's losses over processes (DDP)."""
    check_loss_config(cfg)
    c = cfg.LOSSES
    names = tuple(c.NAMES)
    id_loss = CrossEntropyLabelSmooth(c.CE.EPSILON) if "ce" in names else None
    makers = {
        "triplet": lambda: (TripletLoss(c.TRIPLET.MARGIN if c.TRIPLET.MARGIN > 0 else None, c.TRIPLET.NORMALIZE),
                            c.TRIPLET.WEIGHT),
        "supcon": lambda: (SupConLoss(c.SUPCON.TEMPERATURE, c.SUPCON.NORMALIZE), c.SUPCON.WEIGHT),
        "circle": lambda: (PairwiseCircleLoss(c.CIRCLE.MARGIN, c.CIRCLE.GAMMA), c.CIRCLE.WEIGHT),
    }
    metric = {n: makers[n]() for n in names if n in METRIC_LOSSES}
    malw = None
    if c.MALW.ENABLED:
        malw = MomentumAdaptiveLossWeight(interval=c.MALW.INTERVAL, momentum=c.MALW.MOMENTUM,
                                          id_weight=c.CE.WEIGHT, record=c.MALW.RECORD, update=c.MALW.UPDATE)
    return ReIDCriterion(id_loss, metric, c.CE.WEIGHT, malw, c.METRIC_FEAT, c.GROUP_WEIGHT, reduce_scalars)
