# The search service (flow.yml) in a container. CPU by default:
#
#   docker build -t clip-search .
#   docker run -p 51000:51000 -p 51001:51001 \
#       -v "$PWD/runs:/app/runs:ro" -v "$PWD/workspace:/app/workspace" clip-search
#
# The towers are not baked in (runs/ is in .dockerignore): mount the run folder and point
# TEXT_TOWER / VISION_TOWER at it (-e TEXT_TOWER=runs/shop/clip-text ...; defaults
# runs/demo/clip-*); the index lives in the mounted workspace. Every flow.yml setting is an
# environment variable (see flow.yml).
#
# Kubernetes: `make k8s IMAGE=...` writes manifests (docs/kubernetes.md) whose pods all run this
# image with their own command (`jina gateway ...`, `jina executor ...`) instead of CMD below;
# their readiness probe is the `clip-search` script this install puts on the PATH.
#
# GPU: a CUDA base image that has Python 3.11 and pip, and PyTorch's default (CUDA) wheels:
#   docker build --build-arg BASE_IMAGE=<cuda image with python3.11> --build-arg TORCH_INDEX= .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# CPU-only torch wheels (a fraction of the CUDA ones' size); empty = PyPI's default wheels.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# In a container the gateway must listen on all interfaces to be reachable through -p.
ENV PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The project's install step, as in the Makefile, with the extra the image serves (`serve`:
# the Flow, its executors and towers; not the trainer's or the tests'), on a layer that only
# the packaging files invalidate.
COPY pyproject.toml constraints.txt README.md ./
COPY imagepairs/ imagepairs/
COPY finetune/ finetune/
COPY search/ search/
COPY executors/ executors/
COPY client/ client/
RUN pip install "setuptools>=77,<81" wheel \
    && PIP_EXTRA_INDEX_URL="${TORCH_INDEX}" pip install -c constraints.txt -e ".[serve]"

COPY . .
# uid 1000: the Kubernetes manifests' fsGroup makes the index shards' volumes writable for it.
RUN useradd --create-home --uid 1000 app && mkdir -p workspace runs && chown -R app workspace runs
USER app

EXPOSE 51000 51001
CMD ["jina", "flow", "--uses", "flow.yml"]
