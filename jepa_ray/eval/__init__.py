"""Evaluation of frozen representations: the grid of linear heads, weighted kNN, and the final
metrics of a trial (docs/design.md, "final metrics")."""

from jepa_ray.eval.evaluate import evaluate, evaluate_encoder, extract_features, target_l0_density
from jepa_ray.eval.probe import (
    LinearHeadGrid,
    cosine_factor,
    fit_linear_grid,
    knn_accuracy,
    knn_predict,
    stratified_split,
)

__all__ = [
    "LinearHeadGrid",
    "cosine_factor",
    "evaluate",
    "evaluate_encoder",
    "extract_features",
    "fit_linear_grid",
    "knn_accuracy",
    "knn_predict",
    "stratified_split",
    "target_l0_density",
]
