"""sgdm-dist: distributed training of Structure-Guided Diffusion Models (EEG → image)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sgdm-dist")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
