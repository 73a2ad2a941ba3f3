"""The field's EEG → image metrics: zero-shot retrieval and reconstruction quality.

Definitions and the protocols they follow: docs/metrics.md.
"""

from sgdm_dist.metrics.backbones import SPECS, Backbone, load_backbone, load_backbones
from sgdm_dist.metrics.identification import (
    correlation_distance,
    two_way_identification,
    two_way_identification_per_image,
)
from sgdm_dist.metrics.reconstruction import pixcorr, pixcorr_per_image, ssim, ssim_per_image
from sgdm_dist.metrics.retrieval import (
    average_by_index,
    cosine_similarity_matrix,
    mean_over_groups,
    retrieval_accuracy,
)
from sgdm_dist.metrics.suite import (
    HIGHER_IS_BETTER,
    METRIC_ORDER,
    random_init_metrics,
    reconstruction_metrics,
    to_mlflow_metrics,
)

__all__ = [
    "HIGHER_IS_BETTER",
    "METRIC_ORDER",
    "SPECS",
    "Backbone",
    "average_by_index",
    "correlation_distance",
    "cosine_similarity_matrix",
    "load_backbone",
    "load_backbones",
    "mean_over_groups",
    "pixcorr",
    "pixcorr_per_image",
    "random_init_metrics",
    "reconstruction_metrics",
    "retrieval_accuracy",
    "ssim",
    "ssim_per_image",
    "to_mlflow_metrics",
    "two_way_identification",
    "two_way_identification_per_image",
]
