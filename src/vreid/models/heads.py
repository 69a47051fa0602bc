"""Heads after pooling: the GroupFace-style multi-head with attention, and the BNNeck (docs/method.md)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GroupLinear(nn.Module):
    """G independent linear maps ``in -> out`` applied to the same input, as one batched matmul.

    ``rank=0``: full (G, out, in) weights, the paper's 32 FCs of 2048x2048 (~134M parameters).
    ``rank=r``: each group's map factorised as out x r times r x in (G*r*(in+out) parameters),
    the lighter variant; the output shape is the same.
    """

    def __init__(self, in_dim: int, out_dim: int, groups: int, rank: int = 0):
        super().__init__()
        self.groups, self.rank = groups, rank
        bound = 1.0 / math.sqrt(in_dim)
        if rank:
            self.down = nn.Parameter(torch.empty(groups, rank, in_dim).uniform_(-bound, bound))
            up_bound = 1.0 / math.sqrt(rank)
            self.up = nn.Parameter(torch.empty(groups, out_dim, rank).uniform_(-up_bound, up_bound))
        else:
            self.weight = nn.Parameter(torch.empty(groups, out_dim, in_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in) -> (N, G, out)."""
        n = x.shape[0]
        if self.rank:
            hidden = F.linear(x, self.down.flatten(0, 1)).view(n, self.groups, self.rank)
            return torch.einsum("gor,ngr->ngo", self.up, hidden) + self.bias
        # one (N, in) x (in, G*out) GEMM instead of G small ones
        return F.linear(x, self.weight.flatten(0, 1)).view(n, self.groups, -1) + self.bias


class MultiHeadAttention(nn.Module):
    """GroupFace-style multi-head with attention (paper 3.3.1, Fig. 3).

    v_inst = PReLU(W_inst x); p = softmax(GDN(v_inst)) over G groups, where the group decision
    network GDN is FC(d->hidden)-PReLU-FC(hidden->G)-PReLU; v_k = PReLU_k(W_k x) for each group;
    output f = v_inst + sum_k p_k v_k. Unlike the official code there are no dead BatchNorms, and
    G, widths and the group-projection rank are arguments. The GroupFace self-distributed group
    labels argmax_k[(p_k - mean_batch p_k)/G + 1/G] are returned for the optional group loss
    (CE between the GDN logits and those labels), which the paper's runs leave off.
    """

    def __init__(self, in_dim: int = 2048, out_dim: int = 2048, groups: int = 32, gdn_hidden: int = 256,
                 rank: int = 0):
        super().__init__()
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        self.groups = groups
        self.instance = nn.Sequential(nn.Linear(in_dim, out_dim), nn.PReLU())
        self.group_fc = GroupLinear(in_dim, out_dim, groups, rank)
        self.group_act = nn.PReLU(groups)  # one slope per group FC, as G separate FC-PReLU blocks
        self.gdn = nn.Sequential(nn.Linear(out_dim, gdn_hidden), nn.PReLU(), nn.Linear(gdn_hidden, groups),
                                 nn.PReLU())
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        v_inst = self.instance(x)
        group_logits = self.gdn(v_inst)
        p = group_logits.softmax(dim=1)
        v_groups = self.group_act(self.group_fc(x))  # (N, G, out); PReLU(G) acts on dim 1 = groups
        features = v_inst + torch.einsum("ng,ngo->no", p, v_groups)
        with torch.no_grad():
            pd = p.detach()
            group_labels = ((pd - pd.mean(dim=0, keepdim=True)) / self.groups + 1.0 / self.groups).argmax(dim=1)
        return {"features": features, "group_logits": group_logits, "group_probs": p, "group_labels": group_labels}


class BNNeck(nn.Module):
    """BatchNorm1d between the embedding and the classifier, bias frozen at 0 (BoT).

    The weight starts at 1 as in BoT; the official code draws it from N(0, 0.001), which makes the
    post-BN feature ~0 at the start (docs/method.md, Pooling, multi-head and BNNeck).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)
