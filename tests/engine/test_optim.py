"""Schedules against the official table and formulas; optimizer parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vreid.engine.optim import lr_factor, param_groups, set_lr

# docs/method.md, Training: the official cosine_step schedule, 12 epochs, factor of the base lr per epoch
OFFICIAL = [1.000, .976, .905, .794, .655, .500, .346, .206, .096, .024, .0073, .0022]


def test_cosine_step_reproduces_the_official_table():
    got = [lr_factor(e, 12, "cosine_step", tail_gamma=0.3, step_tail_epochs=2) for e in range(12)]
    for epoch, (want, have) in enumerate(zip(OFFICIAL, got, strict=True)):
        assert abs(have - want) <= 0.0006 + 0.005 * want, (epoch + 1, have, want)
    assert lr_factor(3.7, 12, "cosine_step") == lr_factor(3, 12, "cosine_step")  # per epoch


def test_cosine_step_from_the_default_config_is_the_official_schedule():
    """SOLVER.STEP_TAIL_GAMMA defaults to the official 0.3; SOLVER.GAMMA (step) does not touch it."""
    from vreid.config import load_config
    from vreid.engine.optim import lr_factor_from_config

    cfg = load_config(None, ["SOLVER.SCHEDULER", "cosine_step", "SOLVER.GAMMA", "0.5"])
    got = [lr_factor_from_config(cfg, e) for e in range(12)]
    for want, have in zip(OFFICIAL, got, strict=True):
        assert abs(have - want) <= 0.0006 + 0.005 * want


def test_cosine_warmup_and_step():
    assert lr_factor(0, 10) == 1.0 and abs(lr_factor(5, 10) - 0.5) < 1e-12
    assert abs(lr_factor(2.5, 10) - (1 + math.cos(math.pi * 0.25)) / 2) < 1e-12  # smooth within epochs
    assert abs(lr_factor(10, 10, eta_min_ratio=0.1) - 0.1) < 1e-12
    assert abs(lr_factor(0, 10, warmup_epochs=2, warmup_factor=0.1) - 0.1) < 1e-12
    assert abs(lr_factor(1, 10, warmup_epochs=2, warmup_factor=0.1) - 0.55 * lr_factor(1, 10)) < 1e-12
    assert [lr_factor(e, 90, "step", steps=(40, 70), gamma=0.1) for e in (0, 39, 40, 69.5, 70)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01])
    with pytest.raises(ValueError, match="unknown scheduler"):
        lr_factor(0, 10, "linear")


def test_param_groups_split_decay_and_head_lr():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    backbone = model[0]
    model[3].bias.requires_grad_(False)  # like the BNNeck bias: frozen, so not optimised
    groups = param_groups(model, 0.1, 5e-4, 0.0, head_lr_factor=10.0, backbone=backbone)
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(model[0].weight)]["weight_decay"] == 5e-4 and by_param[id(model[0].weight)]["lr"] == 0.1
    assert by_param[id(model[0].bias)]["weight_decay"] == 0.0
    assert by_param[id(model[1].weight)]["weight_decay"] == 0.0  # norm weights
    assert by_param[id(model[3].weight)]["lr"] == pytest.approx(1.0)  # head x10
    assert id(model[3].bias) not in by_param
    assert sum(len(g["params"]) for g in groups) == 5
    # written out: (params, lr, weight decay) of each group, backbone x10 below the head, no decay on norms/biases
    expected = [({id(model[3].weight)}, 1.0, 5e-4), ({id(model[1].weight), id(model[1].bias)}, 1.0, 0.0),
                ({id(model[0].weight)}, 0.1, 5e-4), ({id(model[0].bias)}, 0.1, 0.0)]
    got = {frozenset(id(p) for p in g["params"]): (g["lr"], g["weight_decay"]) for g in groups}
    assert len(groups) == 4 and got == {frozenset(ids): (lr, wd) for ids, lr, wd in expected}
    opt = torch.optim.SGD(groups, lr=0.1)
    assert set_lr(opt, 0.1, 0.5) == pytest.approx(0.05)
    lrs = {frozenset(id(p) for p in g["params"]): g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({frozenset(ids): 0.5 * lr for ids, lr, _ in expected})
