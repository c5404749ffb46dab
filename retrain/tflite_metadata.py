"""TFLite Model Metadata for a classifier's model.tflite, written with the flatbuffers package alone.

On-device clients (MediaPipe Tasks, the TFLite Task Library) read what a model needs from metadata
inside the file: the input is an RGB image and how its pixels are normalised, the output is scores
over labels, and the labels themselves, as a file packed with the model. Without it MediaPipe's
ImageClassifier refuses a float model ("it requires specifying NormalizationOptions metadata").

The metadata is a flatbuffer of its own (file identifier `M001`, schema `metadata_schema.fbs` of
TensorFlow Lite Support, which MediaPipe ships too) held in one of the model's buffers and named
`TFLITE_METADATA` in the model's `metadata` list; associated files (labels.txt) are a zip archive
appended to the model, so model.tflite is also a valid zip. Only schema 1.0.0 fields are written, so
`min_parser_version` is 1.0.0. The tables are built here field by field (their slots below are the
fields' positions in the schema) rather than through a generated module: it is a few tables, and
a run stays free of TensorFlow and of tflite-support. `tests/test_tflite_metadata.py` reads the
result back with MediaPipe's generated reader and runs MediaPipe's ImageClassifier on it.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import flatbuffers
from ai_edge_litert import schema_py_generated as schema

from retrain.tflite_graph import unpack_model
from serve.preprocess import InputSpec

METADATA_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"  # every field written here is in the schema since 1.0.0
LABELS_FILE = "labels.txt"
TFLITE_IDENTIFIER = b"TFL3"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: the same model and labels give the same bytes

# Enum values and union tags of metadata_schema.fbs.
_TENSOR_AXIS_LABELS = 2  # AssociatedFileType
_RGB = 1  # ColorSpaceType
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2  # ContentProperties
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions


@dataclass(frozen=True)
class ModelCard:
    """What the metadata says about the model as a whole (ModelMetadata's own fields)."""

    name: str
    description: str
    version: str
    author: str
    license: str


@dataclass(frozen=True)
class TensorCard:
    """A tensor's name and description in the metadata."""

    name: str
    description: str


def add_metadata(
    model: bytes,
    card: ModelCard,
    spec: InputSpec,
    labels: Sequence[str],
    image: TensorCard | None = None,
    scores: TensorCard | None = None,
) -> bytes:
    """`model` (one subgraph: images (1, H, W, 3) float32 -> scores (1, C)) with its metadata and, appended
    as a zip, `labels.txt` (one label a line, the order of the scores). Metadata already in the model
    (an earlier `TFLITE_METADATA`) is replaced, and anything after its flatbuffer (an earlier zip) dropped.
    The model's operators, tensors and buffers are unchanged, so what it computes is too."""
    if len(model) < 8 or model[4:8] != TFLITE_IDENTIFIER:
        raise ValueError("not a TFLite model (no TFL3 identifier)")
    tree = unpack_model(model)
    if len(tree.subgraphs) != 1 or len(tree.subgraphs[0].inputs) != 1 or len(tree.subgraphs[0].outputs) != 1:
        raise ValueError("metadata is written for a model with one subgraph, one input and one output")
    image = image or TensorCard(
        "image",
        f"An RGB image, resized as a whole to {spec.width}x{spec.height} (not cropped, the aspect ratio not kept), "
        f"each value (pixel - {spec.mean:g}) / {spec.std:g}.",
    )
    scores = scores or TensorCard("scores", f"Softmax scores of the {len(labels)} labels in {LABELS_FILE}, in order.")
    metadata = metadata_buffer(card, spec, len(labels), image, scores)
    entries = [entry for entry in tree.metadata or [] if _text(entry.name) != METADATA_NAME]
    old = [entry.buffer for entry in tree.metadata or [] if _text(entry.name) == METADATA_NAME]
    buffer = schema.BufferT()
    buffer.data = bytearray(metadata)
    if old:
        tree.buffers[old[0]] = buffer  # reuse its slot: other buffers keep their indices
        index = old[0]
    else:
        tree.buffers.append(buffer)
        index = len(tree.buffers) - 1
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, index
    tree.metadata = [*entries, entry]
    size = sum(len(b.data) for b in tree.buffers if b.data is not None)
    builder = flatbuffers.Builder(size + (1 << 16))
    builder.Finish(tree.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return with_associated_files(bytes(builder.Output()), {LABELS_FILE: "".join(f"{label}\n" for label in labels)})


def with_associated_files(model: bytes, files: dict[str, str]) -> bytes:
    """The model's flatbuffer followed by a zip archive of `files` (stored, not compressed, as
    tflite-support's populator writes them), which is how metadata's associated files travel."""
    out = io.BytesIO()
    out.write(model)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, text in files.items():
            archive.writestr(zipfile.ZipInfo(name, ZIP_TIME), text.encode("utf-8"))
    return out.getvalue()


def metadata_buffer(card: ModelCard, spec: InputSpec, classes: int, image: TensorCard, scores: TensorCard) -> bytes:
    """The ModelMetadata flatbuffer (identifier M001) of an image classifier."""
    b = flatbuffers.Builder(1024)
    low, high = (0.0 - spec.mean) / spec.std, (255.0 - spec.mean) / spec.std

    # input: an RGB image, normalised with (pixel - mean) / std, values in [low, high]
    size = _table(b, [(0, "uint", spec.width), (1, "uint", spec.height)])  # ImageSize
    properties = _table(b, [(0, "byte", _RGB), (1, "table", size)])  # ImageProperties
    image_content = _table(b, [(0, "ubyte", _IMAGE_PROPERTIES), (1, "table", properties)])  # Content
    normalization = _table(
        b, [(0, "table", _floats(b, [spec.mean] * 3)), (1, "table", _floats(b, [spec.std] * 3))]
    )  # NormalizationOptions
    unit = _table(b, [(0, "ubyte", _NORMALIZATION_OPTIONS), (1, "table", normalization)])  # ProcessUnit
    image_stats = _table(b, [(0, "table", _floats(b, [high])), (1, "table", _floats(b, [low]))])  # Stats: max, min
    image_tensor = _tensor(b, image, image_content, process_units=[unit], stats=image_stats)

    # output: scores along the labels of labels.txt, in [0, 1]
    labels_file = _table(
        b,
        [
            (0, "table", b.CreateString(LABELS_FILE)),
            (1, "table", b.CreateString(f"The {classes} labels of the scores, one a line, in order.")),
            (2, "byte", _TENSOR_AXIS_LABELS),
        ],
    )  # AssociatedFile
    feature = _table(b, [])  # FeatureProperties
    scores_content = _table(b, [(0, "ubyte", _FEATURE_PROPERTIES), (1, "table", feature)])
    scores_stats = _table(b, [(0, "table", _floats(b, [1.0])), (1, "table", _floats(b, [0.0]))])
    scores_tensor = _tensor(b, scores, scores_content, stats=scores_stats, files=[labels_file])

    subgraph = _table(
        b,
        [
            (0, "table", b.CreateString("classify_pixels")),
            (2, "table", _vector(b, [image_tensor])),
            (3, "table", _vector(b, [scores_tensor])),
        ],
    )  # SubGraphMetadata: name, input_tensor_metadata, output_tensor_metadata
    fields = [(0, card.name), (1, card.description), (2, card.version), (4, card.author), (5, card.license)]
    strings = [(slot, "table", b.CreateString(text)) for slot, text in fields]
    root = _table(
        b,
        [*strings, (3, "table", _vector(b, [subgraph])), (7, "table", b.CreateString(MIN_PARSER_VERSION))],
    )  # ModelMetadata
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def _tensor(
    b: flatbuffers.Builder,
    card: TensorCard,
    content: int,
    process_units: list[int] = (),
    stats: int | None = None,
    files: list[int] = (),
) -> int:
    """A TensorMetadata: name 0, description 1, content 3, process_units 4, stats 5, associated_files 6."""
    fields = [(0, "table", b.CreateString(card.name)), (1, "table", b.CreateString(card.description))]
    fields.append((3, "table", content))
    if process_units:
        fields.append((4, "table", _vector(b, list(process_units))))
    if stats is not None:
        fields.append((5, "table", stats))
    if files:
        fields.append((6, "table", _vector(b, list(files))))
    return _table(b, fields)


def _table(b: flatbuffers.Builder, fields: list[tuple[int, str, int | float]]) -> int:
    """A table with each (slot, kind, value): kind "table" is an offset (table, vector or string) built
    before; "byte", "ubyte" and "uint" are scalars. Returns the table's offset."""
    b.StartObject(1 + max((slot for slot, _, _ in fields), default=-1))
    add = {
        "table": b.PrependUOffsetTRelativeSlot,
        "byte": b.PrependInt8Slot,
        "ubyte": b.PrependUint8Slot,
        "uint": b.PrependUint32Slot,
    }
    for slot, kind, value in fields:
        add[kind](slot, value, 0)
    return b.EndObject()


def _vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    """A vector of tables, in order."""
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()


def _floats(b: flatbuffers.Builder, values: list[float]) -> int:
    b.StartVector(4, len(values), 4)
    for value in reversed(values):
        b.PrependFloat32(float(value))
    return b.EndVector()


def _text(name: bytes | str | None) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "")
