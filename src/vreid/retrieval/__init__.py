"""Retrieval: pure functions on arrays from features to distances, rankings and metrics (no config objects)."""

from vreid.retrieval.camera_norm import camera_normalize, camera_normalize_pair
from vreid.retrieval.distance import l2_normalize, pairwise_distance
from vreid.retrieval.ensemble import ensemble_distances, ensemble_features, normalize_distance
from vreid.retrieval.metrics import evaluate, evaluate_aic
from vreid.retrieval.query_expansion import average_query_expansion, database_augmentation
from vreid.retrieval.rerank import k_reciprocal_rerank
from vreid.retrieval.submission import check_track2, write_track2
from vreid.retrieval.tracks import average_track_features, track_distance, track_rerank

__all__ = [
    "average_query_expansion",
    "average_track_features",
    "camera_normalize",
    "camera_normalize_pair",
    "check_track2",
    "database_augmentation",
    "ensemble_distances",
    "ensemble_features",
    "evaluate",
    "evaluate_aic",
    "k_reciprocal_rerank",
    "l2_normalize",
    "normalize_distance",
    "pairwise_distance",
    "track_distance",
    "track_rerank",
    "write_track2",
]
