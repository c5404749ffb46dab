"""Taps: which layers of a backbone a bottleneck is made of, and how each is pooled.

retrain caches one vector per image: by default the backbone's last layer averaged over the
image. A middle layer pooled on a small grid keeps what the last one averages away (strokes and
where they are), which is what small, plain images such as digits need: on the bundled digits,
Lite0's block10 output on a 2x2 grid separates the classes far better than the final layer
(docs/decisions.md). A tap names a layer and a grid; a bottleneck is the concatenation of its
taps, each flattened cell by cell (row, column, channel).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from retrain.backbones import Backbone


@dataclass(frozen=True)
class Tap:
    """`layer`'s output (N, H, W, C) averaged over `grid` x `grid` equal cells -> (N, grid * grid * C)."""

    layer: str  # the layer's name in the backbone's Keras model
    grid: int = 1

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ValueError(f"a tap's grid is at least 1, not {self.grid}")

    def describe(self) -> str:
        return self.layer if self.grid == 1 else f"{self.layer}:{self.grid}x{self.grid}"


def keras_tap_model(model, taps: tuple[Tap, ...]):
    """`model`'s inputs -> its `taps` pooled and concatenated, as a Keras model: what TensorFlow runs
    (a GPU, fine-tuning, the SavedModel) to compute the bottlenecks the TFLite feature model computes."""
    import keras

    pooled = []
    for tap in taps:
        x = model.get_layer(tap.layer).output
        if tap.grid == 1:
            pooled.append(keras.layers.GlobalAveragePooling2D()(x))
            continue
        height, _, channels = x.shape[1:]
        cell = grid_cell(tap, height)
        x = keras.layers.AveragePooling2D(cell, strides=cell, padding=grid_padding(tap, height))(x)
        pooled.append(keras.layers.Reshape((tap.grid * tap.grid * channels,))(x))
    features = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(axis=1)(pooled)
    return keras.Model(model.input, features, name=f"{model.name}_taps")


def grid_cell(tap: Tap, height: int) -> int:
    """The side of a grid cell on a `height` x `height` layer. Where the grid does not divide the
    side, cells are `ceil(height / grid)` wide but for the edge ones, which TensorFlow's SAME padding
    (`grid_padding`) trims and averages over the pixels they hold (17 on a 2x2 grid: 9 + 8)."""
    cell = -(-height // tap.grid)
    if tap.grid > height or -(-height // cell) != tap.grid:
        raise ValueError(f"a {tap.grid}x{tap.grid} grid does not fit {tap.layer}'s {height}x{height} output")
    return cell


def grid_padding(tap: Tap, height: int) -> str:
    """`valid` where the grid divides the side (equal cells), else `same` (see `grid_cell`)."""
    return "valid" if height % tap.grid == 0 else "same"


def layer_shape(network: str, tap: Tap) -> tuple[int, int, int]:
    """(height, width, channels) of the layer `tap` names in `network` (a cache id such as
    `efficientnet_lite0@imagenet`); ValueError if it has no such layer or the grid does not fit."""
    from retrain.backbones.efficientnet_lite_variants import VARIANTS

    variant = VARIANTS[network.split("@", 1)[0]]
    shapes = variant.layer_shapes
    if tap.layer not in shapes:
        raise ValueError(f"{variant.title} has no layer {tap.layer!r} to tap; choose from {', '.join(shapes)}")
    grid_cell(tap, shapes[tap.layer][0])
    return shapes[tap.layer]


def tap_width(network: str, tap: Tap) -> int:
    """How many numbers `tap` of `network` adds to a bottleneck."""
    return tap.grid * tap.grid * layer_shape(network, tap)[2]


# The named feature sets a backbone offers, by its cache id (for now EfficientNet-Lite with its
# ImageNet weights, whose TFLite feature models retrain writes itself). "final" is the classic
# bottleneck and keeps the cache entries it always had; "middle" is the last block of the fifth
# stage (Lite0: 112 channels at 14x14; Lite2: 120 at 17x17) on a 2x2 grid.
FEATURE_SETS: dict[str, dict[str, tuple[Tap, ...]]] = {
    "efficientnet_lite0@imagenet": {
        "final": (Tap("top_relu"),),
        "middle": (Tap("block10_add", grid=2),),
        "final+middle": (Tap("top_relu"), Tap("block10_add", grid=2)),
    },
    "efficientnet_lite2@imagenet": {
        "final": (Tap("top_relu"),),
        "middle": (Tap("block14_add", grid=2),),
        "final+middle": (Tap("top_relu"), Tap("block14_add", grid=2)),
    },
}
FINAL = "final"
PREFERRED = "final+middle"
"""The set `--bottleneck_layers auto` keeps unless another scores clearly better on held-out images
(retrain.choice.pick): it holds the other two, and over many draws it was the safe choice
(docs/experiments.md g, docs/decisions.md #38)."""


def feature_sets(backbone: Backbone) -> dict[str, tuple[Tap, ...] | None]:
    """The backbone's named feature sets; one, "final" (its own output), for a backbone without taps."""
    return dict(FEATURE_SETS.get(backbone.cache_id, {FINAL: None}))


def tapped(backbone: Backbone, taps: tuple[Tap, ...] | None) -> Backbone:
    """The backbone whose bottleneck is `taps` (None, or its final layer alone: the backbone itself)."""
    sets = FEATURE_SETS.get(backbone.cache_id, {})
    if taps is None or taps == sets.get(FINAL):
        return backbone
    if not sets:
        raise ValueError(f"{backbone.cache_id} offers no taps")
    return replace(
        backbone,
        cache_id=f"{backbone.cache_id}#{'+'.join(tap.describe() for tap in taps)}",
        build=lambda: keras_tap_model(backbone.model, taps),
        feature_dim=sum(tap_width(backbone.cache_id, tap) for tap in taps),
        taps=taps,
    )


def tap_caches(backbone: Backbone) -> list[tuple[str, int]]:
    """(cache id, width) of each of the backbone's taps: each tap is cached on its own, so feature
    sets that share a tap share its entries, and the final layer keeps the backbone's own."""
    if backbone.taps is None:
        return [(backbone.cache_id, backbone.feature_dim)]
    base = base_cache_id(backbone)
    final = FEATURE_SETS[base][FINAL]
    return [(base if (tap,) == final else f"{base}#{tap.describe()}", tap_width(base, tap)) for tap in backbone.taps]


def joint_taps(candidates: list[tuple[Tap, ...] | None]) -> tuple[Tap, ...] | None:
    """Every tap of the candidate feature sets once, in order: what one forward pass computes."""
    if any(taps is None for taps in candidates):
        return None
    return tuple(dict.fromkeys(tap for taps in candidates for tap in taps))


def columns_of(joint: Backbone, taps: tuple[Tap, ...] | None) -> np.ndarray:
    """The columns of `joint`'s vectors (a backbone tapped for several feature sets at once) that
    make up the feature set `taps`."""
    if joint.taps is None or taps is None:
        return np.arange(joint.feature_dim)
    widths = {tap: tap_width(base_cache_id(joint), tap) for tap in joint.taps}
    ends = dict(zip(widths, np.cumsum(list(widths.values())), strict=True))
    return np.concatenate([np.arange(ends[tap] - widths[tap], ends[tap]) for tap in taps])


def base_cache_id(backbone: Backbone) -> str:
    """The cache id of the network a tapped backbone taps."""
    return backbone.cache_id.split("#", 1)[0]
