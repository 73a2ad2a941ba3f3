"""EEG → WebDataset shards and back: sources, MNE preprocessing, cached features, shards, loader.

Submodules are imported lazily by their users (MNE, torch and open_clip are heavy); only the error
type lives here so that every layer can raise and catch it cheaply.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: the message names the file, shard, subject, key or channel that is wrong."""


__all__ = ["DataError"]
