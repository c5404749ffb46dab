"""Optional backbones from Keras applications: MobileNet V2, MobileNet V3 (large, small), InceptionV3.

References:
- MobileNetV2: Inverted Residuals and Linear Bottlenecks (https://arxiv.org/abs/1801.04381)
- Searching for MobileNetV3 (https://arxiv.org/abs/1905.02244)
- Rethinking the Inception Architecture for Computer Vision (https://arxiv.org/abs/1512.00567)

Each is built headless (`include_top=False, pooling="avg"`), so it maps normalised images
(N, H, W, 3) to feature vectors (N, D). All four were trained on pixels scaled to [-1, 1], i.e.
`(x - 127.5) / 127.5`; MobileNetV3 is built with `include_preprocessing=False` so it takes that
range too instead of raw pixels.

Weights come from a local file (`--weights_file`) or, on first use, from the ImageNet no-top file
Keras itself downloads: same file names, same URL paths, same hashes, cached under
`retrain.paths.weights_cache_dir()`. `$RETRAIN_WEIGHTS_BASE_URL` replaces Keras's base URL, for a
mirror inside a firewalled network (and for the tests, which serve weights from 127.0.0.1).
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from retrain.backbones import BackboneSpec, register
from retrain.errors import RetrainError
from retrain.paths import weights_cache_dir
from serve.preprocess import InputSpec

if TYPE_CHECKING:
    import keras

KERAS_WEIGHTS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
BASE_URL_ENV = "RETRAIN_WEIGHTS_BASE_URL"
OFFLINE_BACKBONE = "efficientnet_lite0"


class WeightsFileError(RetrainError):
    """A local weights file is missing or does not fit the architecture."""


class WeightsDownloadError(RetrainError):
    """The ImageNet weights could not be downloaded (offline, mirror down, corrupt download)."""


@dataclass(frozen=True)
class KerasApp:
    """One Keras application used as a backbone.

    `weights_path` is the no-top weights file relative to the base URL; its last component is
    also the cached file name. `md5` is Keras's own hash of that file (None where Keras has none).
    """

    name: str
    constructor: str  # attribute of keras.applications; resolved lazily so importing stays cheap
    size: int
    weights_path: str
    md5: str | None
    feature_dim: int  # the width of the average-pooled features
    options: tuple[tuple[str, object], ...] = ()

    @property
    def file_name(self) -> str:
        return self.weights_path.rsplit("/", 1)[-1]


_V3_OPTIONS = (("include_preprocessing", False),)

# Paths and hashes as in keras/src/applications/{mobilenet_v2,mobilenet_v3,inception_v3}.py.
KERAS_APPS: tuple[KerasApp, ...] = (
    KerasApp(
        "mobilenet_v2",
        "MobileNetV2",
        224,
        "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        None,
        1280,
    ),
    KerasApp(
        "mobilenet_v3_large",
        "MobileNetV3Large",
        224,
        "mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        "07fb09a5933dd0c8eaafa16978110389",
        960,
        _V3_OPTIONS,
    ),
    KerasApp(
        "mobilenet_v3_small",
        "MobileNetV3Small",
        224,
        "mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "d3e8ec802a04aa4fc771ee12a9a9b836",
        576,
        _V3_OPTIONS,
    ),
    KerasApp(
        "inception_v3",
        "InceptionV3",
        299,
        "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "bcbd6486424b2319ff4ef7d526e38f63",
        2048,
    ),
)


def weights_base_url() -> str:
    """Keras's base URL, or `$RETRAIN_WEIGHTS_BASE_URL` when set (always ending in '/')."""
    base = os.environ.get(BASE_URL_ENV) or KERAS_WEIGHTS_BASE_URL
    return base if base.endswith("/") else base + "/"


def cached_weights_path(app: KerasApp) -> Path:
    """Where the downloaded weights live.

    Files from a mirror are not checked against Keras's hashes (see `fetch_weights`), so each
    mirror gets its own directory: they can never pass for, or be replaced by, Keras's own files.
    """
    base = weights_base_url()
    subdir = "keras"
    if base != KERAS_WEIGHTS_BASE_URL:
        subdir = f"keras/mirror-{hashlib.sha256(base.encode()).hexdigest()[:12]}"
    return weights_cache_dir() / subdir / app.file_name


def fetch_weights(app: KerasApp) -> Path:
    """The cached ImageNet no-top weights file, downloaded first if needed.

    The download goes to a private temporary name and is renamed into place only after
    `keras.utils.get_file` has checked it, so an interrupted download is never mistaken for a
    cached file. Keras's md5 is enforced for Keras's own URL. With `$RETRAIN_WEIGHTS_BASE_URL` it
    is skipped: a mirror may serve re-exported files (the tests serve randomly initialised ones),
    and whoever points retrain at a mirror has chosen to trust it; `load_weights` still rejects a
    file that does not fit the architecture.
    """
    import keras

    target = cached_weights_path(app)
    if target.is_file():
        return target
    base = weights_base_url()
    url = base + app.weights_path
    file_hash = app.md5 if base == KERAS_WEIGHTS_BASE_URL else None
    target.parent.mkdir(parents=True, exist_ok=True)
    part_name = f"{app.file_name}.{os.getpid()}.part"
    try:
        part = keras.utils.get_file(
            part_name,
            url,
            file_hash=file_hash,
            cache_dir=str(target.parent),
            cache_subdir=".",
            force_download=True,
        )
    except Exception as e:  # get_file raises a bare Exception for network errors
        (target.parent / part_name).unlink(missing_ok=True)
        reason = " ".join(str(e).split()) or type(e).__name__
        # Keras says "URL fetch failure on <url>: <errno> -- <reason>"; the URL is already ours.
        reason = reason.replace(f"URL fetch failure on {url}: ", "").removeprefix("None -- ")
        raise WeightsDownloadError(
            f"could not download {app.name} weights from {url} ({reason}); pass --weights_file with a "
            f"local copy of {app.file_name}, or use the default offline backbone {OFFLINE_BACKBONE}"
        ) from e
    os.replace(part, target)
    return target


def build_keras_app(app: KerasApp, weights_file: str | None = None) -> keras.Model:
    """The headless, average-pooled Keras model for `app`: [-1, 1] images -> (N, D) features.

    Args:
        app: the table entry.
        weights_file: a local weights file (Keras `.h5` as Keras downloads it, or a Keras 3
            `.weights.h5`); None downloads or reuses the cached ImageNet weights.

    Returns:
        A `keras.Model` with input (None, size, size, 3).
    """
    import keras

    if weights_file is not None:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise WeightsFileError(f"weights file for {app.name} not found: {weights_file}")
        downloaded = False
    else:
        path = fetch_weights(app)
        downloaded = True
    model = getattr(keras.applications, app.constructor)(
        input_shape=(app.size, app.size, 3),
        include_top=False,
        weights=None,
        pooling="avg",
        **dict(app.options),
    )
    try:
        _load_weights(model, path)
    except WeightsFileError:
        if downloaded:  # only a damaged download gets here: drop it so the next run fetches again
            path.unlink(missing_ok=True)
        raise
    return model


def _load_weights(model: keras.Model, path: Path) -> None:
    """`model.load_weights`, with Keras's multi-line errors and warnings turned into one line.

    Keras 3 only warns (per layer) when a `.weights.h5` file lacks some layers, so such warnings
    count as a misfit too: a half-loaded backbone would silently produce wrong bottlenecks.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(str(path))
        except Exception as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsFileError(f"weights file {path} does not fit {model.name}: {first_line}") from e
    skipped = [w for w in caught if "skipping" in str(w.message).lower()]
    if skipped:
        first_line = str(skipped[0].message).splitlines()[0]
        raise WeightsFileError(f"weights file {path} does not fit {model.name}: {first_line}")


def register_all() -> None:
    for app in KERAS_APPS:
        register(
            BackboneSpec(
                name=app.name,
                input_spec=InputSpec(height=app.size, width=app.size, mean=127.5, std=127.5),
                build=functools.partial(build_keras_app, app),
                weights_source=KERAS_WEIGHTS_BASE_URL + app.weights_path,
                feature_dim=app.feature_dim,
            )
        )
