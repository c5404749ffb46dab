"""What a run prints. Progress and results go to stdout in retrain.py's wording; problems are
logged as warnings on stderr. Every name from the image folder (and every path the user gave) is
printed through `serve.text.printable`: a file name can hold an escape sequence or a newline."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from pathlib import Path

from retrain.augment import Augmentation
from retrain.backbones import Backbone
from retrain.choice import FeatureChoice
from retrain.export import Exported, NextVersion
from retrain.extract import ExtractionStats
from retrain.heads import PrototypeHead
from retrain.images import FEW_IMAGES_WARNING, MIN_IMAGES_FOR_HOLDOUT, SPLITS, ImageSet, Skipped
from retrain.progress import emit
from retrain.train import EvalRecord, accuracy_and_cross_entropy
from serve.text import printable

log = logging.getLogger("retrain")

NAMES_SHOWN = 10
"""Names listed in one warning; the rest are counted ("and 3 more")."""


def _say(line: str) -> None:
    print(line, flush=True)


def image_set_summary(image_set: ImageSet) -> None:
    counts = ", ".join(f"{image_set.count(split)} {split}" for split in SPLITS)
    total = sum(image_set.count(split) for split in SPLITS)
    _say(f"Found {total} images in {len(image_set.labels)} classes in {printable(image_set.image_dir)} ({counts}).")
    emit({"phase": "images", "total": total, "labels": image_set.labels, **{s: image_set.count(s) for s in SPLITS}})
    if image_set.empty_folders:
        log.warning("ignoring folders with no images: %s", _names(image_set.empty_folders))
    skipped_entries(image_set.skipped)
    if image_set.ignored_files:
        log.warning("ignoring %d files that are not images (by extension)", image_set.ignored_files)
    if image_set.small_classes:
        log.warning(
            "classes with fewer than %d images train on all of them and are not validated or tested: %s",
            MIN_IMAGES_FOR_HOLDOUT,
            _names(image_set.small_classes),
        )
    if image_set.few_image_classes:
        log.warning(
            "classes with fewer than %d images (expect weak accuracy on them): %s",
            FEW_IMAGES_WARNING,
            _names(image_set.few_image_classes),
        )


def skipped_entries(skipped: list[Skipped]) -> None:
    """One warning per reason, counting and naming what discovery left out of the image folder."""
    by_reason: dict[str, list[str]] = {}
    for entry in skipped:
        by_reason.setdefault(entry.reason, []).append(entry.relpath)
    for reason, names in by_reason.items():
        entries = "entry" if len(names) == 1 else "entries"
        log.warning("skipping %d %s of --image_dir (%s): %s", len(names), entries, reason, _names(names))


def _names(names: Iterable[str | Path]) -> str:
    """Names escaped and comma-separated, at most NAMES_SHOWN of them and a count of the rest."""
    names = list(names)
    shown = ", ".join(printable(name) for name in names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def few_images(per_class: float, architectures: list[str]) -> None:
    """Why `--architecture auto` computes more than one backbone's bottlenecks."""
    _say(
        f"{per_class:.1f} training images a class: with so few, auto scores the feature sets of "
        f"{' and '.join(architectures)} (pass --architecture to use one)."
    )


def backbone_summary(backbone: Backbone) -> None:
    spec = backbone.input_spec
    _say(f"Backbone {backbone.cache_id}: {spec.height}x{spec.width} input, {backbone.feature_dim} features.")


RUNTIME_NAMES = {"litert": "LiteRT", "tensorflow": "TensorFlow", "ray": "the Ray cluster"}


def extraction_summary(stats: ExtractionStats, seconds: float, cache_dir: Path) -> None:
    rate = ""
    if stats.computed:
        computing = max(seconds - stats.setup_seconds, 1e-9)
        rate = f" ({stats.computed / computing:.1f} images/s with {RUNTIME_NAMES.get(stats.runtime, stats.runtime)}"
        rate += f", after {stats.setup_seconds:.1f}s to load it)"  # always: a log's shape never hangs on timing
    twins = f", {stats.duplicates} of identical files" if stats.duplicates else ""
    _say(
        f"Bottlenecks: {stats.cached} from cache, {stats.computed} computed{rate}{twins}, "
        f"{len(stats.skipped)} skipped, in {seconds:.1f}s; cache {printable(cache_dir)}"
    )


def nodes(count: int) -> str:
    return f"{count} node" + ("s" if count != 1 else "")


def cluster_summary(info) -> None:
    """Which cluster extraction runs on (retrain.cluster.ClusterInfo), and what joining it cost."""
    gpus = f", {info.gpus:g} GPUs" if info.gpus else ""
    _say(
        f"Ray cluster at {info.address}: {nodes(info.nodes)}, {info.cpus:g} CPUs{gpus}; "
        f"joined in {info.startup_seconds:.1f}s."
    )


def cluster_progress(done: int, total: int, seconds: float, workers: int) -> None:
    """A progress line for logs without a terminal (a RayJob's)."""
    rate = done / max(seconds, 1e-9)
    eta = (total - done) / max(rate, 1e-9)
    _say(f"Ray: {done}/{total} images, {rate:.1f} images/s on {nodes(workers)}, ETA {eta:.0f}s")


def cluster_extraction(timing) -> None:
    """How a cluster's extraction went (retrain.cluster.ClusterTiming): overall, and once started."""
    if timing.all_at_once:
        pace = f"all with the first batch, {timing.start_up_seconds:.1f}s after the start, workers included"
    else:
        pace = f"{timing.steady_rate:.1f} images/s after {timing.start_up_seconds:.1f}s to start the workers"
    _say(
        f"Ray: {timing.images} images through the backbone on {nodes(timing.nodes)} in {timing.seconds:.1f}s ({pace})."
    )


def augmentation_summary(augmentation: Augmentation, copies: int, stats: ExtractionStats, seconds: float) -> None:
    _say(
        f"Augmented copies ({augmentation.describe()}): {copies} per training image, {stats.cached} from cache, "
        f"{stats.computed} computed, in {seconds:.1f}s."
    )


def augmented_pixels(augmentation: Augmentation, copies: int, count: int) -> None:
    _say(f"Augmented copies ({augmentation.describe()}): {copies} per training image, {count} decoded for training.")


def eval_step(record: EvalRecord) -> None:
    _say(f"Step {record.step}: Train accuracy = {record.train_accuracy * 100:.1f}%")
    _say(f"Step {record.step}: Cross entropy = {record.cross_entropy:.6f}")
    if record.validation_accuracy is not None:
        accuracy = record.validation_accuracy * 100
        _say(f"Step {record.step}: Validation accuracy = {accuracy:.1f}% (N={record.validation_count})")
    emit(
        {
            "phase": "training",
            "step": record.step,
            "train_accuracy": record.train_accuracy,
            "cross_entropy": record.cross_entropy,
            "validation_accuracy": record.validation_accuracy,
        }
    )


def decoded_for_training(stats: ExtractionStats, seconds: float) -> None:
    _say(
        f"Decoded {stats.computed} images for training through the backbone, {len(stats.skipped)} skipped, "
        f"in {seconds:.1f}s (no bottleneck cache: the backbone's weights change as it trains)."
    )
    for path, reason in stats.skipped:
        log.warning("skipping %s: %s", printable(path), printable(reason))


def prototype_head(head: PrototypeHead, train, validation) -> None:
    """The prototype head trains nothing; say how well the class means fit and how they validate."""
    accuracy, _ = accuracy_and_cross_entropy(head.probabilities(train.features), train.labels)
    _say(f"Prototype head: {len(head.prototypes)} class means of {len(train.labels)} training vectors.")
    _say(f"Train accuracy = {accuracy * 100:.1f}%")
    if len(validation.labels):
        accuracy, _ = accuracy_and_cross_entropy(head.probabilities(validation.features), validation.labels)
        _say(f"Validation accuracy = {accuracy * 100:.1f}% (N={len(validation.labels)})")


# Below this mean cross entropy on the training images the head fits them almost perfectly, and
# fine-tuning's gradients are too small to change any prediction (docs/experiments.md, table a).
FITTED_CROSS_ENTROPY = 0.01


def fine_tuning(layers: int, steps: int, learning_rate: float, train_cross_entropy: float) -> None:
    _say(
        f"Fine-tuning the top {layers} backbone layers with the head for {steps} steps "
        f"(learning rate {learning_rate:g}, momentum 0.9) on decoded images..."
    )
    if train_cross_entropy < FITTED_CROSS_ENTROPY:
        log.warning(
            "the head already fits the training images (cross entropy %.4f): fine-tuning has little left to "
            "learn; fewer --how_many_training_steps or more images give it room",
            train_cross_entropy,
        )


def evaluation(result, labels: list[str]) -> None:
    """The final accuracy (test split, or cross-validation when there is none) and per-class scores."""
    from retrain import metrics

    validation = result.cross_validation
    if validation is not None:
        _say(
            f"No test images (too few per class for a hold-out split): estimated accuracy by "
            f"{validation.describe()} = {validation.accuracy * 100:.1f}% (N={result.count})"
        )
    elif result.accuracy is None:
        _say("Final test accuracy = n/a (N=0): no test images")
        return
    else:
        _say(f"Final test accuracy = {result.accuracy * 100:.1f}% (N={result.count})")
    emit({"phase": "evaluated", "test_accuracy": result.accuracy, "test_count": result.count})
    per_class = metrics.per_class_metrics(result.labels, result.predictions, labels)
    for line in metrics.format_per_class(per_class, "cross-validated images" if validation else "test images"):
        _say(line)


def misclassified(items: list[tuple[Path, str]]) -> None:
    _say("=== MISCLASSIFIED TEST IMAGES ===")
    for path, predicted in items:
        _say(f"{printable(path)}  {printable(predicted)}")


def feature_choice(choice: FeatureChoice) -> None:
    """The candidates' scores and the one kept, so a person can see why."""
    again = " (remembered: the same vectors, labels and settings as an earlier run)" if choice.remembered else ""
    _say(f"Bottleneck features, scored on the {choice.method}{again}:")
    width = max(14, *(len(candidate.name) for candidate in choice.candidates))
    for candidate in choice.candidates:
        entropy = "" if candidate.cross_entropy is None else f", cross entropy {candidate.cross_entropy:.3f}"
        mark = "  <- chosen" if candidate.name == choice.chosen else ""
        scores = f"accuracy {candidate.accuracy:.1%}{entropy}{mark}"
        _say(f"  {candidate.name:<{width}} {candidate.dims:5d} features: {scores}")
    _say(f"Kept {choice.chosen}: {choice.reason}.")
    emit({"phase": "features chosen", "features": choice.chosen})


def exporting(output_dir: Path | NextVersion, formats: Collection[str]) -> None:
    slow = " (writing the SavedModel takes a few seconds)" if "saved_model" in formats else ""
    where = f"a new version of {output_dir.model_root}" if isinstance(output_dir, NextVersion) else output_dir
    _say(f"Exporting to {printable(where)}{slow}...")
    emit({"phase": "exporting"})


def exported(export: Exported, export_seconds: float, plot_seconds: float, total_seconds: float) -> None:
    """What the export held as it was renamed into place (read then: another run may replace it since)."""
    _say(
        f"Exported model to {printable(export.path)} ({', '.join(export.files)}) in {export_seconds:.2f}s, "
        f"plots in {plot_seconds:.1f}s; {total_seconds:.1f}s total."
    )


def variants(entries: dict[str, dict]) -> None:
    """Each TFLite file of the export: its size and its accuracy on the test split (LiteRT, end to end)."""
    for entry in entries.values():
        size = f"{entry['bytes'] / 1e6:.1f} MB" + (
            f", {entry['size_of_tflite']:.2f}x model.tflite" if "size_of_tflite" in entry else ""
        )
        accuracy = entry.get("test_accuracy")
        scored = f"; test accuracy {accuracy * 100:.1f}%" if accuracy is not None else ""
        method = f" ({entry['quantization']})" if "quantization" in entry else ""
        _say(f"  {entry['file']:<20} {size}{scored}{method}")
