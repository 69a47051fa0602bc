"""Training losses: label-smoothed CE (ID loss), triplet / SupCon / circle (metric losses), and the MALW weights."""

from vreid.losses.circle import PairwiseCircleLoss
from vreid.losses.compose import ReIDCriterion, build_criterion
from vreid.losses.cross_entropy import CrossEntropyLabelSmooth
from vreid.losses.malw import MomentumAdaptiveLossWeight
from vreid.losses.supcon import SupConLoss
from vreid.losses.triplet import TripletLoss

__all__ = [
    "CrossEntropyLabelSmooth",
    "MomentumAdaptiveLossWeight",
    "PairwiseCircleLoss",
    "ReIDCriterion",
    "SupConLoss",
    "TripletLoss",
    "build_criterion",
]
