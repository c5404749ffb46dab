"""Export of a trained classifier: model.tflite for serve, labels, model.json, and on request the
SavedModel (TensorFlow Serving) and model.keras.

Everything, report plots included, is written into a hidden staging folder next to the destination
and renamed into place at the end, so an export is either complete or absent. Exports to one folder
take turns: each holds an exclusive `flock` on `.<name>.lock` beside it from creating its staging
folder until its rename, and a second run waits (saying so) instead of renaming its folder over one
still being written, or listing another run's temporary files as its own. `model.tflite` takes already-preprocessed
pixels, which serve computes with `serve.preprocess`, and carries TFLite Model Metadata (the input's
normalisation, labels.txt packed inside: `retrain.tflite_metadata`) so that MediaPipe Tasks loads it
as it is; when the backbone's converted feature model
is cached, it is that model with the head appended (`retrain.tflite_head`), which needs no
TensorFlow, and model.json records the digest of that backbone (`shared_backbone`), by which serve
runs one backbone for every export that has it. The SavedModel's `serving_default` takes encoded
image bytes and decodes them in TensorFlow with the same steps (`retrain.tensorflow_export`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from retrain.backbones import Backbone
from retrain.errors import RetrainError
from retrain.heads import Head
from retrain.paths import check_writable
from retrain.quantize import VARIANTS, quantize
from retrain.quiet import import_tensorflow_quietly
from retrain.tflite_graph import operator_count
from retrain.tflite_head import append_head
from retrain.tflite_metadata import ModelCard, add_metadata
from serve.model_info import (
    KERAS_MODEL_FILE,
    MODEL_JSON,
    SAVED_MODEL_DIR,
    SHARED_BACKBONE,
    TFLITE_FILE,
    ModelInfo,
    SharedBackbone,
)
from serve.models import LATEST_LINK, model_name_problem
from serve.models.split import split_export
from serve.text import printable

log = logging.getLogger(__name__)

# model.tflite is always written: serve runs it. tflite_fp16 and tflite_int8 are smaller copies (retrain.quantize).
EXPORT_FORMATS = ("tflite", "tflite_fp16", "tflite_int8", "saved_model", "keras")
DEFAULT_EXPORT = ("tflite",)
DEFAULT_AUTHOR = "retrain"  # model.tflite's metadata: --model_author, --model_license
DEFAULT_LICENSE = "Apache-2.0"  # the default backbones' weights are Apache-2.0; your images may say otherwise


@dataclass(frozen=True)
class Exported:
    """Where the export is, and what it held when it was renamed into place (a later export may replace it)."""

    path: Path
    files: list[str]  # names, a folder's with a trailing "/"
    variants: dict[str, dict] = field(default_factory=dict)  # model.json's `variants`: each TFLite file


@dataclass(frozen=True)
class NextVersion:
    """Where a versioned export goes: `<models_dir>/<name>/<version>`, the version the next integer,
    chosen under the model's export lock so that two runs exporting at once get two versions."""

    models_dir: Path
    name: str

    @property
    def model_root(self) -> Path:
        return self.models_dir / self.name

    def version_dir(self) -> Path:
        versions = [int(p.name) for p in _entries(self.model_root) if p.name.isdigit() and p.is_dir()]
        return self.model_root / str(max(versions, default=0) + 1)


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []


def check_model_name(name: str, where: str = "--model_name") -> str:
    """The name, if it is one TF Serving and a URL path accept, and not the `latest` link's."""
    problem = model_name_problem(name, where)
    if problem:
        raise RetrainError(problem)
    return name


def check_output_dir(output_dir: str | Path) -> None:
    """Fails early, before any work, when the export could not be written; creates nothing."""
    target = Path(output_dir)
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / MODEL_JSON).exists())):
        raise RetrainError(f"--output_dir {printable(output_dir)} exists and is not an earlier export; choose another")
    check_writable(target, "--output_dir")


def parse_formats(text: str) -> tuple[str, ...]:
    """`--export tflite,saved_model,keras` -> the formats, model.tflite always among them."""
    asked = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in asked if name not in EXPORT_FORMATS]
    if unknown:
        raise RetrainError(f"unknown --export format {unknown[0]!r}; choose from {', '.join(EXPORT_FORMATS)}")
    return tuple(name for name in EXPORT_FORMATS if name == "tflite" or name in asked)


def export_model(
    output_dir: str | Path | NextVersion,
    backbone: Backbone,
    head: Head,
    info: ModelInfo,
    formats: Collection[str] = DEFAULT_EXPORT,
    update_latest: bool = False,
    feature_model: Path | None = None,
    complete: Callable[[Path], None] | None = None,
    author: str = DEFAULT_AUTHOR,
    license: str = DEFAULT_LICENSE,
    score: Callable[[bytes], float | None] | None = None,
    calibration: Callable[[], tuple[Sequence[np.ndarray], Sequence[np.ndarray]]] | None = None,
) -> Exported:
    """Writes the export atomically, one export to `output_dir` at a time; with `update_latest`,
    repoints `latest` in the models folder at it. For a NextVersion, the version is chosen under
    the model's lock, as the next integer.

    `formats` adds `saved_model` and `keras` to model.tflite. `feature_model`, the backbone's
    converted TFLite feature model (when the backbone is exactly the one exported, not
    fine-tuned), makes model.tflite by appending the head to it instead of converting the whole
    network with TensorFlow. `complete`, called with the staging folder once the model is in it,
    adds what else the export holds (the report plots): it appears with the model, in the same rename.
    `author` and `license` go into model.tflite's metadata (`model_card`), with the model's name and version.
    With quantized variants among `formats`, model.json's `variants` gives each TFLite file's size and,
    with `score` (a model's flatbuffer -> its test accuracy), its accuracy; tflite_int8 is calibrated on
    and checked against what `calibration` returns (preprocessed training and held-out images).
    """
    versioned = output_dir if isinstance(output_dir, NextVersion) else None
    locked = versioned.model_root if versioned else Path(output_dir)
    locked.parent.mkdir(parents=True, exist_ok=True)
    if versioned:
        locked.mkdir(exist_ok=True)
    with export_lock(locked):
        target = versioned.version_dir() if versioned else locked
        staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
        staging.mkdir()  # unlike mkdtemp, keeps the umask's permissions: an export is meant to be shared
        try:
            name = versioned.name if versioned else target.name
            version = target.name if versioned else str(info.details.get("created") or "1")
            card = model_card(info, name, version, author, license)
            written, shared = _write_models(staging, backbone, head, info, formats, feature_model, card)
            details = {**info.details, SHARED_BACKBONE: shared.to_json()} if shared else info.details
            variants = _write_variants(staging, info, formats, card, score, calibration)
            if variants:
                written.update({name: entry["file"] for name, entry in variants.items() if name != "tflite"})
                details = {**details, "variants": variants}
            replace(info, files={**info.files, **written}, details=details).write(staging)
            if complete is not None:
                complete(staging)
            files = sorted(p.name + ("/" if p.is_dir() else "") for p in staging.iterdir())
            _move_into_place(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if update_latest:
            point_latest_at(target, versioned.models_dir if versioned else target.parent)
    return Exported(target, files, variants)


@contextmanager
def export_lock(target: Path) -> Iterator[None]:
    """Holds the exclusive lock on exports to `target`, waiting for another export's turn to end.

    The lock is a `flock` on `.<name>.lock` beside `target`, so the kernel releases it when a run dies.
    The file is removed before the lock is let go; a waiter that then locks the removed file sees that
    it is no longer the one at that path, and opens the path again.
    """
    path = target.parent / f".{target.name}.lock"
    descriptor = _lock(path, target)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(descriptor)


def _lock(path: Path, target: Path) -> int:
    """An open descriptor of the file at `path`, exclusively locked."""
    said = False
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not said:
                    log.warning("waiting for another export to %s to finish", printable(target))
                    said = True
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            if _is_at(descriptor, path):
                return descriptor
        except BaseException:
            os.close(descriptor)
            raise
        os.close(descriptor)


def _is_at(descriptor: int, path: Path) -> bool:
    """Whether the open file is still the one at `path` (not removed, nor replaced, since it was opened)."""
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    here = os.fstat(descriptor)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _write_models(
    folder: Path,
    backbone: Backbone,
    head: Head,
    info: ModelInfo,
    formats: Collection[str],
    feature_model: Path | None,
    card: ModelCard,
) -> tuple[dict[str, str], SharedBackbone | None]:
    """model.tflite (with its metadata) and the asked-for TensorFlow formats in `folder`; returns
    model.json's `files` additions, and its `shared_backbone` when model.tflite is the feature model
    with the head appended."""
    written, shared, labels = {}, None, info.labels
    if feature_model is not None:
        features = feature_model.read_bytes()
        model = add_metadata(append_head(features, head), card, info.input_spec, labels)
        (folder / TFLITE_FILE).write_bytes(model)
        shared = shared_backbone(model, features)
    if feature_model is None or "saved_model" in formats or "keras" in formats:
        import_tensorflow_quietly()
        from retrain import tensorflow_export

        saved_model = folder / (SAVED_MODEL_DIR if "saved_model" in formats else f".{SAVED_MODEL_DIR}-for-conversion")
        if feature_model is None or "saved_model" in formats:
            tensorflow_export.save_classifier(saved_model, backbone, head, labels)
        if feature_model is None:
            converted = tensorflow_export.convert_to_tflite(saved_model)
            (folder / TFLITE_FILE).write_bytes(add_metadata(converted, card, info.input_spec, labels))
        if "saved_model" in formats:
            written["saved_model"] = SAVED_MODEL_DIR
        else:
            shutil.rmtree(saved_model, ignore_errors=True)
        if "keras" in formats:
            if tensorflow_export.is_keras_model(backbone):
                tensorflow_export.save_keras_model(folder / KERAS_MODEL_FILE, backbone, head)
                written["keras"] = KERAS_MODEL_FILE
            else:
                log.warning("no %s: the backbone %s is not a Keras model", KERAS_MODEL_FILE, backbone.name)
    return written, shared


def _write_variants(
    folder: Path,
    info: ModelInfo,
    formats: Collection[str],
    card: ModelCard,
    score: Callable[[bytes], float | None] | None,
    calibration: Callable[[], tuple[Sequence[np.ndarray], Sequence[np.ndarray]]] | None,
) -> dict[str, dict]:
    """The quantized copies of model.tflite that `formats` ask for, each with the same metadata; returns
    model.json's `variants` (model.tflite first): file, bytes, size against model.tflite, how it was
    quantized, test accuracy."""
    asked = [name for name in VARIANTS if name in formats]
    if not asked:
        return {}
    model = (folder / TFLITE_FILE).read_bytes()
    variants = {"tflite": {"file": TFLITE_FILE, "bytes": len(model), "test_accuracy": score(model) if score else None}}
    images, check = calibration() if calibration else ((), ())
    for name in asked:
        quantized = quantize(model, name, images, check)
        data = add_metadata(quantized.model, card, info.input_spec, info.labels)
        (folder / VARIANTS[name]).write_bytes(data)
        variants[name] = {
            "file": VARIANTS[name],
            "bytes": len(data),
            "size_of_tflite": round(len(data) / len(model), 3),
            "quantization": quantized.method,
            "test_accuracy": score(data) if score else None,
            "top1_agreement_with_tflite": quantized.agreement,
            "agreement_images": len(check),
        }
        if name == "tflite_int8":
            variants[name]["calibration_images"] = len(images)
    return variants


def model_card(info: ModelInfo, name: str, version: str, author: str, license: str) -> ModelCard:
    """model.tflite's metadata about the model: what it tells apart, what it was trained on and with
    which backbone, and its test accuracy (what model.json records of them)."""
    details = info.details
    labels = ", ".join(info.labels[:12]) + (", ..." if len(info.labels) > 12 else "")
    parts = [f"Classifies an image as one of {len(info.labels)} labels ({labels})."]
    counts, flags = details.get("counts") or {}, details.get("flags") or {}
    trained = f"Trained by retrain on {counts['training_images']:,} images" if "training_images" in counts else ""
    if trained and flags.get("image_dir"):
        trained += f" of the folder {Path(flags['image_dir']).name}"
    features = (details.get("bottlenecks") or {}).get("features")
    backbone = f"{info.backbone} features" + (f" ({features})" if features else "")
    parts.append(f"{trained}, on {backbone}." if trained else f"Trained by retrain on {backbone}.")
    metrics = details.get("metrics") or {}
    if metrics.get("test_accuracy") is not None:
        parts.append(f"Test accuracy {metrics['test_accuracy']:.1%} on {metrics['test_count']:,} images.")
    elif (metrics.get("cross_validation") or {}).get("accuracy") is not None:
        parts.append(f"Cross-validated accuracy {metrics['cross_validation']['accuracy']:.1%} (no test split).")
    return ModelCard(name, " ".join(parts), version, author, license)


def shared_backbone(model: bytes, feature_model: bytes) -> SharedBackbone | None:
    """model.json's `shared_backbone` of `model`, made by appending a head to `feature_model`: the head is
    the operators appended, and the digest is the one serve computes from the same bytes (`split_export`).
    None, with a warning, if serve could not cut it there: the export is still whole, only not shared."""
    head_operators = operator_count(model) - operator_count(feature_model)
    try:
        return SharedBackbone(split_export(model, head_operators).digest, head_operators)
    except ValueError as e:
        log.warning("model.tflite's backbone cannot be shared with other models' (%s)", e)
        return None


def point_latest_at(target: Path, models_dir: Path | None = None) -> None:
    """Atomically repoints `<models_dir>/latest` (by default beside `target`) at `target`, as a relative
    link, so volumes can move."""
    folder = target.parent if models_dir is None else models_dir
    link = folder / LATEST_LINK
    temporary = folder / f".{LATEST_LINK}.{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.relpath(target, folder), temporary)
    os.replace(temporary, link)


def _move_into_place(staging: Path, target: Path) -> None:
    """Renames the finished export over `target`; an earlier export there is removed only afterwards."""
    if not target.exists():
        os.rename(staging, target)
        return
    retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, retired)
    os.rename(staging, target)
    shutil.rmtree(retired, ignore_errors=True)
