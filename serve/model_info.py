"""The export's self-description, `model.json`: written by retrain, read by serve.

Only what a runtime needs is typed here (labels, the input contract, the files); everything else
retrain records (metrics, flags, counts, library versions) rides along in `details` untouched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from serve.preprocess import PREPROCESSING_VERSION, SUPPORTED_PREPROCESSING, InputSpec
from serve.text import is_printable, printable

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
LABELS_TXT = "labels.txt"
TFLITE_FILE = "model.tflite"
SAVED_MODEL_DIR = "saved_model"
KERAS_MODEL_FILE = "model.keras"
CONFUSION_MATRIX_PNG = "confusion_matrix.png"
TRAINING_CURVES_PNG = "training_curves.png"
# Report plots an export may hold next to model.json (file name -> what it shows); serve shows those present.
REPORT_PLOTS = {
    CONFUSION_MATRIX_PNG: "Confusion matrix of the held-out images",
    TRAINING_CURVES_PNG: "Training curves: accuracy and cross entropy by step",
}
SHARED_BACKBONE = "shared_backbone"  # model.json's key of a SharedBackbone
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class ModelDirError(ValueError):
    """The directory is not a usable retrain export."""


@dataclass(frozen=True)
class SharedBackbone:
    """model.json's `shared_backbone`, written when model.tflite is a backbone with a head appended:
    the head is its last `head_operators` operators, and `digest` names the rest as
    `serve.models.split.split_export` cuts it out. Exports with one digest can share one backbone; a
    server recomputes the digest from model.tflite rather than trust this one."""

    digest: str  # "sha256:<64 hex>"
    head_operators: int

    def to_json(self) -> dict:
        return {"digest": self.digest, "head_operators": self.head_operators}

    @classmethod
    def from_json(cls, data: object) -> SharedBackbone:
        """The entry, checked; ValueError saying what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object with digest and head_operators, not {type(data).__name__}")
        digest, operators = data.get("digest"), data.get("head_operators")
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
            raise ValueError(f"digest {printable(str(digest))[:80]!r} is not sha256:<64 lowercase hex digits>")
        if not isinstance(operators, int) or isinstance(operators, bool) or operators < 1:
            raise ValueError(f"head_operators {printable(str(operators))[:80]!r} is not a positive integer")
        return cls(digest, operators)


@dataclass(frozen=True)
class ModelInfo:
    labels: list[str]
    input_spec: InputSpec
    backbone: str
    preprocessing_version: int = PREPROCESSING_VERSION
    details: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=lambda: {"tflite": TFLITE_FILE, "labels": LABELS_TXT})

    @property
    def shared_backbone(self) -> SharedBackbone | None:
        """The backbone this export can share with others (None for an export without the entry: an
        older one, or one whose model.tflite TensorFlow converted whole); ModelDirError if malformed."""
        return _shared_backbone(self.details, MODEL_JSON)

    def to_json(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "backbone": self.backbone,
            "labels": self.labels,
            "input": {**self.input_spec.to_json(), "preprocessing_version": self.preprocessing_version},
            "files": self.files,
            **self.details,
        }

    @classmethod
    def from_json(cls, data: dict) -> ModelInfo:
        typed = {"format_version", "backbone", "labels", "input", "files"}
        version = int(data["input"].get("preprocessing_version", 1))  # exports before the key: version 1
        return cls(
            labels=[str(label) for label in data["labels"]],
            input_spec=replace(InputSpec.from_json(data["input"]), preprocessing=version),
            backbone=str(data["backbone"]),
            preprocessing_version=version,
            details={k: v for k, v in data.items() if k not in typed},
            files=dict(data.get("files") or {"tflite": TFLITE_FILE, "labels": LABELS_TXT}),
        )

    def write(self, model_dir: str | Path) -> None:
        directory = Path(model_dir)
        (directory / MODEL_JSON).write_text(json.dumps(self.to_json(), indent=2) + "\n")
        (directory / LABELS_TXT).write_text("".join(f"{label}\n" for label in self.labels))


def read_model_info(model_dir: str | Path) -> ModelInfo:
    """Reads and checks `model_dir/model.json`; ModelDirError with one readable line when unusable."""
    path = Path(model_dir) / MODEL_JSON
    try:
        data = json.loads(path.read_text())
        info = ModelInfo.from_json(data)
    except FileNotFoundError as e:
        raise ModelDirError(f"{model_dir} is not a retrain export: no {MODEL_JSON}") from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelDirError(f"{path} is unreadable or malformed: {e}") from e
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelDirError(f"{path} has format_version {data.get('format_version')}, expected {FORMAT_VERSION}")
    if info.preprocessing_version not in SUPPORTED_PREPROCESSING:
        raise ModelDirError(
            f"{path} needs preprocessing version {info.preprocessing_version}, which this serve does not know "
            f"(it knows {', '.join(map(str, SUPPORTED_PREPROCESSING))}): serve it with the retrain that made it"
        )
    if len(info.labels) < 2:
        raise ModelDirError(f"{path} lists fewer than two labels")
    _shared_backbone(info.details, path)  # a malformed entry is refused with the rest of the file
    _check_labels(Path(model_dir), info)
    return info


def _shared_backbone(details: dict, where: str | Path) -> SharedBackbone | None:
    if SHARED_BACKBONE not in details:
        return None
    try:
        return SharedBackbone.from_json(details[SHARED_BACKBONE])
    except ValueError as e:
        raise ModelDirError(f"{where} has a malformed {SHARED_BACKBONE}: {e}") from e


def _check_labels(model_dir: Path, info: ModelInfo) -> None:
    """model.json's labels are the truth; each must be printable and distinct, and labels.txt (what
    TF Serving users and on-device clients read) must list the same, one a line, in the same order."""
    unprintable = [label for label in info.labels if not label or not is_printable(label)]
    if unprintable:
        raise ModelDirError(
            f"{model_dir / MODEL_JSON} has a label that is empty or not printable: {printable(unprintable[0])!r}"
        )
    if len(set(info.labels)) != len(info.labels):
        raise ModelDirError(f"{model_dir / MODEL_JSON} lists a label twice")
    labels_file = model_dir / info.files.get("labels", LABELS_TXT)
    try:
        listed = labels_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise ModelDirError(
            f"{model_dir} has no {labels_file.name} (model.json lists {len(info.labels)} labels)"
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ModelDirError(f"{labels_file} is unreadable: {e}") from e
    if listed != info.labels:
        where = next((i for i, (a, b) in enumerate(zip(listed, info.labels, strict=False)) if a != b), None)
        where = min(len(listed), len(info.labels)) if where is None else where
        raise ModelDirError(
            f"{labels_file} disagrees with {MODEL_JSON} at line {where + 1} "
            f"({len(listed)} labels listed, {len(info.labels)} in {MODEL_JSON}, which is the truth)"
        )
