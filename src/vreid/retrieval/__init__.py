"""Retrieval: pure functions on arrays from features to distances, rankings and metrics (no config objects)."""

from vreid.retrieval.distance import l2_normalize, pairwise_distance
from vreid.retrieval.metrics import evaluate, evaluate_aic

__all__ = ["evaluate", "evaluate_aic", "l2_normalize", "pairwise_distance"]
