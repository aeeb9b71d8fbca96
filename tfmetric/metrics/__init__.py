"""Evaluation of embeddings: retrieval, verification, identification, re-identification,
few-shot, clustering."""

from tfmetric.metrics.clustering import clustering_scores
from tfmetric.metrics.few_shot import n_way_k_shot_accuracy
from tfmetric.metrics.identification import cmc_curve
from tfmetric.metrics.pairs_protocol import (
    Pairs,
    evaluate_pairs_file,
    k_fold_verification,
    read_pairs_file,
)
from tfmetric.metrics.reidentification import reid_scores
from tfmetric.metrics.retrieval import (
    evaluate_retrieval,
    map_at_r,
    mean_average_precision,
    mean_reciprocal_rank,
    precision_at_1,
    r_precision,
    recall_at_k,
)
from tfmetric.metrics.verification import (
    best_threshold,
    equal_error_rate,
    evaluate_verification,
    paired_distances,
    roc_auc,
    tar_at_far,
)

__all__ = [
    "Pairs",
    "best_threshold",
    "clustering_scores",
    "cmc_curve",
    "equal_error_rate",
    "evaluate_retrieval",
    "evaluate_pairs_file",
    "evaluate_verification",
    "k_fold_verification",
    "map_at_r",
    "mean_average_precision",
    "mean_reciprocal_rank",
    "n_way_k_shot_accuracy",
    "paired_distances",
    "precision_at_1",
    "r_precision",
    "read_pairs_file",
    "recall_at_k",
    "reid_scores",
    "roc_auc",
    "tar_at_far",
]
