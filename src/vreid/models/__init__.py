"""ReID models: backbones, pooling, the multi-head, BNNeck and classifiers, and the config builder."""

from vreid.models.backbones import create_backbone
from vreid.models.build import ReIDNet, build_model

__all__ = ["ReIDNet", "build_model", "create_backbone"]
