"""The retrain job end to end: discover -> bottlenecks -> train the head -> test -> export.

Plain functions over one immutable `RetrainConfig`; the CLI only builds the config and calls `run`.
Everything a person should see goes through `retrain.report`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrain import __version__, report
from retrain.augment import Augmentation, variant_pixels
from retrain.backbones import (
    DEFAULT_ARCHITECTURE,
    FEW_IMAGES_BACKBONE,
    FEW_IMAGES_PER_CLASS,
    Backbone,
    load_backbone,
    registered,
)
from retrain.backbones.taps import (
    FEATURE_SETS,
    FINAL,
    PREFERRED,
    Tap,
    columns_of,
    feature_sets,
    joint_taps,
    tap_caches,
    tapped,
)
from retrain.cache import BottleneckCache, bottleneck_cache, image_digest
from retrain.choice import ChoiceMemo, FeatureChoice, choose_features
from retrain.crossval import CrossValidation, cross_validate
from retrain.errors import RetrainError
from retrain.export import (
    DEFAULT_AUTHOR,
    DEFAULT_EXPORT,
    DEFAULT_LICENSE,
    Exported,
    NextVersion,
    check_model_name,
    check_output_dir,
    export_model,
    parse_formats,
)
from retrain.extract import DECODE_MEMORY_BYTES, DEFAULT_BATCH_SIZE, ExtractionStats, compute_bottlenecks
from retrain.feature_models import ConversionError, cached_feature_model
from retrain.files import read_regular_file
from retrain.heads import Head, fit_prototypes
from retrain.images import SPLITS, Example, ImageSet, discover, limit_training
from retrain.paths import check_writable, user_cache_dir
from retrain.quantize import CALIBRATION_IMAGES, CHECK_IMAGES
from retrain.runtimes import FeatureRuntime, open_runtime
from retrain.train import EvalRecord, HParams, accuracy_and_cross_entropy, initial_softmax_head, train_head
from serve.budget import DecodeBudget
from serve.model_info import (
    CONFUSION_MATRIX_PNG,
    LABELS_TXT,
    SAVED_MODEL_DIR,
    TRAINING_CURVES_PNG,
    ModelInfo,
)
from serve.preprocess import InputSpec, decoded, preprocess
from serve.text import printable

if TYPE_CHECKING:
    from retrain.finetune import Pixels

log = logging.getLogger(__name__)

HEADS = ("softmax", "prototype")
AUTO = "auto"
FINE_TUNE_STEPS = 500
FINE_TUNE_LEARNING_RATE = 0.001  # SGD with momentum 0.9, through the top of the backbone
SCRATCH_LEARNING_RATE = 0.01  # SGD with momentum 0.9, a backbone and head trained from scratch


@dataclass(frozen=True)
class RetrainConfig:
    """Every setting of a run; flag names follow retrain.py."""

    image_dir: str
    output_dir: str | None = None  # None: <models_dir>/<model_name>/<next version>, and <models_dir>/latest
    models_dir: str = "models"
    model_name: str | None = None  # None: the image folder's name
    model_author: str = DEFAULT_AUTHOR  # model.tflite's metadata
    model_license: str = DEFAULT_LICENSE
    bottleneck_dir: str | None = None  # None: <user cache>/bottlenecks
    architecture: str = AUTO  # a registry backbone, or auto: Lite0, and Lite2 too when images are few
    tfhub_module: str | None = None
    base_model: str | None = None
    weights_file: str | None = None
    image_size: int | None = None
    head: str = "softmax"
    fine_tune_layers: int = 0
    fine_tune_steps: int = FINE_TUNE_STEPS
    fine_tune_learning_rate: float = FINE_TUNE_LEARNING_RATE
    train_fraction: float | None = None
    train_images_per_class: int | None = None
    augmentation: Augmentation = field(default_factory=Augmentation)
    augmentation_copies: int = 0
    testing_percentage: float = 10
    validation_percentage: float = 10
    test_batch_size: int = -1
    extraction_batch_size: int = DEFAULT_BATCH_SIZE
    decode_memory_mb: int = DECODE_MEMORY_BYTES // 2**20  # decoding at once; an image that needs more is skipped
    runtime: str = "auto"  # what computes bottlenecks: auto, litert or tensorflow (retrain.runtimes)
    ray_address: str | None = None  # compute missing bottlenecks on this Ray cluster (retrain.cluster)
    bottleneck_layers: str = "auto"  # a feature set of the backbone's (retrain.backbones.taps), or auto: chosen
    print_misclassified_test_images: bool = False
    summaries_dir: str | None = None
    saved_model_dir: str | None = None  # also asks for the SavedModel in the export
    output_labels: str | None = None
    export: tuple[str, ...] = DEFAULT_EXPORT  # model.tflite, and any of saved_model, keras
    hparams: HParams = field(default_factory=HParams)


@dataclass(frozen=True)
class Bottlenecks:
    """The vectors and integer labels of one split, with the files they came from."""

    features: np.ndarray
    labels: np.ndarray
    paths: list[Path]


@dataclass(frozen=True)
class Trained:
    """What training produced: the head, its history, and every split's vectors under the final backbone."""

    head: Head
    history: list[EvalRecord]
    splits: dict[str, Bottlenecks]
    extraction: ExtractionStats
    end_to_end: bool = False  # the backbone changed: no cross-validation on cached vectors
    fine_tuning_from_step: int | None = None
    seconds: float = 0.0  # in the training loops (head and backbone), not extraction or export
    backbone: Backbone | None = None  # what the head's features come from, if not the run's backbone
    feature_set: str = FINAL
    feature_choice: FeatureChoice | None = None


@dataclass(frozen=True)
class Evaluation:
    """Hold-out results: on the test split, or cross-validated when there is none."""

    accuracy: float | None
    count: int
    labels: np.ndarray  # true classes of the images scored
    predictions: np.ndarray
    paths: list[Path]
    cross_validation: CrossValidation | None = None


@dataclass(frozen=True)
class RunResult:
    output_dir: Path
    test_accuracy: float | None
    test_count: int
    extraction: ExtractionStats
    head: Head
    evaluation: Evaluation | None = None


def run(config: RetrainConfig) -> RunResult:
    """Runs the whole job; RetrainError for anything the user can fix, raised before heavy work."""
    started = time.monotonic()
    check_options(config)
    image_set = discover(config.image_dir, config.validation_percentage, config.testing_percentage)
    seed = config.hparams.random_seed
    image_set = limit_training(image_set, config.train_fraction, config.train_images_per_class, seed)
    output_dir = _export_target(config)
    if isinstance(output_dir, NextVersion):
        check_writable(output_dir.model_root, "--models_dir")
    else:
        check_output_dir(output_dir)
    bottleneck_dir = Path(config.bottleneck_dir) if config.bottleneck_dir else user_cache_dir() / "bottlenecks"
    check_writable(bottleneck_dir, "--bottleneck_dir")
    if config.saved_model_dir:
        check_writable(config.saved_model_dir, "--saved_model_dir")
    if config.output_labels:
        check_writable(config.output_labels, "--output_labels")
    if not config.tfhub_module and not config.base_model and config.architecture != AUTO:
        registered(config.architecture)
    report.image_set_summary(image_set)

    architectures = _architectures(config, image_set)
    if len(architectures) > 1:
        report.few_images(_images_per_class(image_set), architectures)
    networks = [
        load_backbone(architecture, config.weights_file, config.tfhub_module, config.image_size, config.base_model)
        for architecture in architectures
    ]
    for network in networks:
        report.backbone_summary(network)
        _check_feature_set(config.bottleneck_layers, network)
    if config.fine_tune_layers:
        from retrain.finetune import unfreeze_top

        for network in networks:
            unfreeze_top(network, config.fine_tune_layers)  # fails now, not after extraction, if it cannot
    backbone = networks[0]
    if backbone.from_scratch:
        if config.ray_address:
            raise RetrainError(f"--ray_address computes bottlenecks; {backbone.cache_id} trains from scratch on pixels")
        trained = _train_from_scratch(config, image_set, backbone)
    else:
        trained = _train_on_bottlenecks(config, image_set, networks, bottleneck_dir)
    evaluation = _evaluate(config, trained, image_set.labels)
    report.evaluation(evaluation, image_set.labels)
    if config.print_misclassified_test_images:
        report.misclassified(
            [
                (path, image_set.labels[predicted])
                for path, truth, predicted in zip(
                    evaluation.paths, evaluation.labels, evaluation.predictions, strict=True
                )
                if predicted != truth
            ]
        )

    backbone = trained.backbone or backbone
    info = ModelInfo(
        labels=image_set.labels,
        input_spec=backbone.input_spec,
        backbone=backbone.cache_id,
        details=_details(config, image_set, trained, evaluation, started),
    )
    calibration = _quantization_images(image_set, info.input_spec)
    exported = _export(config, output_dir, backbone, trained, evaluation, info, bottleneck_dir, started, calibration)
    return RunResult(exported, evaluation.accuracy, evaluation.count, trained.extraction, trained.head, evaluation)


def _export_target(config: RetrainConfig) -> Path | NextVersion:
    """--output_dir as given, else the next version of the model named by --model_name or the image folder."""
    if config.output_dir:
        return Path(config.output_dir)
    name = config.model_name or Path(config.image_dir).expanduser().resolve().name
    where = "--model_name" if config.model_name else "--model_name (by default the image folder's name)"
    return NextVersion(Path(config.models_dir), check_model_name(name, where))


def _export(
    config: RetrainConfig,
    output_dir: Path | NextVersion,
    backbone: Backbone,
    trained: Trained,
    evaluation: Evaluation,
    info: ModelInfo,
    bottleneck_dir: Path,
    started: float,
    calibration: Callable[[], tuple[list[np.ndarray], list[np.ndarray]]],
) -> Path:
    """The export, with the report plots drawn into it before it appears, and the copies the flags ask
    for taken from it then too (under its lock: after, another run's export may already replace it)."""
    formats = (*config.export, "saved_model") if config.saved_model_dir else config.export
    report.exporting(output_dir, formats)
    export_started = time.monotonic()
    plot_seconds = 0.0

    def complete(folder: Path) -> None:
        nonlocal plot_seconds
        if config.saved_model_dir:
            shutil.copytree(folder / SAVED_MODEL_DIR, config.saved_model_dir, dirs_exist_ok=True)
        if config.output_labels:
            shutil.copyfile(folder / LABELS_TXT, config.output_labels)
        plots_started = time.monotonic()
        try:
            _write_plots(folder, trained, evaluation, info.labels)
        except Exception as e:  # matplotlib, fonts, a full disk: worth a warning, not the model
            log.warning("the report plots could not be drawn (%s: %s); the model is exported", type(e).__name__, e)
        plot_seconds = time.monotonic() - plots_started

    exported: Exported = export_model(
        output_dir,
        backbone,
        trained.head,
        info,
        formats=formats,
        update_latest=config.output_dir is None,
        feature_model=None if trained.end_to_end else _feature_model(backbone, bottleneck_dir),
        complete=complete,
        author=config.model_author,
        license=config.model_license,
        score=_test_scorer(evaluation, info.input_spec),
        calibration=calibration,
    )
    export_seconds = time.monotonic() - export_started - plot_seconds
    report.exported(exported, export_seconds, plot_seconds, time.monotonic() - started)
    if exported.variants:
        report.variants(exported.variants)
    return exported.path


def _test_scorer(evaluation: Evaluation, spec: InputSpec) -> Callable[[bytes], float | None] | None:
    """A TFLite model's accuracy on the test images, run end to end with LiteRT (the way a device runs
    it); None where there is no test split (cross-validation)."""
    if evaluation.cross_validation is not None or not evaluation.count:
        return None

    def score(model: bytes) -> float:
        from serve.runtime import Runner

        runner, right = Runner(model, threads=os.cpu_count() or 1), 0
        for start in range(0, len(evaluation.paths), 32):
            paths = evaluation.paths[start : start + 32]
            pixels = np.stack([preprocess(read_regular_file(path), spec) for path in paths])
            truth = evaluation.labels[start : start + 32]
            right += int((np.argmax(runner.scores(pixels), axis=1) == truth).sum())
        return right / len(evaluation.paths)

    return score


def _quantization_images(
    image_set: ImageSet, spec: InputSpec
) -> Callable[[], tuple[list[np.ndarray], list[np.ndarray]]]:
    """What an int8 export is made with: up to CALIBRATION_IMAGES training images, which set the
    activations' ranges, and up to CHECK_IMAGES validation and test images, on which it must agree
    with the float model; each taken evenly along its sorted split (so every class is in it),
    preprocessed as served. Unreadable ones are left out (training skipped them too)."""

    def images() -> tuple[list[np.ndarray], list[np.ndarray]]:
        held_out = [*image_set.splits["validation"], *image_set.splits["testing"]]
        return _spread(image_set.splits["training"], CALIBRATION_IMAGES, spec), _spread(held_out, CHECK_IMAGES, spec)

    return images


def _spread(examples: list[Example], count: int, spec: InputSpec) -> list[np.ndarray]:
    chosen = sorted(examples, key=lambda example: example.relpath)
    chosen = chosen[:: max(1, len(chosen) // count)][:count]
    pixels = []
    for example in chosen:
        try:
            pixels.append(preprocess(read_regular_file(example.path), spec)[None])
        except (OSError, ValueError):
            continue
    return pixels


def _architectures(config: RetrainConfig, image_set: ImageSet) -> list[str]:
    """The registry backbones whose feature sets are candidates: `--architecture`'s, or for auto
    Lite0 and, with few training images and no other weights, Lite2 too (FEW_IMAGES_PER_CLASS)."""
    if config.architecture != AUTO:
        return [config.architecture]
    others = config.weights_file or config.tfhub_module or config.base_model
    if others or _images_per_class(image_set) > FEW_IMAGES_PER_CLASS:
        return [DEFAULT_ARCHITECTURE]
    return [DEFAULT_ARCHITECTURE, FEW_IMAGES_BACKBONE]


def _images_per_class(image_set: ImageSet) -> float:
    return len(image_set.splits["training"]) / max(len(image_set.labels), 1)


def _taps_of(backbone: Backbone | None) -> tuple[Tap, ...]:
    return (backbone.taps or ()) if backbone else ()


def _check_feature_set(name: str, backbone: Backbone) -> None:
    sets = feature_sets(backbone)
    if name != AUTO and name not in sets:
        raise RetrainError(f"--bottleneck_layers {name!r}: {backbone.cache_id} offers {', '.join([AUTO, *sets])}")


def check_options(config: RetrainConfig) -> None:
    """Flag combinations that cannot work, refused before any work."""
    if config.head not in HEADS:
        raise RetrainError(f"unknown --head {config.head!r}; choose from {', '.join(HEADS)}")
    parse_formats(",".join(config.export))
    known = dict.fromkeys([AUTO, *(name for sets in FEATURE_SETS.values() for name in sets)])
    if config.bottleneck_layers not in known:
        raise RetrainError(f"--bottleneck_layers {config.bottleneck_layers!r}: choose from {', '.join(known)}")
    trained_layers = config.hparams.hidden_units or config.hparams.dropout or config.fine_tune_layers
    if config.head == "prototype" and trained_layers:
        raise RetrainError(
            "--head prototype trains nothing: --hidden_units, --dropout and --fine_tune_layers need --head softmax"
        )
    if config.fine_tune_layers and config.tfhub_module:
        raise RetrainError("--fine_tune_layers works with Keras backbones (--architecture, --base_model), not TF Hub")
    if config.train_fraction is not None and config.train_images_per_class is not None:
        raise RetrainError("use either --train_fraction or --train_images_per_class, not both")
    if config.decode_memory_mb < 1:
        raise RetrainError(f"--decode_memory_mb must be at least 1, not {config.decode_memory_mb}")
    if config.augmentation_copies and not config.augmentation.enabled:
        raise RetrainError(
            "--augmentation_copies needs a distortion: --flip_left_right, --random_crop, --random_scale "
            "or --random_brightness"
        )


def _train_on_bottlenecks(
    config: RetrainConfig, image_set: ImageSet, networks: list[Backbone], bottleneck_dir: Path
) -> Trained:
    """Cached vectors of every candidate feature set (one pass per network) -> the set that suits
    the data -> head; then, with --fine_tune_layers, the top of the backbone on decoded images."""
    names = {network.name: _candidate_sets(config, network) for network in networks}
    joints = [tapped(network, joint_taps(list(names[network.name].values()))) for network in networks]
    cluster = _join_cluster(config, image_set, bottleneck_dir) if config.ray_address else None
    extracted = []
    try:
        for joint in joints:
            cache = bottleneck_cache(bottleneck_dir, tap_caches(joint))
            runtime = partial(open_runtime, joint, bottleneck_dir, config.runtime)
            splits, extraction, seconds = _bottlenecks(
                image_set,
                joint,
                cache,
                config.extraction_batch_size,
                runtime,
                _budget(config),
                cluster and cluster(joint),
            )
            report.extraction_summary(extraction, seconds, cache.directory)
            extracted.append((splits, extraction, cache, runtime))
    finally:
        if cluster:
            from retrain.cluster import disconnect

            disconnect()
    per_network = _common_images([splits for splits, *_ in extracted])
    if len(set(per_network[0]["training"].labels.tolist())) < 2:
        raise RetrainError("fewer than two classes have decodable training images; nothing to learn")
    splits = {split: _side_by_side([one[split] for one in per_network]) for split in SPLITS}
    extraction = _added([stats for _, stats, *_ in extracted])
    train, validation = splits["training"], splits["validation"]
    if config.augmentation_copies:
        train = _side_by_side(
            [
                _with_augmented_copies(config, one["training"], joint, cache, runtime)
                for one, joint, (_, _, cache, runtime) in zip(per_network, joints, extracted, strict=True)
            ]
        )
    num_classes = len(image_set.labels)
    started = time.monotonic()
    candidates: dict[str, tuple[Backbone, str]] = {}  # name shown -> (network, feature set)
    columns: dict[str, np.ndarray] = {}
    offset = 0
    for network, joint in zip(networks, joints, strict=True):
        for name, taps in names[network.name].items():
            shown = name if len(networks) == 1 else f"{network.name} {name}"
            candidates[shown] = (network, name)
            columns[shown] = offset + columns_of(joint, taps)
        offset += joint.feature_dim
    choice = None
    if len(columns) > 1:
        preferred = [shown for shown, (_, name) in candidates.items() if name == PREFERRED]
        choice = _choose_features(config, columns, train, validation, num_classes, bottleneck_dir, preferred)
        report.feature_choice(choice)
    shown = choice.chosen if choice else next(iter(columns))
    network, chosen = candidates[shown]
    backbone = tapped(network, names[network.name][chosen])
    splits = {
        split: replace(bottlenecks, features=bottlenecks.features[:, columns[shown]])
        for split, bottlenecks in splits.items()
    }
    train = replace(train, features=train.features[:, columns[shown]])
    validation = splits["validation"]
    features = {"backbone": backbone, "feature_set": chosen, "feature_choice": choice}
    if config.head == "prototype":
        head = fit_prototypes(train.features, train.labels, num_classes)
        report.prototype_head(head, train, validation)
        return Trained(head, [], splits, extraction, seconds=time.monotonic() - started, **features)
    head, history = train_head(
        train.features,
        train.labels,
        validation.features,
        validation.labels,
        num_classes,
        config.hparams,
        on_eval=report.eval_step,
        summaries_dir=config.summaries_dir,
    )
    if not config.fine_tune_layers:
        return Trained(head, history, splits, extraction, seconds=time.monotonic() - started, **features)
    from retrain.finetune import features_of, train_end_to_end

    hparams = config.hparams
    learning_rate = config.fine_tune_learning_rate
    _, fitted = accuracy_and_cross_entropy(head.probabilities(train.features), train.labels)
    report.fine_tuning(config.fine_tune_layers, config.fine_tune_steps, learning_rate, fitted)
    head_seconds = time.monotonic() - started
    pixels = _decode(splits, backbone, _budget(config))
    training = _with_augmented_pixels(config, pixels["training"], splits["training"].paths, backbone)
    started = time.monotonic()
    head, more = train_end_to_end(
        backbone,
        head,
        training,
        pixels["validation"],
        config.fine_tune_layers,
        config.fine_tune_steps,
        learning_rate,
        hparams,
        first_step=hparams.how_many_training_steps,
        on_eval=report.eval_step,
    )
    tuned = {split: replace(splits[split], features=features_of(backbone, pixels[split].images)) for split in SPLITS}
    seconds = head_seconds + time.monotonic() - started
    return Trained(head, history + more, tuned, extraction, True, hparams.how_many_training_steps, seconds, **features)


def _train_from_scratch(config: RetrainConfig, image_set: ImageSet, backbone: Backbone) -> Trained:
    """A backbone without pretrained weights trains end to end with its head on decoded images."""
    from retrain.finetune import Pixels, decode_images, features_of, train_end_to_end

    examples = [example for split in SPLITS for example in image_set.splits[split]]
    started = time.monotonic()
    images, skipped = decode_images([e.path for e in examples], backbone.input_spec, _budget(config))
    extraction = ExtractionStats(computed=len(examples) - len(skipped), skipped=skipped)
    report.decoded_for_training(extraction, time.monotonic() - started)
    bad = {path for path, _ in skipped}
    pixels, start = {}, 0
    for split in SPLITS:
        members = image_set.splits[split]
        keep = [i for i, e in enumerate(members) if e.path not in bad]
        labels = np.array([members[i].label_index for i in keep], dtype=np.int32)
        pixels[split] = Pixels(images[start : start + len(members)][keep], labels)
        start += len(members)
    if len(set(pixels["training"].labels.tolist())) < 2:
        raise RetrainError("fewer than two classes have decodable training images; nothing to learn")
    training_paths = [e.path for e in image_set.splits["training"] if e.path not in bad]
    training_pixels = _with_augmented_pixels(config, pixels["training"], training_paths, backbone)
    hparams = config.hparams
    head = initial_softmax_head(backbone.feature_dim, len(image_set.labels), hparams)
    started = time.monotonic()
    head, history = train_end_to_end(
        backbone,
        head,
        training_pixels,
        pixels["validation"],
        None,
        hparams.how_many_training_steps,
        hparams.learning_rate or SCRATCH_LEARNING_RATE,
        hparams,
        on_eval=report.eval_step,
    )
    seconds = time.monotonic() - started
    splits = {
        split: Bottlenecks(
            features_of(backbone, pixels[split].images),
            pixels[split].labels,
            [e.path for e in image_set.splits[split] if e.path not in bad],
        )
        for split in SPLITS
    }
    return Trained(head, history, splits, extraction, end_to_end=True, seconds=seconds)


def _candidate_sets(config: RetrainConfig, network: Backbone) -> dict[str, tuple[Tap, ...] | None]:
    """The network's feature sets `--bottleneck_layers` asks for: all of them for auto."""
    sets = feature_sets(network)
    return sets if config.bottleneck_layers == AUTO else {config.bottleneck_layers: sets[config.bottleneck_layers]}


def _common_images(per_network: list[dict[str, Bottlenecks]]) -> list[dict[str, Bottlenecks]]:
    """Each network's splits cut to the images every network read, in the first network's order,
    so their vectors can stand side by side (a file unreadable for one is dropped for all)."""
    if len(per_network) == 1:
        return per_network
    aligned = [{} for _ in per_network]
    for split in SPLITS:
        rows = [{path: row for row, path in enumerate(splits[split].paths)} for splits in per_network]
        paths = [path for path in per_network[0][split].paths if all(path in row_of for row_of in rows)]
        for splits, row_of, out in zip(per_network, rows, aligned, strict=True):
            kept = np.array([row_of[path] for path in paths], dtype=np.int64)
            bottlenecks = splits[split]
            out[split] = Bottlenecks(bottlenecks.features[kept], bottlenecks.labels[kept], paths)
    return aligned


def _side_by_side(parts: list[Bottlenecks]) -> Bottlenecks:
    """The same images' vectors from several networks, concatenated column-wise."""
    if len(parts) == 1:
        return parts[0]
    return Bottlenecks(np.concatenate([part.features for part in parts], axis=1), parts[0].labels, parts[0].paths)


def _added(stats: list[ExtractionStats]) -> ExtractionStats:
    """Several networks' extraction as one: counts and set-up added, each skipped file once."""
    if len(stats) == 1:
        return stats[0]
    skipped = list({path: (path, reason) for one in stats for path, reason in one.skipped}.values())
    return ExtractionStats(
        cached=sum(one.cached for one in stats),
        computed=sum(one.computed for one in stats),
        duplicates=sum(one.duplicates for one in stats),
        runtime=next((one.runtime for one in stats if one.runtime), None),
        setup_seconds=sum(one.setup_seconds for one in stats),
        skipped=skipped,
    )


def _with_augmented_copies(
    config: RetrainConfig,
    train: Bottlenecks,
    backbone: Backbone,
    cache: BottleneckCache,
    runtime: Callable[[], FeatureRuntime],
) -> Bottlenecks:
    """The training vectors plus K cached augmented copies of each image (never of hold-out images)."""
    copies, seed = config.augmentation_copies, config.hparams.random_seed
    started = time.monotonic()
    vectors, ok, stats = compute_bottlenecks(
        train.paths,
        backbone,
        cache,
        config.extraction_batch_size,
        augmentation=config.augmentation,
        copies=copies,
        seed=seed,
        runtime=runtime,
        budget=_budget(config),
    )
    report.augmentation_summary(config.augmentation, copies, stats, time.monotonic() - started)
    features = np.concatenate([train.features, vectors[ok].reshape(-1, backbone.feature_dim)])
    labels = np.concatenate([train.labels, np.repeat(train.labels[ok], copies)])
    return Bottlenecks(features, labels, train.paths)


def _with_augmented_pixels(config: RetrainConfig, train: Pixels, paths: list[Path], backbone: Backbone) -> Pixels:
    """For training through the backbone: the same K augmented copies, as pixels."""
    if not config.augmentation_copies:
        return train
    from retrain.finetune import Pixels

    copies, seed, spec = config.augmentation_copies, config.hparams.random_seed, backbone.input_spec
    budget = _budget(config)
    extra = []
    for path in paths:
        data = read_regular_file(path)
        digest = image_digest(data)
        with decoded(data, budget=budget) as image:
            extra += [variant_pixels(image, digest, spec, config.augmentation, copy, seed) for copy in range(copies)]
    images = np.concatenate([train.images, np.stack(extra)]) if extra else train.images
    report.augmented_pixels(config.augmentation, copies, len(extra))
    return Pixels(images, np.concatenate([train.labels, np.repeat(train.labels, copies)]))


def _decode(splits: dict[str, Bottlenecks], backbone: Backbone, budget: DecodeBudget) -> dict[str, Pixels]:
    """Decoded pixels of the images whose bottlenecks were computed, split by split."""
    from retrain.finetune import Pixels, decode_images

    pixels = {}
    for split in SPLITS:
        images, _ = decode_images(splits[split].paths, backbone.input_spec, budget)
        pixels[split] = Pixels(images, splits[split].labels)
    return pixels


def _budget(config: RetrainConfig) -> DecodeBudget:
    """The decoding budget of a stage (`retrain.extract.DECODE_MEMORY_BYTES`); stages run one after another."""
    return DecodeBudget(config.decode_memory_mb * 2**20)


def _evaluate(config: RetrainConfig, trained: Trained, labels: list[str]) -> Evaluation:
    """Test accuracy; without test images, cross-validation of the head on the other labelled vectors."""
    test = trained.splits["testing"]
    if len(test.labels):
        index = _test_index(len(test.labels), config.test_batch_size, config.hparams.random_seed)
        probabilities = trained.head.probabilities(test.features[index])
        accuracy, _ = accuracy_and_cross_entropy(probabilities, test.labels[index])
        predictions = np.argmax(probabilities, axis=1)
        return Evaluation(accuracy, len(index), test.labels[index], predictions, [test.paths[i] for i in index])
    if trained.end_to_end:
        return Evaluation(None, 0, np.zeros(0, np.int32), np.zeros(0, np.int64), [])
    pooled = [trained.splits[split] for split in ("training", "validation")]
    features = np.concatenate([split.features for split in pooled])
    truth = np.concatenate([split.labels for split in pooled])
    validation = cross_validate(features, truth, _refit(config, len(labels)), config.hparams.random_seed)
    paths = [path for split in pooled for path in split.paths]
    return Evaluation(validation.accuracy, len(truth), truth, validation.predictions, paths, validation)


def _choose_features(
    config: RetrainConfig,
    columns: dict[str, np.ndarray],
    train: Bottlenecks,
    validation: Bottlenecks,
    num_classes: int,
    bottleneck_dir: Path,
    preferred: list[str],
) -> FeatureChoice:
    """The feature set that suits held-out images (retrain.choice.pick); remembered beside the cache for reruns."""
    seed = config.hparams.random_seed
    data = (train.features, train.labels), (validation.features, validation.labels)
    memo = ChoiceMemo(bottleneck_dir / "choices")
    key = memo.key(columns, *data, fitted_by=f"{config.head}|{config.hparams!r}", seed=seed, preferred=preferred)
    choice = memo.recall(key)
    if choice is None:
        choice = choose_features(columns, *data, _refit(config, num_classes), seed, preferred)
        memo.remember(key, choice)
    return choice


def _refit(config: RetrainConfig, num_classes: int):
    """How cross-validation refits the head on a subset: the same head, trained the same way, silently."""
    if config.head == "prototype":
        return lambda features, labels: fit_prototypes(features, labels, num_classes)
    return lambda features, labels: train_head(features, labels, features[:0], labels[:0], num_classes, config.hparams)[
        0
    ]


def _join_cluster(config: RetrainConfig, image_set: ImageSet, bottleneck_dir: Path) -> Callable:
    """Connects to --ray_address and checks that every node sees the folders, before any heavy work;
    returns what, given a backbone, computes its missing bottlenecks there (retrain.cluster.RayExtraction)."""
    from retrain import cluster

    info = cluster.connect(config.ray_address)
    report.cluster_summary(info)
    root = bottleneck_dir.absolute()  # workers do not share the driver's working directory
    try:
        cluster.check_nodes_see(Path(config.image_dir).absolute(), image_set.labels, root)
    except RetrainError:
        cluster.disconnect()  # a private cluster (`local`) stops now, not at interpreter exit
        raise

    def extraction(backbone: Backbone):
        cache = bottleneck_cache(root, tap_caches(backbone))
        memory = config.decode_memory_mb * 2**20
        return cluster.RayExtraction(backbone, cache, config.runtime, config.extraction_batch_size, memory)

    return extraction


def _bottlenecks(
    image_set: ImageSet,
    backbone: Backbone,
    cache: BottleneckCache,
    batch_size: int,
    runtime: Callable[[], FeatureRuntime],
    budget: DecodeBudget,
    cluster: Callable | None = None,
) -> tuple[dict[str, Bottlenecks], ExtractionStats, float]:
    """Vectors for every split in one extraction pass; undecodable files are dropped from their split."""
    examples = [example for split in SPLITS for example in image_set.splits[split]]
    started = time.monotonic()
    paths = [e.path for e in examples]
    vectors, ok, stats = compute_bottlenecks(
        paths, backbone, cache, batch_size, runtime=runtime, cluster=cluster, budget=budget
    )
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


def _feature_model(backbone: Backbone, bottleneck_dir: Path) -> Path | None:
    """The backbone's TFLite feature model for a composed export (converted now if the run had every
    vector cached); None if it will not convert, and the export converts the whole network instead."""
    try:
        return cached_feature_model(backbone, bottleneck_dir)
    except ConversionError as e:
        log.info("%s does not convert to TFLite (%s); converting the exported model as a whole", backbone.cache_id, e)
        return None


def _test_index(count: int, batch_size: int, seed: int) -> np.ndarray:
    """The test images scored: all of them for -1, else a random batch (retrain.py's --test_batch_size)."""
    if batch_size < 0:
        return np.arange(count)
    return np.random.default_rng(seed + 1).integers(0, count, size=batch_size)


def _write_plots(folder: Path, trained: Trained, evaluation: Evaluation, labels: list[str]) -> None:
    """confusion_matrix.png (of whatever the accuracy was measured on) and training_curves.png."""
    from retrain import metrics, plots

    if evaluation.count:
        where = evaluation.cross_validation.describe() if evaluation.cross_validation else "test set"
        matrix = metrics.confusion_matrix(evaluation.labels, evaluation.predictions, len(labels))
        title = f"Confusion matrix, {where} ({evaluation.count} images)"
        figure = plots.confusion_matrix_figure(matrix, labels, title)
        plots.save_png(figure, folder / CONFUSION_MATRIX_PNG, {"Title": title, "Classes": json.dumps(labels)})
    if trained.history:
        history = trained.history
        figure = plots.training_curves_figure(
            [r.step for r in history],
            [r.train_accuracy for r in history],
            [r.validation_accuracy for r in history],
            [r.cross_entropy for r in history],
            [r.validation_cross_entropy for r in history],
            phase_boundary=trained.fine_tuning_from_step,
        )
        plots.save_png(figure, folder / TRAINING_CURVES_PNG, {"Title": "Training curves"})


def _details(
    config: RetrainConfig, image_set: ImageSet, trained: Trained, evaluation: Evaluation, started: float
) -> dict:
    """What model.json records beyond the runtime contract: metrics, flags, counts, versions."""
    from retrain import metrics

    splits, extraction = trained.splits, trained.extraction
    last = trained.history[-1] if trained.history else None
    per_class = metrics.per_class_metrics(evaluation.labels, evaluation.predictions, image_set.labels)
    cross_validation = evaluation.cross_validation
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "head": trained.head.describe(),
        "bottlenecks": {
            "features": trained.feature_set,
            "taps": [tap.describe() for tap in _taps_of(trained.backbone)],
            "dims": int(trained.splits["training"].features.shape[1]),
            "choice": trained.feature_choice.to_json() if trained.feature_choice else None,
        },
        "metrics": {
            "test_accuracy": None if cross_validation else evaluation.accuracy,
            "test_count": 0 if cross_validation else evaluation.count,
            "cross_validation": cross_validation.to_json() if cross_validation else None,
            "per_class": metrics.to_json(per_class) if evaluation.count else [],
            "macro_f1": metrics.macro_f1(per_class) if evaluation.count else None,
            "macro_f1_classes": [m.label for m in metrics.averaged(per_class)],  # with support: what it averages
            "final_train_accuracy": last.train_accuracy if last else None,
            "final_cross_entropy": last.cross_entropy if last else None,
            "final_validation_accuracy": _accuracy(trained.head, splits["validation"]),
            "validation_count": len(splits["validation"].labels),
        },
        "training": {
            "seconds": round(trained.seconds, 2),
            "augmentation": {**config.augmentation.to_json(), "copies": config.augmentation_copies},
            "end_to_end": trained.end_to_end,
            "fine_tuning_from_step": trained.fine_tuning_from_step,
            "history": [asdict(record) for record in trained.history],
        },
        "counts": {
            **{f"{split}_images": len(splits[split].labels) for split in SPLITS},
            "skipped_images": len(extraction.skipped),
            "skipped_files": [printable(path) for path, _ in extraction.skipped],
            "skipped_entries": [{"path": printable(e.relpath), "reason": e.reason} for e in image_set.skipped],
            "ignored_non_image_files": image_set.ignored_files,
            "per_class": image_set.class_counts(),
            "classes_without_holdout": image_set.small_classes,
            "bottlenecks_from_cache": extraction.cached,
            "bottlenecks_computed": extraction.computed,
        },
        "flags": {k: v for k, v in asdict(config).items() if k not in ("hparams", "augmentation")}
        | asdict(config.hparams)
        | config.augmentation.to_json(),
        "versions": {
            "retrain": __version__,
            "python": platform.python_version(),
            **{name: _version(name) for name in ("tensorflow", "keras", "numpy", "pillow", "ai-edge-litert")},
        },
        "training_seconds": round(time.monotonic() - started, 1),
    }


def _accuracy(head: Head, split: Bottlenecks) -> float | None:
    """The head's accuracy on a whole split (the logged validation steps score a random batch of it)."""
    if not len(split.labels):
        return None
    return accuracy_and_cross_entropy(head.probabilities(split.features), split.labels)[0]


def _version(distribution: str) -> str | None:
    """An installed package's version, from its metadata (importing TensorFlow to ask costs seconds)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
