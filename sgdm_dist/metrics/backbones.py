"""Feature backbones of the high-level reconstruction metrics, as the MindEye/ATM evaluation uses them.

| backbone  | model (weights)                         | feature node(s)             | input          |
|-----------|-----------------------------------------|-----------------------------|----------------|
| alexnet   | torchvision AlexNet (IMAGENET1K_V1)     | features.4, features.11     | 256 px, ImageNet norm |
| inception | torchvision Inception-v3 (IMAGENET1K_V1)| avgpool                     | 342 px, ImageNet norm |
| clip      | open_clip ``clip_model`` (OpenAI ViT-L/14) | encode_image             | 224 px, CLIP norm |
| effnet    | torchvision EfficientNet-B1 (IMAGENET1K_V2) | avgpool                 | 255 px, ImageNet norm |
| swav      | SwAV ResNet-50 (swav_800ep_pretrain)    | avgpool                     | 224 px, ImageNet norm |

Weights are read from local files only (nothing is downloaded): ``weights_dir/<published file name>``
(the name torch hub caches them under, e.g. ``alexnet-owt-7be5be79.pth``), also looked up in
``weights_dir/checkpoints`` and ``weights_dir/hub/checkpoints`` so a torch hub cache folder works as is.
Missing weights → a seeded random initialisation with a loud warning, flagged ``random_init`` so the
numbers are never mistaken for published ones (or an error when random backbones are not allowed).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn
from torchvision import models as tvm
from torchvision.models.feature_extraction import create_feature_extractor

from sgdm_dist.config.evaluate import EvaluateConfig
from sgdm_dist.metrics.images import resize_square

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SWAV_FILE = "swav_800ep_pretrain.pth.tar"
# Random initialisations are seeded so two evaluations with missing weights agree with each other.
RANDOM_INIT_SEED = 0
# Image sets whose features a backbone keeps: an evaluation scores the model, its floor and its
# ceiling against the same stimuli, and every subject's ceiling is the same images.
FEATURE_MEMO = 2


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone measures: metric name → feature node, how it is scored, its input transform."""

    name: str
    metrics: dict[str, str]
    kind: Literal["two_way", "distance"]
    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


SPECS: dict[str, BackboneSpec] = {
    "alexnet": BackboneSpec(
        "alexnet", {"AlexNet(2)": "features.4", "AlexNet(5)": "features.11"}, "two_way", 256
    ),
    "inception": BackboneSpec("inception", {"Inception": "avgpool"}, "two_way", 342),
    "clip": BackboneSpec("clip", {"CLIP": "image_embeds"}, "two_way", 224, CLIP_MEAN, CLIP_STD),
    "effnet": BackboneSpec("effnet", {"EffNet-B": "avgpool"}, "distance", 255),
    "swav": BackboneSpec("swav", {"SwAV": "avgpool"}, "distance", 224),
}


@dataclass
class Backbone:
    """A frozen feature extractor: ``model(x [B, 3, S, S] normalised)`` → {node: features}."""

    spec: BackboneSpec
    model: nn.Module
    random_init: bool
    source: str
    size: int  # input side in px: spec.size, or what a custom CLIP architecture was built for

    _memo: OrderedDict[tuple, dict[str, Tensor]] = field(
        default_factory=OrderedDict, init=False, repr=False, compare=False
    )

    def features(self, images: Tensor, batch_size: int = 16) -> dict[str, Tensor]:
        """images [N, 3, H, W] in [0, 1] → {metric name: [N, F] float32 features on the CPU}.

        The last ``FEATURE_MEMO`` image sets' features are kept, keyed by the images' bytes: an
        evaluation asks for its stimuli's features once per score (model, floor, ceiling) and
        subject, and they are computed once."""
        key = _content_key(images, batch_size)
        if key in self._memo:
            self._memo.move_to_end(key)
        else:
            self._memo[key] = self._compute(images, batch_size)
            while len(self._memo) > FEATURE_MEMO:
                self._memo.popitem(last=False)
        return dict(self._memo[key])  # a caller's dict: changing it leaves the memo as it was

    @torch.inference_mode()
    def _compute(self, images: Tensor, batch_size: int) -> dict[str, Tensor]:
        device = next(self.model.parameters()).device
        chunks: dict[str, list[Tensor]] = {m: [] for m in self.spec.metrics}
        for start in range(0, images.shape[0], batch_size):
            x = resize_square(images[start : start + batch_size].to(device), self.size)
            x = TF.normalize(x, list(self.spec.mean), list(self.spec.std))
            out = self.model(x)
            for metric, node in self.spec.metrics.items():
                chunks[metric].append(out[node].float().flatten(1).cpu())
        return {m: torch.cat(c) for m, c in chunks.items()}


def _content_key(images: Tensor, batch_size: int) -> tuple:
    """What identifies an image set for the feature memo: dtype, shape, batch size and the bytes."""
    data = images.detach().cpu().contiguous()
    digest = hashlib.blake2b(data.view(torch.uint8).numpy(), digest_size=16).hexdigest()
    return str(data.dtype), tuple(data.shape), batch_size, digest


class _ClipImageEncoder(nn.Module):
    """open_clip model → {"image_embeds": [B, D]} (unnormalised, as ``encode_image`` returns)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"image_embeds": self.clip.encode_image(x)}


def load_backbones(cfg: EvaluateConfig, device: str | torch.device = "cpu") -> dict[str, Backbone]:
    """Every backbone named in ``cfg.backbones``, in eval mode on ``device``."""
    return {
        name: load_backbone(
            name,
            weights_dir=cfg.weights_dir,
            clip_model=cfg.clip_model,
            clip_weights=cfg.clip_weights,
            allow_random=cfg.allow_random_backbones,
            device=device,
        )
        for name in cfg.backbones
    }


def load_backbone(
    name: str,
    weights_dir: str | Path | None = None,
    clip_model: str = "ViT-L-14",
    clip_weights: str | Path | None = None,
    allow_random: bool = True,
    device: str | torch.device = "cpu",
) -> Backbone:
    """Build one backbone with local weights when they exist, else seeded random weights (warned)."""
    if name not in SPECS:
        raise ValueError(f"unknown metric backbone {name!r}; choose from {sorted(SPECS)}")
    spec = SPECS[name]
    size = spec.size
    if name == "clip":
        model, weights = _build_clip(clip_model, _resolve(clip_weights, weights_dir))
        size = _clip_input_size(model)
    else:
        model, weights = _build_torchvision(name, weights_dir)
    if weights is None:
        _no_weights(name, spec, weights_dir, allow_random)
    model = model.eval().requires_grad_(False).to(device)
    source = str(weights) if weights is not None else f"random init (seed {RANDOM_INIT_SEED})"
    log.info("metric backbone %s: %s", name, source)
    return Backbone(spec=spec, model=model, random_init=weights is None, source=source, size=size)


def weight_candidates(name: str, weights_dir: str | Path | None) -> list[Path]:
    """Where the weights of torchvision backbone ``name`` are looked for, in order."""
    if weights_dir is None:
        return []
    root = Path(weights_dir).expanduser()
    filename = _weight_file_name(name)
    return [
        root / filename,
        root / "checkpoints" / filename,
        root / "hub" / "checkpoints" / filename,
    ]


def _weight_file_name(name: str) -> str:
    if name == "swav":
        return SWAV_FILE
    return Path(_TORCHVISION[name][1].url).name


# name → (builder, published weights, builder kwargs that the published weights need)
_TORCHVISION: dict[str, tuple[Callable[..., nn.Module], tvm.WeightsEnum, dict]] = {
    "alexnet": (tvm.alexnet, tvm.AlexNet_Weights.IMAGENET1K_V1, {}),
    # transform_input=True is what torchvision sets with these weights: the network was trained with
    # (0.5, 0.5) normalisation and re-normalises ImageNet-normalised input itself.
    "inception": (
        tvm.inception_v3,
        tvm.Inception_V3_Weights.IMAGENET1K_V1,
        {"aux_logits": True, "transform_input": True},
    ),
    "effnet": (tvm.efficientnet_b1, tvm.EfficientNet_B1_Weights.IMAGENET1K_V2, {}),
    "swav": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1, {}),  # architecture only
}


def _build_torchvision(name: str, weights_dir: str | Path | None) -> tuple[nn.Module, Path | None]:
    builder, _, kwargs = _TORCHVISION[name]
    path = next((p for p in weight_candidates(name, weights_dir) if p.is_file()), None)
    if name == "inception":
        # Explicit, to skip torchvision's init-change warning and the init work when loading.
        kwargs = {**kwargs, "init_weights": path is None}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        net = builder(weights=None, **kwargs)
    if path is not None:
        state = _load_state_dict(path)
        if name == "swav":
            _load_swav(net, state, path)
        else:
            try:
                net.load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(
                    f"weights file {path} does not fit torchvision {name}: {err}"
                ) from err
    nodes = list(SPECS[name].metrics.values())
    with warnings.catch_warnings():
        # Inception's aux branch exists only in train mode; we only ever run eval, so torchvision's
        # note about the two traced graphs differing does not apply.
        warnings.filterwarnings("ignore", message="NOTE: The nodes obtained by tracing")
        extractor = create_feature_extractor(net.eval(), return_nodes=nodes)
    return extractor, path


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"cannot read backbone weights {path}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"backbone weights {path} hold a {type(state).__name__}, not a state dict")
    return state


def _load_swav(net: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """SwAV checkpoints come from DDP ("module." prefix) and carry projection/prototype heads."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = net.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    # SwAV trains no classifier: fc stays random, and avgpool (the tapped node) sits before it.
    missing = sorted(k for k in own if k not in state and not k.startswith("fc."))
    if missing:
        raise ValueError(
            f"SwAV weights {path} lack ResNet-50 keys: {missing[:5]} (+{len(missing) - 5 if len(missing) > 5 else 0} more)"
        )
    net.load_state_dict(state, strict=False)


def _resolve(path: str | Path | None, weights_dir: str | Path | None) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_absolute() and weights_dir is not None:
        p = Path(weights_dir).expanduser() / p
    if not p.is_file():
        raise FileNotFoundError(f"evaluate.clip_weights: no checkpoint file at {p}")
    return p


def _build_clip(model_name: str, weights: Path | None) -> tuple[nn.Module, Path | None]:
    import open_clip  # heavy import, only when the CLIP metric is asked for

    if model_name not in open_clip.list_models():
        raise ValueError(
            f"evaluate.clip_model: open_clip has no model config named {model_name!r} "
            "(register custom configs with open_clip.add_model_config before evaluating)"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        clip = open_clip.create_model(
            model_name, pretrained=str(weights) if weights else None, pretrained_text=False
        )
    return _ClipImageEncoder(clip), weights


def _clip_input_size(encoder: _ClipImageEncoder) -> int:
    """The protocol's 224 px is ViT-L/14's input; a custom (e.g. tiny test) CLIP gets its own."""
    size = getattr(encoder.clip.visual, "image_size", SPECS["clip"].size)
    size = size[0] if isinstance(size, tuple | list) else size
    if size != SPECS["clip"].size:
        log.info("CLIP metric: %s px input (the model's), not the protocol's 224 px", size)
    return int(size)


def _no_weights(
    name: str,
    spec: BackboneSpec,
    weights_dir: str | Path | None,
    allow_random: bool,
) -> None:
    if name == "clip":
        where = "evaluate.clip_weights is not set"
    elif weights_dir is None:
        where = "evaluate.weights_dir is not set"
    else:
        where = (
            "none of " + ", ".join(str(p) for p in weight_candidates(name, weights_dir)) + " exists"
        )
    metrics = ", ".join(spec.metrics)
    if not allow_random:
        raise FileNotFoundError(
            f"metric backbone {name}: no weights ({where}) and random backbones are not allowed"
        )
    msg = (
        f"metric backbone {name}: no weights ({where}); using RANDOM weights. Metrics {metrics} are "
        "flagged random_init and are NOT comparable with published numbers."
    )
    log.warning(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)
