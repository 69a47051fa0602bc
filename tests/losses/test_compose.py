"""The composed objective: the configured subset, weights, MALW and the feature it reads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vreid.config import load_config
from vreid.losses.compose import build_criterion


def outputs(seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"logits": torch.randn(8, 4, generator=g), "features": torch.randn(8, 6, generator=g),
           "bn_features": torch.randn(8, 6, generator=g), "group_logits": torch.randn(8, 3, generator=g),
           "group_labels": torch.randint(3, (8,), generator=g)}
    return out, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def smooth_ce(logits, labels, eps):
    q = torch.full_like(logits, eps / logits.shape[1])
    q[torch.arange(len(labels)), labels] += 1 - eps
    return -(q * logits.log_softmax(1)).sum(1).mean()


def test_fixed_weights_sum_as_configured():
    cfg = load_config(None, ["LOSSES.NAMES", "('ce', 'triplet')", "LOSSES.MALW.ENABLED", "False",
                             "LOSSES.CE.WEIGHT", "0.5", "LOSSES.TRIPLET.WEIGHT", "2.0", "LOSSES.CE.EPSILON", "0.1"])
    crit = build_criterion(cfg)
    out, labels = outputs()
    total, parts = crit(out, labels)
    assert abs(parts["ce"] - float(smooth_ce(out["logits"], labels, 0.1))) < 1e-5
    assert torch.allclose(total, torch.tensor(0.5 * parts["ce"] + 2.0 * parts["triplet"]), atol=1e-5)
    assert "id_weight" not in parts


def test_metric_feat_selects_before_or_after_bnneck():
    out, labels = outputs()
    before = build_criterion(load_config(None, ["LOSSES.NAMES", "('supcon',)"]))(out, labels)[1]["supcon"]
    after = build_criterion(load_config(None, ["LOSSES.NAMES", "('supcon',)", "LOSSES.METRIC_FEAT", "after"]))(
        out, labels)[1]["supcon"]
    swapped = dict(out, features=out["bn_features"])
    assert before != after
    assert abs(after - build_criterion(load_config(None, ["LOSSES.NAMES", "('supcon',)"]))(swapped, labels)[1][
        "supcon"]) < 1e-6


def test_malw_adapts_the_id_weight_and_resumes():
    cfg = load_config(None, ["LOSSES.NAMES", "('ce', 'supcon')", "LOSSES.MALW.INTERVAL", "3"])
    crit = build_criterion(cfg)
    history = []
    for step in range(3):
        out, labels = outputs(step)
        out["logits"] = out["logits"] * (1 + 3 * step)  # a CE that varies much more than SupCon
        total, parts = crit(out, labels)
        history.append(parts)
    ce = [p["ce"] for p in history]
    sup = [p["supcon"] for p in history]
    r = torch.tensor(sup).std(unbiased=False) / torch.tensor(ce).std(unbiased=False)
    assert history[0]["id_weight"] == history[1]["id_weight"] == 1.0
    assert abs(history[2]["id_weight"] - (0.9 + 0.1 * float(r))) < 1e-6  # convex update at iteration K
    assert abs(float(total) - (history[2]["id_weight"] * ce[2] + sup[2])) < 1e-4
    fresh = build_criterion(cfg)
    fresh.load_state_dict_extra(crit.state_dict_extra())
    assert fresh.malw.id_weight == crit.malw.id_weight


def test_group_loss_only_when_weighted():
    out, labels = outputs()
    plain = build_criterion(load_config(None, ["LOSSES.NAMES", "('ce',)"]))(out, labels)[1]
    grouped = build_criterion(load_config(None, ["LOSSES.NAMES", "('ce',)", "LOSSES.GROUP_WEIGHT", "0.3"]))(
        out, labels)[1]
    expected = float(F.cross_entropy(out["group_logits"], out["group_labels"]))
    assert "group" not in plain and abs(grouped["group"] - expected) < 1e-6
    assert abs(grouped["loss"] - (plain["loss"] + 0.3 * expected)) < 1e-5


def test_empty_or_unknown_losses_are_errors():
    from vreid.errors import ConfigError

    with pytest.raises(ConfigError, match="LOSSES.NAMES: unknown loss 'arc'"):
        build_criterion(load_config(None, ["LOSSES.NAMES", "('arc',)"]))
    with pytest.raises(ValueError, match="at least one loss"):
        build_criterion(load_config(None, ["LOSSES.NAMES", "()"]))
