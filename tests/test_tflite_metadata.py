"""model.tflite's TFLite Model Metadata, read back with the reader MediaPipe ships for the published
schema (`mediapipe.tasks.metadata.metadata_schema_py_generated`): what an on-device client reads.
That MediaPipe's ImageClassifier runs the model with it is tests/test_mediapipe.py's."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from mediapipe.tasks.metadata import metadata_schema_py_generated as meta

from retrain.cli import main
from retrain.tflite_metadata import METADATA_NAME, ModelCard, add_metadata
from serve.models.split import split_export
from serve.preprocess import InputSpec
from serve.runtime import Runner

SPEC = InputSpec(224, 224, 127.0, 128.0)


def read_metadata(model: bytes) -> meta.ModelMetadataT:
    """The model's `TFLITE_METADATA` buffer, unpacked by the generated reader (identifier checked)."""
    tree = schema.Model.GetRootAs(model, 0)
    entries = [tree.Metadata(i) for i in range(tree.MetadataLength())]
    found = [entry.Buffer() for entry in entries if entry.Name().decode() == METADATA_NAME]
    assert len(found) == 1
    data = tree.Buffers(found[0]).DataAsNumpy().tobytes()
    assert meta.ModelMetadata.ModelMetadataBufferHasIdentifier(data, 0)
    return meta.ModelMetadataT.InitFromPackedBuf(data, 0)


def packed_files(model: bytes) -> dict[str, str]:
    with zipfile.ZipFile(io.BytesIO(model)) as archive:
        return {name: archive.read(name).decode() for name in archive.namelist()}


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real run through the command line, with the metadata flags."""
    from .conftest import copy_digits

    root = tmp_path_factory.mktemp("metadata")
    images = copy_digits(root / "three_digits", ["0", "1", "7"], per_class=12)
    args = ["--image_dir", str(images), "--bottleneck_dir", str(root / "cache"), "--models_dir", str(root / "models")]
    args += ["--how_many_training_steps", "100", "--model_author", "Ada Lovelace", "--model_license", "CC-BY-4.0"]
    main.main(args=args, standalone_mode=False)
    return root / "models" / "three_digits" / "1"


def test_the_export_describes_itself_and_its_input_and_output(export: Path) -> None:
    model = (export / "model.tflite").read_bytes()
    info = json.loads((export / "model.json").read_text())
    metadata = read_metadata(model)
    assert metadata.name.decode() == "three_digits" and metadata.version.decode() == "1"
    assert (metadata.author.decode(), metadata.license.decode()) == ("Ada Lovelace", "CC-BY-4.0")
    assert metadata.minParserVersion.decode() == "1.0.0"
    description = metadata.description.decode()
    accuracy = info["metrics"]["test_accuracy"]
    assert "one of 3 labels (0, 1, 7)" in description and "of the folder three_digits" in description
    assert info["backbone"] in description and f"Test accuracy {accuracy:.1%} on" in description

    (subgraph,) = metadata.subgraphMetadata
    (image,) = subgraph.inputTensorMetadata
    assert image.content.contentPropertiesType == meta.ContentProperties.ImageProperties
    assert image.content.contentProperties.colorSpace == meta.ColorSpaceType.RGB
    size = image.content.contentProperties.defaultSize
    assert (size.width, size.height) == (224, 224)
    (unit,) = image.processUnits
    assert unit.optionsType == meta.ProcessUnitOptions.NormalizationOptions
    assert list(unit.options.mean) == [127.0] * 3 and list(unit.options.std) == [128.0] * 3
    assert list(image.stats.min) == [-127 / 128] and list(image.stats.max) == [1.0]

    (scores,) = subgraph.outputTensorMetadata
    assert scores.content.contentPropertiesType == meta.ContentProperties.FeatureProperties
    (labels,) = scores.associatedFiles
    assert labels.name.decode() == "labels.txt" and labels.type == meta.AssociatedFileType.TENSOR_AXIS_LABELS
    assert packed_files(model) == {"labels.txt": (export / "labels.txt").read_text()}


def test_metadata_changes_nothing_the_model_computes_nor_its_backbone_digest(export: Path, pixels) -> None:
    """The metadata is one more buffer and a zip after the flatbuffer: the scores are the same bits,
    and the canonical backbone (what shared backbones are matched by) is the same bytes."""
    model = (export / "model.tflite").read_bytes()
    bare = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    bare.metadata = [entry for entry in bare.metadata or [] if entry.name.decode() != METADATA_NAME]
    import flatbuffers

    builder = flatbuffers.Builder(len(model))
    builder.Finish(bare.Pack(builder), file_identifier=b"TFL3")
    without = bytes(builder.Output())
    entry = json.loads((export / "model.json").read_text())["shared_backbone"]
    assert split_export(model, entry["head_operators"]).digest == entry["digest"]
    assert split_export(without, entry["head_operators"]).digest == entry["digest"]
    scores = [Runner(data, threads=2).scores(pixels) for data in (model, without)]
    np.testing.assert_array_equal(scores[0], scores[1])


def test_writing_the_metadata_again_replaces_it(export: Path) -> None:
    model = (export / "model.tflite").read_bytes()
    card = ModelCard("three_digits", "another description", "2", "someone", "MIT")
    labels = (export / "labels.txt").read_text().splitlines()
    again = add_metadata(model, card, SPEC, labels)
    assert read_metadata(again).description.decode() == "another description"
    assert add_metadata(again, card, SPEC, labels) == again  # one entry, one zip: the same bytes
    with pytest.raises(ValueError, match="not a TFLite model"):
        add_metadata(b"PK\x03\x04 not a model", card, SPEC, labels)
