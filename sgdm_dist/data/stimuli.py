"""Synthetic stimulus images that vary in what a viewer judges: colour, shape, position, orientation,
texture.

An image is rendered from a factor vector ``z`` [F] (standard normal, the same vector that drives the
synthetic EEG in ``data/synthetic.py``), so every visible property of the image is carried by the EEG:

==========  ===================================================================
attribute    factor (index mod F) → property
==========  ===================================================================
0, 1         background hue and lightness
2            hue of the foreground shape (always far from the background hue)
3, 4         horizontal and vertical position of the shape centre
5            shape size
6            orientation of the shape and of its stripes
7            shape kind: circle | square | triangle (terciles of z)
8            texture: stripe contrast inside the shape (0 = flat colour)
==========  ===================================================================

Edges are anti-aliased (a 1-px logistic ramp), so images are smooth functions of ``z`` between the
discrete shape changes.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

ATTRIBUTES = (
    "background_hue",
    "background_lightness",
    "shape_hue",
    "x",
    "y",
    "size",
    "orientation",
    "kind",
    "texture",
)
KINDS = ("circle", "square", "triangle")
_TERCILE = 0.4307  # Φ⁻¹(2/3): the three kinds are equally likely for z ~ N(0, 1)


def attributes(z: np.ndarray) -> dict[str, float]:
    """Factor vector z [F] (F >= 1) → the image's attributes (all in [0, 1] except ``kind`` ∈ {0,1,2})."""
    z = np.asarray(z, dtype=np.float64).ravel()
    if z.size == 0:
        raise ValueError("attributes: z must hold at least one factor")
    # Attributes past F reuse factors with a sign flip, so they are not identical copies.
    raw = [z[k % z.size] * (-1.0 if (k // z.size) % 2 else 1.0) for k in range(len(ATTRIBUTES))]
    u = {name: _phi(v) for name, v in zip(ATTRIBUTES, raw, strict=True)}
    kind = 0 if raw[7] < -_TERCILE else (1 if raw[7] < _TERCILE else 2)
    return {**u, "kind": float(kind)}


def render(z: np.ndarray, px: int) -> np.ndarray:
    """Factor vector z [F] → RGB uint8 [px, px, 3]."""
    a = attributes(z)
    yy, xx = (np.mgrid[0:px, 0:px] + 0.5) / px  # pixel centres in [0, 1]
    bg = np.array(
        colorsys.hls_to_rgb(a["background_hue"], 0.2 + 0.6 * a["background_lightness"], 0.6)
    )
    # The shape's hue is at least a third of the wheel away from the background's: always visible.
    hue = (a["background_hue"] + 1 / 3 + a["shape_hue"] / 3) % 1.0
    lightness = 0.75 - 0.5 * a["background_lightness"]  # dark on light, light on dark
    fg = np.array(colorsys.hls_to_rgb(hue, lightness, 0.9))
    cx, cy = 0.2 + 0.6 * a["x"], 0.2 + 0.6 * a["y"]
    radius = 0.12 + 0.18 * a["size"]
    theta = math.pi * a["orientation"]
    # Coordinates in the shape's own rotated frame.
    u = (xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)
    v = -(xx - cx) * math.sin(theta) + (yy - cy) * math.cos(theta)
    dist = _signed_distance(KINDS[int(a["kind"])], u, v, radius)
    mask = 1.0 / (1.0 + np.exp(np.clip(dist * px, -30, 30)))  # 1 inside, ~1 px ramp
    stripes = 0.5 + 0.5 * np.cos(2 * math.pi * u / (0.5 * radius))
    shade = 1.0 - 0.6 * a["texture"] * stripes  # stripe contrast grows with the texture factor
    pixel = (
        bg[None, None] * (1 - mask[..., None])
        + (fg[None, None] * shade[..., None]) * mask[..., None]
    )
    return (np.clip(pixel, 0, 1) * 255).round().astype(np.uint8)


def _signed_distance(kind: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Negative inside the shape, in image widths."""
    if kind == "circle":
        return np.hypot(u, v) - r
    if kind == "square":
        s = r * 0.85
        return np.maximum(np.abs(u), np.abs(v)) - s
    # Equilateral triangle of circumradius r, pointing along +u.
    d = v * 0.0 - np.inf
    for k in range(3):
        angle = 2 * math.pi * k / 3
        d = np.maximum(d, -(u * math.cos(angle) + v * math.sin(angle)) - r / 2)
    return d


def _phi(x: float) -> float:
    """Standard normal CDF: N(0, 1) factors → uniform attributes."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))
