"""The whole ReID network, and the one place that maps the config onto its parts.

backbone -> (MixStyle after chosen stages, training only) -> pooling -> [multi-head] -> BNNeck ->
classifier. Every part takes explicit arguments and can be built without a config;
:func:`build_model` is the only function that reads ``cfg.MODEL``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from vreid.config import check_choice, get_defaults
from vreid.errors import ConfigError
from vreid.models.backbones import create_backbone, expected_weights_file
from vreid.models.classifiers import CLASSIFIERS, LinearClassifier
from vreid.models.heads import BNNeck, MultiHeadAttention
from vreid.models.layers import MIX_DOMAIN, MIX_RANDOM, POOLINGS, MixStyle, make_pooling

log = logging.getLogger(__name__)

_WARNED: set[str] = set()
NECK_FEATS = ("before", "after")
HEADS = ("none", "multihead")


def check_model_config(cfg) -> None:
    """The MODEL keys with a fixed set of choices, each error naming its key; a warning for a key the chosen parts
    ignore (``GEM.*`` without GeM pooling, ``CLASSIFIER.SCALE/MARGIN`` with the linear classifier), since an option
    that silently does nothing is how a config stops saying what was run."""
    m = cfg.MODEL
    check_choice(cfg, "MODEL.POOLING", POOLINGS)
    check_choice(cfg, "MODEL.MIXSTYLE.MIX", (MIX_RANDOM, MIX_DOMAIN))
    check_choice(cfg, "MODEL.HEAD.NAME", HEADS)
    check_choice(cfg, "MODEL.NECK_FEAT", NECK_FEATS)
    check_choice(cfg, "MODEL.CLASSIFIER.NAME", CLASSIFIERS)
    if m.LAST_STRIDE not in (1, 2):
        raise ConfigError(f"MODEL.LAST_STRIDE must be 1 or 2, got {m.LAST_STRIDE}")
    defaults = get_defaults().MODEL
    unused = []
    if m.POOLING != "gem":
        unused += [f"MODEL.GEM.{k}" for k in ("P", "LEARNABLE") if m.GEM[k] != defaults.GEM[k]]
    if m.CLASSIFIER.NAME == "linear":
        unused += [f"MODEL.CLASSIFIER.{k}" for k in ("SCALE", "MARGIN") if m.CLASSIFIER[k] != defaults.CLASSIFIER[k]]
    for key in unused:
        message = (f"{key} is set but has no effect with MODEL.POOLING {m.POOLING} and MODEL.CLASSIFIER.NAME "
                   f"{m.CLASSIFIER.NAME}")
        if message not in _WARNED:  # the builders and the up-front checks both run this: say it once
            _WARNED.add(message)
            log.warning("%s", message)


class ReIDNet(nn.Module):
    """Images -> embedding (eval) or everything the losses need (train).

    Eval: returns the embedding, after the BNNeck (``neck_feat="after"``, the paper) or before it.
    Train: returns a dict with ``logits``, ``features`` (before the BNNeck), ``bn_features`` (after
    it) and, with the multi-head, ``group_logits``/``group_labels`` for the optional group loss.
    """

    def __init__(
        self,
        backbone: nn.Module,
        pool: nn.Module,
        neck: BNNeck,
        classifier: nn.Module | None,
        head: MultiHeadAttention | None = None,
        mixstyle: MixStyle | None = None,
        mixstyle_after: Sequence[int] = (1, 2),
        neck_feat: str = "after",
    ):
        super().__init__()
        if neck_feat not in NECK_FEATS:
            raise ValueError(f"neck_feat must be one of {NECK_FEATS}, got {neck_feat!r}")
        self.backbone, self.pool, self.head, self.neck, self.classifier = backbone, pool, head, neck, classifier
        self.neck_feat = neck_feat
        self.mixstyle = mixstyle
        self.backbone_frozen = False
        self._domains: torch.Tensor | None = None
        if mixstyle is not None:
            stages = dict(backbone.named_modules())
            names = backbone.stage_names
            for k in mixstyle_after:
                if not 1 <= k < len(names):
                    raise ValueError(f"MixStyle position {k}: the backbone has stages 1..{len(names)} and "
                                     f"MixStyle goes after one of 1..{len(names) - 1}")
                stages[names[k - 1]].register_forward_hook(self._mix_hook)

    def _mix_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.mixstyle(output, self._domains)

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Train only what follows the backbone: no backbone gradients, BN statistics and MixStyle frozen.

        The official code freezes the weights but keeps the backbone's BatchNorm statistics updating
        and MixStyle running (docs/method.md, Training); here the backbone is fully in eval mode while frozen.
        """
        self.backbone_frozen = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> ReIDNet:
        super().train(mode)
        if mode and self.backbone_frozen:
            self.backbone.eval()
            if self.mixstyle is not None:
                self.mixstyle.eval()
        return self

    @property
    def embedding_dim(self) -> int:
        return self.neck.bn.num_features

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                domains: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        self._domains = domains
        try:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
                fmap = self.backbone(images)
        finally:
            self._domains = None
        features = self.pool(fmap).flatten(1)
        out: dict[str, torch.Tensor] = {}
        if self.head is not None:
            out = self.head(features)
            features = out["features"]
        bn_features = self.neck(features)
        if not self.training:
            return bn_features if self.neck_feat == "after" else features
        out.update(features=features, bn_features=bn_features)
        if self.classifier is not None:
            out["logits"] = self.classifier(bn_features, labels)
        return out


def pretrain_path(cfg) -> str | None:
    """The ImageNet weights file training starts from, or None when ``MODEL.PRETRAIN`` is False.

    A backbone trained from random weights by accident reproduces nothing and says nothing, so an
    empty ``MODEL.PRETRAIN_PATH`` is an error unless ``MODEL.PRETRAIN False`` opts out on purpose.
    """
    m = cfg.MODEL
    if not m.PRETRAIN:
        if m.PRETRAIN_PATH:
            raise ConfigError(f"MODEL.PRETRAIN is False but MODEL.PRETRAIN_PATH is {m.PRETRAIN_PATH!r}: "
                              "clear one of them")
        return None
    if not m.PRETRAIN_PATH:
        raise ConfigError(f"MODEL.PRETRAIN_PATH is empty: backbone {m.BACKBONE} starts from ImageNet weights "
                          f"({expected_weights_file(m.BACKBONE)}); give that file, or set MODEL.PRETRAIN False to "
                          "train from random weights")
    return m.PRETRAIN_PATH


def build_model(cfg, num_classes: int, pretrained: bool = True) -> ReIDNet:
    """The network described by ``cfg.MODEL`` with ``num_classes`` training classes (0: no classifier).

    ``pretrained=True`` loads ``MODEL.PRETRAIN_PATH`` when one is given and ``MODEL.PRETRAIN`` is on (the
    trainer checks first, with :func:`pretrain_path`, that a run meant to start from ImageNet has the file);
    ``pretrained=False`` skips it: for loading trained weights, which must not depend on the ImageNet file
    still being where training found it.
    """
    check_model_config(cfg)
    m = cfg.MODEL
    path = m.PRETRAIN_PATH if pretrained and m.PRETRAIN else ""
    backbone = create_backbone(m.BACKBONE, last_stride=m.LAST_STRIDE, pretrained_path=path or None)
    if m.IBN_STAGES:
        if not hasattr(backbone, "use_instance_norm"):
            raise ConfigError(f"MODEL.IBN_STAGES {m.IBN_STAGES}: backbone {m.BACKBONE} has no IBN option "
                              "(torchvision trunks made of blocks have it; the *_ibn_a backbones are IBN already)")
        try:
            backbone.use_instance_norm(m.IBN_STAGES)
        except ValueError as exc:
            raise ConfigError(f"MODEL.IBN_STAGES: {exc}") from exc
    dim = backbone.out_channels
    pool = make_pooling(m.POOLING, p=m.GEM.P, learnable=m.GEM.LEARNABLE)
    head = None
    if m.HEAD.NAME == "multihead":
        out_dim = m.HEAD.DIM or dim
        head = MultiHeadAttention(dim, out_dim, m.HEAD.GROUPS, m.HEAD.GDN_HIDDEN, m.HEAD.RANK)
        dim = out_dim
    classifier = None
    if num_classes > 0:
        c = m.CLASSIFIER
        if CLASSIFIERS[c.NAME] is LinearClassifier:
            classifier = LinearClassifier(dim, num_classes)
        else:
            classifier = CLASSIFIERS[c.NAME](dim, num_classes, scale=c.SCALE, margin=c.MARGIN)
    mixstyle = None
    if m.MIXSTYLE.ENABLED:
        mixstyle = MixStyle(p=m.MIXSTYLE.P, alpha=m.MIXSTYLE.ALPHA, mix=m.MIXSTYLE.MIX)
    return ReIDNet(backbone, pool, BNNeck(dim), classifier, head, mixstyle, m.MIXSTYLE.AFTER, m.NECK_FEAT)
