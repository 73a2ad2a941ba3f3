"""Training: the loop (``loop.train``) and the pieces it applies in order.

``distributed`` builds the Accelerator (DDP | FSDP | DeepSpeed ZeRO-2/3), ``scaleout`` applies the
opt-in performance settings, ``stages`` builds the engine of each stage (alignment, diffusion),
``step`` runs one micro-batch, ``guard`` agrees stop/non-finite flags across ranks, ``ema`` keeps the
sharded EMA, ``checkpoint`` saves and resumes, ``validation`` and ``selection`` score the validation
split and pick the best weights, ``reporting`` logs losses and throughput.

Public API: :func:`train`.
"""

from sgdm_dist.training.loop import train

__all__ = ["train"]
