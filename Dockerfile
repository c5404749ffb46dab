# retrain and serve, two images from one file:
#
#   docker build --target retrain -t retrain .     TensorFlow + EfficientNet-Lite0 weights baked in
#   docker build --target serve -t serve .         LiteRT + FastAPI, no TensorFlow (about 340 MB)
#   docker build --target retrain --build-arg EXTRAS=train,gpu -t retrain:gpu .   CUDA for --gpus all
#
# Versions come from pyproject.toml and constraints.txt, the same files the Makefile installs
# with, so `make test` tests what the images ship. tests/test_containers.py runs this file's
# install commands and entry points in a fresh virtual environment.

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
COPY pyproject.toml constraints.txt README.md ./
COPY retrain ./retrain
COPY serve ./serve


FROM base AS retrain
ARG EXTRAS=train
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --constraint constraints.txt ".[${EXTRAS}]"
ENV RETRAIN_WEIGHTS_DIR=/opt/retrain/weights \
    RETRAIN_CACHE_DIR=/cache \
    RETRAIN_MODELS_DIR=/models
# Converted once here, so the image trains offline.
RUN python -m retrain.prefetch
USER 1000:1000
WORKDIR /home/retrain
ENTRYPOINT ["retrain"]
CMD ["--help"]


FROM base AS serve
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --constraint constraints.txt ".[serve]"
ENV SERVE_MODEL_DIR=/models/latest
USER 1000:1000
WORKDIR /home/retrain
EXPOSE 8501
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/readyz', timeout=2)"]
ENTRYPOINT ["serve"]
CMD []
