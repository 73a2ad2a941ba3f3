"""``python -m sgdm_dist.cli``: what ``accelerate launch`` runs in every process."""

from sgdm_dist.cli import main

main()
