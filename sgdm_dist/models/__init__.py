"""The SGDM model: EEG encoder, semantic (EEG→CLIP) head, multi-scale conditioning, conditional latent UNet."""

from sgdm_dist.models.build import build_model
from sgdm_dist.models.conditioning import Condition, MultiScaleConditioning
from sgdm_dist.models.encoder import EEGEncoder, EncoderOutput
from sgdm_dist.models.semantic import SemanticHead, contrastive_loss
from sgdm_dist.models.sgdm import SGDM

__all__ = [
    "SGDM",
    "Condition",
    "EEGEncoder",
    "EncoderOutput",
    "MultiScaleConditioning",
    "SemanticHead",
    "build_model",
    "contrastive_loss",
]
