"""Fetch or convert backbone weights ahead of time, e.g. while building a container image.

    python -m retrain.prefetch                      # what --architecture auto uses: EfficientNet-Lite0 and Lite2
    python -m retrain.prefetch mobilenet_v2 ...     # needs the network (or RETRAIN_WEIGHTS_BASE_URL)

Weights land in `retrain.paths.weights_cache_dir()` (`$RETRAIN_WEIGHTS_DIR` if set), where later
runs find them without a download or conversion. With `$RETRAIN_FEATURE_MODELS_DIR` set, each
backbone's TFLite feature model (what extraction runs on a CPU) is written into it as well.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from retrain.backbones import DEFAULT_ARCHITECTURE, FEW_IMAGES_BACKBONE, load_backbone
from retrain.errors import RetrainError
from retrain.feature_models import PREBUILT_ENV, save_prebuilt
from retrain.paths import weights_cache_dir
from retrain.quiet import import_tensorflow_quietly


def prefetch(architectures: list[str]) -> None:
    """Builds each backbone once, which downloads or converts its ImageNet weights into the cache,
    and converts its feature model into `$RETRAIN_FEATURE_MODELS_DIR` when that is set."""
    import_tensorflow_quietly()
    feature_models = os.environ.get(PREBUILT_ENV)
    for architecture in architectures:
        backbone = load_backbone(architecture)
        backbone.model  # noqa: B018 (building it downloads or converts the weights)
        print(f"{backbone.name}: weights ready in {weights_cache_dir()}")
        if feature_models:
            save_prebuilt(backbone, Path(feature_models))
            print(f"{backbone.name}: TFLite feature model ready in {feature_models}")


def main(argv: list[str] | None = None) -> None:
    architectures = (sys.argv[1:] if argv is None else argv) or [DEFAULT_ARCHITECTURE, FEW_IMAGES_BACKBONE]
    try:
        prefetch(architectures)
    except RetrainError as e:
        print(f"retrain: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
