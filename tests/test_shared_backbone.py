"""A composed model.tflite cut into a shared backbone and its head (`serve.models.split`): the digest
retrain records is the one serve computes, backbone then head scores as the whole model, exports on
one backbone share its digest but not their heads, and any change to the backbone changes it."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from serve.model_info import MODEL_JSON, ModelDirError, ModelInfo, SharedBackbone, read_model_info
from serve.models.split import Dense, L2Normalize, Softmax, split_export
from serve.runtime import Runner

from .conftest import copy_digits

# LiteRT's float32 kernels (XNNPACK) against numpy's float32 head on the same features: ~1e-7 apart.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def small_exports(digits_run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four exports trained in seconds on the demo's cached bottlenecks and feature set, so on its
    backbone: linear softmax heads on digits 0, 1, 7 and on 2, 3, 5, one with a hidden ReLU layer,
    and a prototype head."""
    from retrain.pipeline import RetrainConfig, run
    from retrain.train import HParams

    result, _, root = digits_run
    features = json.loads((result.output_dir / MODEL_JSON).read_text())["bottlenecks"]["features"]
    folder = tmp_path_factory.mktemp("small_exports")
    runs = {
        "linear": (["0", "1", "7"], "softmax", 0),
        "other_classes": (["2", "3", "5"], "softmax", 0),
        "hidden": (["0", "1", "7"], "softmax", 8),
        "prototype": (["2", "3", "5"], "prototype", 0),
    }
    exports = {}
    for name, (labels, head, hidden_units) in runs.items():
        config = RetrainConfig(
            image_dir=str(copy_digits(folder / "images" / name, labels, per_class=12)),
            output_dir=str(folder / name),
            bottleneck_dir=str(root / "cache"),
            architecture="efficientnet_lite0",
            bottleneck_layers=features,
            head=head,
            hparams=HParams(how_many_training_steps=50, hidden_units=hidden_units),
        )
        with contextlib.redirect_stdout(io.StringIO()):
            exports[name] = run(config).output_dir
    return exports


def _split(export: Path):
    """The export's model.tflite cut where its model.json says."""
    entry = json.loads((export / MODEL_JSON).read_text())["shared_backbone"]
    return split_export((export / "model.tflite").read_bytes(), entry["head_operators"])


def test_the_export_records_the_digest_split_export_computes(export: Path) -> None:
    entry = json.loads((export / MODEL_JSON).read_text())["shared_backbone"]
    assert set(entry) == {"digest", "head_operators"}
    assert entry["head_operators"] == 2  # the demo's head: FULLY_CONNECTED, SOFTMAX
    split = split_export((export / "model.tflite").read_bytes(), entry["head_operators"])
    assert entry["digest"] == split.digest
    assert read_model_info(export).shared_backbone == SharedBackbone(split.digest, 2)
    assert split_export((export / "model.tflite").read_bytes(), 2).backbone == split.backbone  # deterministic


def test_backbone_then_head_scores_as_the_whole_model(export: Path, pixels: np.ndarray) -> None:
    split = _split(export)
    interpreter = Interpreter(model_content=split.backbone)
    assert interpreter.get_signature_list() == {"features": {"inputs": ["images"], "outputs": ["features"]}}
    features = interpreter.get_signature_runner("features")(images=pixels)["features"]
    assert features.shape == (len(pixels), split.head.features)
    whole = Runner(export / "model.tflite", threads=2).scores(pixels)
    np.testing.assert_allclose(split.head.scores(features), whole, atol=TOLERANCE)
    labels = read_model_info(export).labels
    assert split.head.num_classes == len(labels) == whole.shape[1]
    assert [type(layer) for layer in split.head.layers] == [Dense, Softmax]


def test_serves_runner_runs_the_backbone_from_memory(export: Path, pixels: np.ndarray) -> None:
    split = _split(export)
    runner = Runner(split.backbone, threads=2, signature="features", output="features")
    features = runner.scores(pixels)
    whole = Runner(export / "model.tflite", threads=2).scores(pixels)
    np.testing.assert_allclose(split.head.scores(features), whole, atol=TOLERANCE)
    assert (split.head.scores(features).argmax(axis=1)[:10] == np.arange(10)).sum() >= 8  # the digits, mostly


@pytest.mark.parametrize("name", ["linear", "hidden", "prototype"])
def test_every_kind_of_head_splits_and_scores_as_the_whole_model(small_exports, name: str, pixels) -> None:
    export = small_exports[name]
    split = _split(export)
    kinds = {"linear": [Dense, Softmax], "hidden": [Dense, Dense, Softmax], "prototype": [L2Normalize, Dense, Softmax]}
    assert [type(layer) for layer in split.head.layers] == kinds[name]
    dense = [layer for layer in split.head.layers if isinstance(layer, Dense)]
    assert [layer.relu for layer in dense] == [True] * (len(dense) - 1) + [False]
    features = Runner(split.backbone, threads=2, signature="features", output="features").scores(pixels)
    scores = split.head.scores(features)
    np.testing.assert_allclose(scores, Runner(export / "model.tflite", threads=2).scores(pixels), atol=TOLERANCE)
    assert scores.shape == (len(pixels), 3) == (len(pixels), split.head.num_classes)


def test_exports_on_one_backbone_share_the_digest_and_not_the_head(export: Path, small_exports) -> None:
    splits = {name: _split(path) for name, path in {"demo": export, **small_exports}.items()}
    assert len({split.digest for split in splits.values()}) == 1
    assert len({split.backbone for split in splits.values()}) == 1
    for name, path in small_exports.items():
        assert json.loads((path / MODEL_JSON).read_text())["shared_backbone"]["digest"] == splits["demo"].digest, name
    linear, other = splits["linear"].head, splits["other_classes"].head
    assert [type(layer) for layer in linear.layers] == [type(layer) for layer in other.layers] == [Dense, Softmax]
    assert linear.layers[0].weights.shape == other.layers[0].weights.shape == (splits["demo"].head.features, 3)
    assert linear != other and not np.allclose(linear.layers[0].weights, other.layers[0].weights)
    assert linear != splits["hidden"].head and other != splits["prototype"].head
    assert linear == _split(small_exports["linear"]).head  # equal by value, read twice


def test_one_changed_backbone_weight_byte_changes_the_digest(export: Path) -> None:
    data = (export / "model.tflite").read_bytes()
    split = _split(export)
    # A backbone weight: the first 64 bytes of the backbone's largest constant, found once in model.tflite.
    backbone = schema.ModelT.InitFromPackedBuf(split.backbone, 0)
    largest = max((b.data for b in backbone.buffers if b.data is not None), key=len)
    where = data.find(largest[:64].tobytes())
    assert where > 0 and data.count(largest[:64].tobytes()) == 1
    changed = bytearray(data)
    changed[where + 7] ^= 0x01
    other = split_export(bytes(changed), len(split.head.layers))
    assert other.digest != split.digest and other.backbone != split.backbone
    assert other.head == split.head


def test_a_wrong_head_operators_is_refused_or_names_another_backbone(small_exports, pixels) -> None:
    """0 and the whole model are out of range; one more eats the feature model's last operator (a
    CONCATENATION or MEAN, no head's), so ValueError; one fewer leaves the head's first layer in the
    backbone, which then is the model's own: another digest, the same scores."""
    export = small_exports["hidden"]
    data = (export / "model.tflite").read_bytes()
    right = _split(export)
    count = len(right.head.layers)
    total = schema.Model.GetRootAs(data, 0).Subgraphs(0).OperatorsLength()
    for wrong in (0, -1, total, total + 5):
        with pytest.raises(ValueError, match="out of range"):
            split_export(data, wrong)
    with pytest.raises(
        ValueError, match=r"head operator 1 of 4 \((CONCATENATION|MEAN|RESHAPE)\) is not one a head has"
    ):
        split_export(data, count + 1)
    fewer = split_export(data, count - 1)
    assert fewer.digest != right.digest
    assert [type(layer) for layer in fewer.head.layers] == [Dense, Softmax]
    features = Runner(fewer.backbone, threads=2, signature="features", output="features").scores(pixels)
    assert features.shape == (len(pixels), 8)  # the hidden layer's output, now the backbone's
    whole = Runner(export / "model.tflite", threads=2).scores(pixels)
    np.testing.assert_allclose(fewer.head.scores(features), whole, atol=TOLERANCE)


def test_what_is_not_a_one_subgraph_model_with_a_head_is_refused(export: Path) -> None:
    data = (export / "model.tflite").read_bytes()
    with pytest.raises(ValueError, match="not a TFLite model"):
        split_export(b"not a model at all", 2)
    with pytest.raises(ValueError, match="not a readable TFLite model"):
        split_export(data[:4096], 2)
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    model.subgraphs.append(model.subgraphs[0])
    builder = flatbuffers.Builder(len(data) + (1 << 16))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with pytest.raises(ValueError, match="2 subgraphs, not one"):
        split_export(bytes(builder.Output()), 2)
    with pytest.raises(ValueError, match="SOFTMAX"):  # a head must end in the softmax
        split_export(_without_last_operator(data), 1)


def _without_last_operator(data: bytes) -> bytes:
    """The model with its SOFTMAX cut off: its output the logits."""
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    subgraph = model.subgraphs[0]
    softmax = subgraph.operators.pop()
    subgraph.outputs = [int(softmax.inputs[0])]
    builder = flatbuffers.Builder(len(data) + (1 << 16))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.mark.parametrize(
    "entry",
    [
        ["sha256:" + "0" * 64, 2],
        {"digest": "sha256:" + "0" * 63, "head_operators": 2},
        {"digest": "md5:" + "0" * 32, "head_operators": 2},
        {"digest": "sha256:" + "A" * 64, "head_operators": 2},
        {"digest": "sha256:" + "0" * 64, "head_operators": 0},
        {"digest": "sha256:" + "0" * 64, "head_operators": "2"},
        {"digest": "sha256:" + "0" * 64, "head_operators": True},
        {"digest": "sha256:" + "0" * 64},
        None,
    ],
    ids=["list", "short", "md5", "upper", "zero", "string", "bool", "missing", "null"],
)
def test_model_info_refuses_a_malformed_shared_backbone(export: Path, tmp_path: Path, entry) -> None:
    copy = tmp_path / "export"
    copy.mkdir()
    for name in (MODEL_JSON, "labels.txt"):
        shutil.copy(export / name, copy / name)
    data = json.loads((copy / MODEL_JSON).read_text())
    data["shared_backbone"] = entry
    (copy / MODEL_JSON).write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="malformed shared_backbone") as refused:
        read_model_info(copy)
    assert "\n" not in str(refused.value) and str(copy / MODEL_JSON) in str(refused.value)
    with pytest.raises(ModelDirError, match=f"^{MODEL_JSON} has a malformed shared_backbone: "):
        ModelInfo.from_json(data).shared_backbone  # noqa: B018


def test_an_export_without_the_entry_has_no_shared_backbone(export: Path, tmp_path: Path) -> None:
    """Older exports, and those whose model.tflite TensorFlow converted whole."""
    data = json.loads((export / MODEL_JSON).read_text())
    del data["shared_backbone"]
    info = ModelInfo.from_json(data)
    assert info.shared_backbone is None
    assert ModelInfo.from_json(info.to_json()).shared_backbone is None
    entry = SharedBackbone("sha256:" + "ab" * 32, 3)
    assert ModelInfo.from_json({**data, "shared_backbone": entry.to_json()}).shared_backbone == entry
