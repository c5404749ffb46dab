"""Fetch or convert backbone weights ahead of time, e.g. while building a container image.

    python -m retrain.prefetch                      # the default backbone, EfficientNet-Lite0
    python -m retrain.prefetch mobilenet_v2 ...     # needs the network (or RETRAIN_WEIGHTS_BASE_URL)

Weights land in `retrain.paths.weights_cache_dir()` (`$RETRAIN_WEIGHTS_DIR` if set), where later
runs find them without a download or conversion.
"""

from __future__ import annotations

import sys

from retrain.backbones import DEFAULT_ARCHITECTURE, load_backbone
from retrain.errors import RetrainError
from retrain.paths import weights_cache_dir
from retrain.quiet import import_tensorflow_quietly


def prefetch(architectures: list[str]) -> None:
    """Builds each backbone once, which downloads or converts its ImageNet weights into the cache."""
    import_tensorflow_quietly()
    for architecture in architectures:
        backbone = load_backbone(architecture)
        print(f"{backbone.name}: weights ready in {weights_cache_dir()}")


def main(argv: list[str] | None = None) -> None:
    architectures = (sys.argv[1:] if argv is None else argv) or [DEFAULT_ARCHITECTURE]
    try:
        prefetch(architectures)
    except RetrainError as e:
        print(f"retrain: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
