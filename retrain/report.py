"""What a run prints. Progress and results go to stdout in retrain.py's wording; problems are
logged as warnings on stderr."""

from __future__ import annotations

import logging
from pathlib import Path

from retrain.backbones import Backbone
from retrain.extract import ExtractionStats
from retrain.images import FEW_IMAGES_WARNING, MIN_IMAGES_FOR_HOLDOUT, SPLITS, ImageSet
from retrain.train import EvalRecord

log = logging.getLogger("retrain")


def _say(line: str) -> None:
    print(line, flush=True)


def image_set_summary(image_set: ImageSet) -> None:
    counts = ", ".join(f"{image_set.count(split)} {split}" for split in SPLITS)
    total = sum(image_set.count(split) for split in SPLITS)
    _say(f"Found {total} images in {len(image_set.labels)} classes in {image_set.image_dir} ({counts}).")
    if image_set.empty_folders:
        log.warning("ignoring folders with no images: %s", ", ".join(image_set.empty_folders))
    if image_set.ignored_files:
        log.warning("ignoring %d files that are not images (by extension)", image_set.ignored_files)
    if image_set.small_classes:
        log.warning(
            "classes with fewer than %d images train on all of them and are not validated or tested: %s",
            MIN_IMAGES_FOR_HOLDOUT,
            ", ".join(image_set.small_classes),
        )
    if image_set.few_image_classes:
        log.warning(
            "classes with fewer than %d images (expect weak accuracy on them): %s",
            FEW_IMAGES_WARNING,
            ", ".join(image_set.few_image_classes),
        )


def backbone_summary(backbone: Backbone) -> None:
    spec = backbone.input_spec
    _say(f"Backbone {backbone.cache_id}: {spec.height}x{spec.width} input, {backbone.feature_dim} features.")


def extraction_summary(stats: ExtractionStats, seconds: float, cache_dir: Path) -> None:
    rate = f" ({stats.computed / seconds:.1f} images/s)" if stats.computed and seconds > 0 else ""
    _say(
        f"Bottlenecks: {stats.cached} from cache, {stats.computed} computed{rate}, "
        f"{len(stats.skipped)} skipped, in {seconds:.1f}s; cache {cache_dir}"
    )


def eval_step(record: EvalRecord) -> None:
    _say(f"Step {record.step}: Train accuracy = {record.train_accuracy * 100:.1f}%")
    _say(f"Step {record.step}: Cross entropy = {record.cross_entropy:.6f}")
    if record.validation_accuracy is not None:
        accuracy = record.validation_accuracy * 100
        _say(f"Step {record.step}: Validation accuracy = {accuracy:.1f}% (N={record.validation_count})")


def final_test(accuracy: float | None, count: int) -> None:
    if accuracy is None:
        _say("Final test accuracy = n/a (N=0): no test images")
    else:
        _say(f"Final test accuracy = {accuracy * 100:.1f}% (N={count})")


def misclassified(items: list[tuple[Path, str]]) -> None:
    _say("=== MISCLASSIFIED TEST IMAGES ===")
    for path, predicted in items:
        _say(f"{path}  {predicted}")


def exporting(output_dir: Path) -> None:
    _say(f"Exporting to {output_dir} (SavedModel and TFLite conversion take a few seconds)...")


def exported(output_dir: Path, seconds: float) -> None:
    _say(
        f"Exported model to {output_dir} (model.tflite, saved_model/, labels.txt, model.json) in {seconds:.1f}s total."
    )
