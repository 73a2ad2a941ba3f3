"""EEG → images on disk: find the model, its VAE and the EEG, sample with a seed, write PNGs + a grid.

``model`` finds and loads a model folder (or registry URI) and its VAE, ``inputs`` reads EEG from
shards or ``.npy`` and checks it against the model, ``sampling`` turns EEG into images, ``run`` is
``sgdm reconstruct`` (:func:`reconstruct_to_dir`). ``sgdm evaluate`` reuses the pieces.
"""

from sgdm_dist.reconstruct.inputs import SplitEEG, read_npy_eeg, read_split
from sgdm_dist.reconstruct.model import (
    ReconstructError,
    TrainingData,
    find_vae,
    load_model,
    model_folder,
    model_subjects,
    training_data,
)
from sgdm_dist.reconstruct.run import ReconstructResult, reconstruct_to_dir
from sgdm_dist.reconstruct.sampling import SamplingOptions, sample_images, save_png

__all__ = [
    "ReconstructError",
    "ReconstructResult",
    "SamplingOptions",
    "SplitEEG",
    "TrainingData",
    "find_vae",
    "load_model",
    "model_folder",
    "model_subjects",
    "read_npy_eeg",
    "read_split",
    "reconstruct_to_dir",
    "sample_images",
    "save_png",
    "training_data",
]
