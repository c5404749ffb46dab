"""The retrain job end to end: discover -> bottlenecks -> train the head -> test -> export.

Plain functions over one immutable `RetrainConfig`; the CLI only builds the config and calls `run`.
Everything a person should see goes through `retrain.report`.
"""

from __future__ import annotations

import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retrain import __version__, report
from retrain.backbones import DEFAULT_ARCHITECTURE, Backbone, load_backbone, registered
from retrain.cache import BottleneckCache
from retrain.errors import RetrainError
from retrain.export import check_output_dir, default_output_dir, export_model
from retrain.extract import DEFAULT_BATCH_SIZE, ExtractionStats, compute_bottlenecks
from retrain.images import SPLITS, ImageSet, discover
from retrain.paths import check_writable, user_cache_dir
from retrain.train import Head, HParams, accuracy_and_cross_entropy, train_head
from serve.model_info import LABELS_TXT, SAVED_MODEL_DIR, ModelInfo


@dataclass(frozen=True)
class RetrainConfig:
    """Every setting of a run; flag names follow retrain.py."""

    image_dir: str
    output_dir: str | None = None  # None: models/<timestamp>, and models/latest points at it
    models_dir: str = "models"
    bottleneck_dir: str | None = None  # None: <user cache>/bottlenecks
    architecture: str = DEFAULT_ARCHITECTURE
    tfhub_module: str | None = None
    weights_file: str | None = None
    image_size: int | None = None
    testing_percentage: float = 10
    validation_percentage: float = 10
    test_batch_size: int = -1
    extraction_batch_size: int = DEFAULT_BATCH_SIZE
    print_misclassified_test_images: bool = False
    summaries_dir: str | None = None
    saved_model_dir: str | None = None
    output_labels: str | None = None
    hparams: HParams = field(default_factory=HParams)


@dataclass(frozen=True)
class Bottlenecks:
    """The vectors and integer labels of one split, with the files they came from."""

    features: np.ndarray
    labels: np.ndarray
    paths: list[Path]


@dataclass(frozen=True)
class RunResult:
    output_dir: Path
    test_accuracy: float | None
    test_count: int
    extraction: ExtractionStats
    head: Head


def run(config: RetrainConfig) -> RunResult:
    """Runs the whole job; RetrainError for anything the user can fix, raised before heavy work."""
    started = time.monotonic()
    image_set = discover(config.image_dir, config.validation_percentage, config.testing_percentage)
    output_dir = Path(config.output_dir) if config.output_dir else default_output_dir(config.models_dir)
    check_output_dir(output_dir)
    bottleneck_dir = Path(config.bottleneck_dir) if config.bottleneck_dir else user_cache_dir() / "bottlenecks"
    check_writable(bottleneck_dir, "--bottleneck_dir")
    if config.saved_model_dir:
        check_writable(config.saved_model_dir, "--saved_model_dir")
    if config.output_labels:
        check_writable(config.output_labels, "--output_labels")
    if not config.tfhub_module:
        registered(config.architecture)
    report.image_set_summary(image_set)

    backbone = load_backbone(config.architecture, config.weights_file, config.tfhub_module, config.image_size)
    report.backbone_summary(backbone)
    cache = BottleneckCache(bottleneck_dir, backbone.cache_id, backbone.feature_dim)
    splits, extraction, seconds = _bottlenecks(image_set, backbone, cache, config.extraction_batch_size)
    report.extraction_summary(extraction, seconds, cache.directory)

    train, validation, test = splits["training"], splits["validation"], splits["testing"]
    if len(set(train.labels.tolist())) < 2:
        raise RetrainError("fewer than two classes have decodable training images; nothing to learn")
    head, history = train_head(
        train.features,
        train.labels,
        validation.features,
        validation.labels,
        len(image_set.labels),
        config.hparams,
        on_eval=report.eval_step,
        summaries_dir=config.summaries_dir,
    )
    test_accuracy, test_index = _test(head, test, config.test_batch_size, config.hparams.random_seed)
    report.final_test(test_accuracy, len(test_index))
    if config.print_misclassified_test_images:
        predictions = np.argmax(head.probabilities(test.features[test_index]), axis=1)
        report.misclassified(
            [
                (test.paths[i], image_set.labels[p])
                for i, p in zip(test_index, predictions, strict=True)
                if p != test.labels[i]
            ]
        )

    info = ModelInfo(
        labels=image_set.labels,
        input_spec=backbone.input_spec,
        backbone=backbone.cache_id,
        details=_details(config, image_set, splits, extraction, history, test_accuracy, len(test_index), started),
    )
    report.exporting(output_dir)
    exported = export_model(output_dir, backbone, head, info, update_latest=config.output_dir is None)
    if config.saved_model_dir:
        shutil.copytree(exported / SAVED_MODEL_DIR, config.saved_model_dir, dirs_exist_ok=True)
    if config.output_labels:
        shutil.copyfile(exported / LABELS_TXT, config.output_labels)
    report.exported(exported, time.monotonic() - started)
    return RunResult(exported, test_accuracy, len(test_index), extraction, head)


def _bottlenecks(
    image_set: ImageSet, backbone: Backbone, cache: BottleneckCache, batch_size: int
) -> tuple[dict[str, Bottlenecks], ExtractionStats, float]:
    """Vectors for every split in one extraction pass; undecodable files are dropped from their split."""
    examples = [example for split in SPLITS for example in image_set.splits[split]]
    started = time.monotonic()
    vectors, ok, stats = compute_bottlenecks([e.path for e in examples], backbone, cache, batch_size)
    seconds = time.monotonic() - started
    splits, start = {}, 0
    for split in SPLITS:
        members = image_set.splits[split]
        keep = np.flatnonzero(ok[start : start + len(members)])
        splits[split] = Bottlenecks(
            features=vectors[start : start + len(members)][keep],
            labels=np.array([members[i].label_index for i in keep], dtype=np.int32),
            paths=[members[i].path for i in keep],
        )
        start += len(members)
    return splits, stats, seconds


def _test(head: Head, test: Bottlenecks, batch_size: int, seed: int) -> tuple[float | None, np.ndarray]:
    """Accuracy on the test set (all of it for -1, else a random batch), and the indices used."""
    if len(test.labels) == 0:
        return None, np.zeros(0, dtype=np.int64)
    if batch_size < 0:
        index = np.arange(len(test.labels))
    else:
        index = np.random.default_rng(seed + 1).integers(0, len(test.labels), size=batch_size)
    accuracy, _ = accuracy_and_cross_entropy(head, test.features[index], test.labels[index])
    return accuracy, index


def _details(
    config: RetrainConfig,
    image_set: ImageSet,
    splits: dict[str, Bottlenecks],
    extraction: ExtractionStats,
    history: list,
    test_accuracy: float | None,
    test_count: int,
    started: float,
) -> dict:
    """What model.json records beyond the runtime contract: metrics, flags, counts, versions."""
    import keras
    import PIL
    import tensorflow as tf

    last = history[-1]
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "metrics": {
            "test_accuracy": test_accuracy,
            "test_count": test_count,
            "final_train_accuracy": last.train_accuracy,
            "final_cross_entropy": last.cross_entropy,
            "final_validation_accuracy": last.validation_accuracy,
            "validation_count": last.validation_count,
        },
        "counts": {
            **{f"{split}_images": len(splits[split].labels) for split in SPLITS},
            "skipped_images": len(extraction.skipped),
            "skipped_files": [str(path) for path, _ in extraction.skipped],
            "ignored_non_image_files": image_set.ignored_files,
            "per_class": image_set.class_counts(),
            "classes_without_holdout": image_set.small_classes,
            "bottlenecks_from_cache": extraction.cached,
            "bottlenecks_computed": extraction.computed,
        },
        "flags": {k: v for k, v in asdict(config).items() if k != "hparams"} | asdict(config.hparams),
        "versions": {
            "retrain": __version__,
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
        },
        "training_seconds": round(time.monotonic() - started, 1),
    }
