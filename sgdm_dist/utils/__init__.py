"""Plumbing every stage shares; nothing here knows about EEG, models or stages.

``atomic`` (write-then-rename files and folders, leftovers of a kill cleaned), ``checksums`` (sha256
lists shared by checkpoints, registry and pyfunc), ``log`` (one rank-aware log format),
``threads`` (each process's share of the cores), ``tracking`` (MLflow through a background queue),
``collective`` (all-gather with gradient), ``grids`` (labelled PNG image grids).
"""
