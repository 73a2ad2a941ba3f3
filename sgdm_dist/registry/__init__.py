"""The MLflow model registry: register a trained SGDM, move aliases, pull a verified copy.

A registered version is an MLflow pyfunc "model from code" (:mod:`sgdm_dist.registry.pyfunc_model`)
whose single artifact folder has the layout of ``{output_dir}/model/``::

    model.safetensors  config.json  experiment.yaml  data_manifest.json   (from training)
    unet/  scheduler/    the UNet and noise scheduler in diffusers' layout (from training)
    vae/                 the AutoencoderKL the shards were made with (decodes without the shards)
    checksums.json       sha256 of every file above

The sha256 of ``checksums.json`` is recorded on the model version (tag ``sgdm.files_sha256``) at
registration, so a pull verifies the downloaded bytes against the registry database, not against
a file that travelled with them. Pulled folders also get ``pulled.json`` (what was pulled, from
where), which the checksums do not cover.

Tracking URIs are passed in by the caller (config value, else $MLFLOW_TRACKING_URI read by the CLI,
else ``sqlite:///{output_dir}/mlflow.db``); credentials only ever come from MLflow's own
environment variables and are stripped from every URI this module prints.
"""

from __future__ import annotations

from sgdm_dist.registry.core import (
    ARTIFACT_KEY,
    CHECKSUMS,
    LOGGED_MODEL_NAME,
    METRIC_PREFIX,
    MODEL_FILES,
    PULLED,
    PYFUNC_FILE,
    TAG_COMMIT,
    TAG_DIRTY,
    TAG_FILES,
    TAG_MANIFEST,
    TAG_SOURCE,
    TAG_TRAINING_RUN,
    TAG_VERSION,
    UNCHECKED,
    VAE_DIR,
    ChecksumError,
    ModelRef,
    RegistryError,
    check_model_folder,
    folder_checksums,
    is_model_uri,
    load_vae_for_model,
    parse_model_uri,
    redact,
    sha256_file,
    stage_model_folder,
    verify_folder,
    write_checksums,
)
from sgdm_dist.registry.lineage import (
    RUN_MODEL_ARTIFACT,
    TAG_EVALUATIONS,
    TAG_MODEL_SHA,
    TAG_RUN_FILES,
    TAG_STAGE,
    download_run_model,
    evaluation_runs,
    find_training_run,
    link_evaluation,
    upload_model,
    uploaded_digest,
)
from sgdm_dist.registry.pull import (
    default_cache_dir,
    pull_model,
    resolve_model,
)
from sgdm_dist.registry.register import (
    Publication,
    check_alias_or_fail,
    register_model,
    register_run,
    set_aliases,
)
from sgdm_dist.registry.server import (
    RegisteredVersion,
    check_reachable,
    code_version,
    find_version,
)

__all__ = [
    "ARTIFACT_KEY",
    "CHECKSUMS",
    "LOGGED_MODEL_NAME",
    "METRIC_PREFIX",
    "MODEL_FILES",
    "PULLED",
    "PYFUNC_FILE",
    "RUN_MODEL_ARTIFACT",
    "TAG_COMMIT",
    "TAG_DIRTY",
    "TAG_EVALUATIONS",
    "TAG_FILES",
    "TAG_MANIFEST",
    "TAG_MODEL_SHA",
    "TAG_RUN_FILES",
    "TAG_SOURCE",
    "TAG_STAGE",
    "TAG_TRAINING_RUN",
    "TAG_VERSION",
    "UNCHECKED",
    "VAE_DIR",
    "ChecksumError",
    "ModelRef",
    "Publication",
    "RegisteredVersion",
    "RegistryError",
    "check_alias_or_fail",
    "check_model_folder",
    "check_reachable",
    "code_version",
    "default_cache_dir",
    "download_run_model",
    "evaluation_runs",
    "find_training_run",
    "find_version",
    "folder_checksums",
    "is_model_uri",
    "link_evaluation",
    "load_vae_for_model",
    "parse_model_uri",
    "pull_model",
    "redact",
    "register_model",
    "register_run",
    "resolve_model",
    "set_aliases",
    "sha256_file",
    "stage_model_folder",
    "upload_model",
    "uploaded_digest",
    "verify_folder",
    "write_checksums",
]
