"""Multi-head attention and BNNeck against their formulas, with explicit per-group loops."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vreid.losses.cross_entropy import group_loss
from vreid.models.heads import BNNeck, GroupLinear, MultiHeadAttention


def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, slope * x)


def test_multihead_output_equals_its_formula():
    torch.manual_seed(0)
    head = MultiHeadAttention(in_dim=6, out_dim=5, groups=3, gdn_hidden=4)
    with torch.no_grad():
        head.group_act.weight.copy_(torch.tensor([0.1, 0.2, 0.3]))  # distinct slope per group
    x = torch.randn(7, 6)
    out = head(x)
    lin_i, act_i = head.instance
    v_inst = prelu(x @ lin_i.weight.T + lin_i.bias, act_i.weight)
    l1, a1, l2, a2 = head.gdn
    logits = prelu(prelu(v_inst @ l1.weight.T + l1.bias, a1.weight) @ l2.weight.T + l2.bias, a2.weight)
    p = logits.softmax(dim=1)
    expected = v_inst.clone()
    for k in range(3):
        v_k = prelu(x @ head.group_fc.weight[k].T + head.group_fc.bias[k], head.group_act.weight[k])
        expected += p[:, k : k + 1] * v_k
    assert torch.allclose(out["features"], expected, atol=1e-5)
    assert torch.allclose(out["group_logits"], logits, atol=1e-5)
    # self-distributed labels: argmax of (p - batch mean)/G + 1/G
    assert torch.equal(out["group_labels"], ((p - p.mean(0)) / 3 + 1 / 3).argmax(1))
    loss = group_loss(out["group_logits"], out["group_labels"])
    loss.backward()
    assert torch.isfinite(loss) and head.gdn[0].weight.grad.abs().sum() > 0


def test_low_rank_groups_equal_their_factorised_formula_and_are_smaller():
    torch.manual_seed(0)
    g = GroupLinear(8, 6, groups=4, rank=2)
    x = torch.randn(3, 8)
    expected = torch.stack([x @ g.down[k].T @ g.up[k].T + g.bias[k] for k in range(4)], dim=1)
    assert torch.allclose(g(x), expected, atol=1e-5)
    full = sum(p.numel() for p in MultiHeadAttention(2048, 2048, 32, 256).parameters())
    light = sum(p.numel() for p in MultiHeadAttention(2048, 2048, 32, 256, rank=64).parameters())
    # 33 FCs 2048x2048 (+bias) + GDN + PReLUs, counted independently
    assert full == 33 * (2048 * 2048 + 2048) + (2048 * 256 + 256) + (256 * 32 + 32) + 1 + 32 + 1 + 1
    assert light < full / 10


def test_bnneck_bias_frozen_weight_one():
    neck = BNNeck(8)
    assert not neck.bn.bias.requires_grad and torch.all(neck.bn.weight == 1)
    x = torch.randn(16, 8) * 3 + 2
    y = neck.train()(x)
    assert torch.allclose(y, F.batch_norm(x, None, None, training=True), atol=1e-5)
    assert all(p is not neck.bn.bias for p in neck.parameters() if p.requires_grad)
