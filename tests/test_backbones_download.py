"""Optional backbones: Keras-applications weights download, local weights files, TF Hub modules.

Everything network-shaped goes to a real `http.server` on 127.0.0.1; nothing leaves the machine.
The weights it serves are a randomly initialised MobileNetV3-Small saved under the exact file
name Keras publishes, so the real download, cache and load path runs end to end.
"""

from __future__ import annotations

import functools
import http.server
import socket
import tarfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from retrain.backbones import keras_apps, load_backbone, registered
from retrain.backbones.keras_apps import WeightsDownloadError, WeightsFileError
from retrain.backbones.tfhub import TFHubModuleError, load_tfhub_backbone
from serve.preprocess import InputSpec

SMALL = next(app for app in keras_apps.KERAS_APPS if app.name == "mobilenet_v3_small")


class _Server:
    """A static file server on 127.0.0.1 that remembers which paths were requested."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    return root


@pytest.fixture
def server(www: Path) -> Iterator[_Server]:
    s = _Server(www)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("RETRAIN_CACHE_DIR", str(cache))
    monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
    monkeypatch.delenv(keras_apps.BASE_URL_ENV, raising=False)
    return cache


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _batch(size: int, low: float, high: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, (2, size, size, 3)).astype(np.float32)


# ---------------------------------------------------------------- Keras applications


@pytest.fixture(scope="module")
def small_source(tmp_path_factory: pytest.TempPathFactory):
    """A random-init MobileNetV3-Small and its weights in Keras's legacy .h5 (as Keras serves them)
    and in Keras 3's .weights.h5 format."""
    import keras

    model = keras.applications.MobileNetV3Small(
        input_shape=(224, 224, 3),
        include_top=False,
        weights=None,
        pooling="avg",
        include_preprocessing=False,
    )
    root = tmp_path_factory.mktemp("weights")
    legacy = root / SMALL.file_name
    modern = root / "small.weights.h5"
    with warnings.catch_warnings():
        # Keras warns that HDF5 is legacy (it is the format Keras publishes its weights in) and,
        # under numpy 2, that tf.Variable.__array__ lacks a `copy` argument: both are Keras's noise.
        warnings.simplefilter("ignore")
        model.save(legacy)
        model.save_weights(modern)
    return model, legacy, modern


def _publish(www: Path, legacy: Path) -> None:
    target = www / SMALL.weights_path
    target.parent.mkdir(parents=True)
    target.write_bytes(legacy.read_bytes())


def test_registry_entries_have_the_keras_input_contract():
    expected = {
        "mobilenet_v2": 224,
        "mobilenet_v3_large": 224,
        "mobilenet_v3_small": 224,
        "inception_v3": 299,
    }
    for name, size in expected.items():
        assert registered(name).input_spec == InputSpec(size, size, 127.5, 127.5)
        assert registered(name).weights_source.startswith(keras_apps.KERAS_WEIGHTS_BASE_URL)


def test_download_from_mirror_is_cached_and_reused(server, www, small_source, monkeypatch, cache_dir):
    source, legacy, _ = small_source
    _publish(www, legacy)
    monkeypatch.setenv(keras_apps.BASE_URL_ENV, server.url)

    backbone = load_backbone("mobilenet_v3_small")
    assert server.requests == [] and backbone.feature_dim == 576  # described without being built
    backbone.model  # noqa: B018 (built on first use)

    assert server.requests == ["/" + SMALL.weights_path]
    x = _batch(224, -1.0, 1.0)
    np.testing.assert_array_equal(np.asarray(backbone.model(x)), np.asarray(source(x)))
    cached = keras_apps.cached_weights_path(SMALL)
    assert cached.is_file() and cached.is_relative_to(cache_dir / "weights")
    assert cached.read_bytes() == legacy.read_bytes()
    assert not list(cached.parent.glob("*.part"))

    again = registered("mobilenet_v3_small").build(None)
    assert len(server.requests) == 1
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(source(x)))


def test_keras_own_url_enforces_keras_hash(server, www, small_source, monkeypatch):
    # Pretend the local server is Keras's real URL: then Keras's md5 applies and our random
    # weights must be refused, with nothing left in the cache.
    _publish(www, small_source[1])
    monkeypatch.setattr(keras_apps, "KERAS_WEIGHTS_BASE_URL", server.url)

    with pytest.raises(WeightsDownloadError, match="hash") as info:
        registered("mobilenet_v3_small").build(None)

    assert server.requests == ["/" + SMALL.weights_path]
    assert "\n" not in str(info.value)
    cached = keras_apps.cached_weights_path(SMALL)
    assert not cached.exists() and not list(cached.parent.glob("*.part"))


def test_unreachable_mirror_gives_one_readable_line(monkeypatch):
    monkeypatch.setenv(keras_apps.BASE_URL_ENV, _closed_port_url())

    with pytest.raises(WeightsDownloadError) as info:
        registered("mobilenet_v3_small").build(None)

    message = str(info.value)
    assert "\n" not in message
    assert "--weights_file" in message and "efficientnet_lite0" in message
    assert SMALL.file_name in message
    assert not keras_apps.cached_weights_path(SMALL).exists()


def test_missing_file_on_mirror_is_a_readable_error(server, monkeypatch):
    monkeypatch.setenv(keras_apps.BASE_URL_ENV, server.url)
    with pytest.raises(WeightsDownloadError, match="404") as info:
        registered("mobilenet_v3_small").build(None)
    assert str(info.value).count(server.url) == 1  # Keras's own wording, minus the repeated URL


@pytest.mark.parametrize("which", ["legacy", "modern"])
def test_local_weights_file_needs_no_network(which, small_source, monkeypatch):
    source, legacy, modern = small_source
    monkeypatch.setenv(keras_apps.BASE_URL_ENV, _closed_port_url())  # any download would fail

    model = registered("mobilenet_v3_small").build(str(legacy if which == "legacy" else modern))

    x = _batch(224, -1.0, 1.0, seed=1)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(source(x)))


def test_local_weights_file_errors(small_source, tmp_path):
    _, legacy, modern = small_source
    with pytest.raises(WeightsFileError, match="not found"):
        registered("mobilenet_v3_small").build(str(tmp_path / "nope.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    for path in (junk, legacy, modern):
        build = registered("mobilenet_v3_small" if path == junk else "mobilenet_v3_large").build
        with pytest.raises(WeightsFileError, match="does not fit") as info:
            build(str(path))
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------- TF Hub


class _TinyFeatureVector(tf.Module):
    """conv + ReLU + global average pool: the smallest thing shaped like a feature-vector module."""

    def __init__(self, seed: int = 1, pool: bool = True):
        super().__init__()
        self.kernel = tf.Variable(tf.random.stateless_normal([3, 3, 3, 8], seed=[seed, 2]))
        self.pool = pool

    @tf.function
    def __call__(self, images):
        y = tf.nn.relu(tf.nn.conv2d(images, self.kernel, 2, "SAME"))
        return tf.reduce_mean(y, axis=[1, 2]) if self.pool else y


def _image_spec(size: int | None) -> tf.TensorSpec:
    return tf.TensorSpec([None, size, size, 3], tf.float32)


def _save_tiny(path: Path, size: int | None = 224, **kwargs) -> _TinyFeatureVector:
    """Saved with `__call__` traced for one input shape, as TF Hub's TF2 modules are."""
    module = _TinyFeatureVector(**kwargs)
    module.__call__.get_concrete_function(_image_spec(size))
    tf.saved_model.save(module, str(path))
    return module


def _save_signature_only(path: Path) -> _TinyFeatureVector:
    """A root object that is not callable and only has a `serving_default` signature."""
    module = _TinyFeatureVector()
    holder = tf.Module()
    holder.inner = module
    signature = module.__call__.get_concrete_function(_image_spec(224))
    tf.saved_model.save(holder, str(path), signatures={"serving_default": signature})
    return module


def _tar_gz(directory: Path, target: Path) -> None:
    """TF Hub's compressed format: the SavedModel's files at the archive root."""
    with tarfile.open(target, "w:gz") as tar:
        for item in sorted(directory.iterdir()):
            tar.add(item, arcname=item.name)


@pytest.mark.parametrize("kind", ["callable", "signature"])
def test_tfhub_local_dir(kind, tmp_path):
    path = tmp_path / "module"
    source = _save_tiny(path) if kind == "callable" else _save_signature_only(path)

    backbone = load_tfhub_backbone(str(path))

    assert backbone.input_spec == InputSpec(224, 224, 0.0, 255.0)
    assert backbone.feature_dim == 8
    assert backbone.cache_id.startswith("tfhub:module@sha256:")
    x = _batch(224, 0.0, 1.0)
    np.testing.assert_allclose(np.asarray(backbone.model(x)), np.asarray(source(x)), rtol=1e-6)


def test_tfhub_local_fingerprint_follows_the_weights(tmp_path):
    path = tmp_path / "module"
    _save_tiny(path, seed=1)
    first = load_tfhub_backbone(str(path)).cache_id
    assert load_tfhub_backbone(str(path)).cache_id == first
    _save_tiny(path, seed=2)  # same graph, new weights
    assert load_tfhub_backbone(str(path)).cache_id != first


def test_tfhub_size_comes_from_module_or_argument(tmp_path):
    _save_tiny(tmp_path / "fixed", size=96)
    _save_tiny(tmp_path / "any", size=None)
    assert load_tfhub_backbone(str(tmp_path / "fixed")).input_spec.height == 96
    assert load_tfhub_backbone(str(tmp_path / "any")).input_spec.height == 224
    assert load_tfhub_backbone(str(tmp_path / "any"), image_size=128).input_spec.width == 128
    with pytest.raises(TFHubModuleError, match="96x96"):
        load_tfhub_backbone(str(tmp_path / "fixed"), image_size=128)


@pytest.mark.parametrize("kind", ["callable", "signature"])
def test_tfhub_backbone_saves_and_converts_with_a_head(kind, tmp_path):
    """The backbone goes into a new SavedModel and a TFLite model together with a head."""
    from ai_edge_litert.interpreter import Interpreter

    path = tmp_path / "module"
    _save_tiny(path) if kind == "callable" else _save_signature_only(path)
    backbone = load_tfhub_backbone(str(path))

    classifier = tf.Module()
    classifier.backbone = backbone.model
    classifier.weights = tf.Variable(tf.random.stateless_normal([8, 3], seed=[3, 4]))
    classifier.serve = tf.function(
        lambda images: tf.nn.softmax(tf.matmul(classifier.backbone(images), classifier.weights)),
        input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)],
    )
    x = _batch(224, 0.0, 1.0)
    expected = np.asarray(classifier.serve(x))
    export = tmp_path / "export"
    tf.saved_model.save(classifier, str(export), signatures={"serving_default": classifier.serve})

    reloaded = tf.saved_model.load(str(export))
    np.testing.assert_allclose(np.asarray(reloaded.serve(x)), expected, rtol=1e-5)

    interpreter = Interpreter(model_content=tf.lite.TFLiteConverter.from_saved_model(str(export)).convert())
    runner = interpreter.get_signature_runner("serving_default")
    (output,) = runner(images=x[:1]).values()
    np.testing.assert_allclose(output, expected[:1], rtol=1e-4, atol=1e-6)


def test_tfhub_url_is_downloaded_once_and_cached(server, www, tmp_path, cache_dir):
    source = _save_tiny(tmp_path / "module")
    _tar_gz(tmp_path / "module", www / "tiny.tar.gz")
    url = server.url + "tiny.tar.gz"

    backbone = load_tfhub_backbone(url)

    assert [r.split("?")[0] for r in server.requests] == ["/tiny.tar.gz"]
    assert backbone.cache_id == "tfhub:" + url
    assert backbone.name == url
    x = _batch(224, 0.0, 1.0)
    np.testing.assert_allclose(np.asarray(backbone.model(x)), np.asarray(source(x)), rtol=1e-6)
    assert any((cache_dir / "tfhub").iterdir())

    load_tfhub_backbone(url)
    assert len(server.requests) == 1


def test_tfhub_errors(server, tmp_path):
    cases = {
        str(tmp_path / "missing"): "not found",
        str(tmp_path): "not a SavedModel directory",
        server.url + "missing.tar.gz": "could not fetch",
    }
    _save_tiny(tmp_path / "spatial", pool=False)
    cases[str(tmp_path / "spatial")] = r"not a \(N, D\) feature vector"
    file = tmp_path / "file.txt"
    file.write_text("x")
    cases[str(file)] = "not a SavedModel directory"
    for handle, message in cases.items():
        with pytest.raises(TFHubModuleError, match=message) as info:
            load_tfhub_backbone(handle)
        assert "\n" not in str(info.value)
