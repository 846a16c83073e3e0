# The galmet GPU worker image: `galmet worker`, a Celery worker that runs batch-job chunks on
# the GPU. It reads the broker from GALMET_BROKER_URL and needs the same GALMET_DATABASE_URL,
# GALMET_SKYSERVER_URL and checkpoint (GALMET_MODEL) as the API.
#
# Build from the repository root:
#     docker build -f docker/worker.Dockerfile -t galmet-worker .
# Run with a GPU (NVIDIA Container Toolkit on the host):
#     docker run --gpus all -e GALMET_BROKER_URL=... -e GALMET_DATABASE_URL=... \
#         -e GALMET_MODEL=/models/model.pt -v /srv/galmet/models:/models:ro galmet-worker
#
# Why python:3.11-slim and not an nvidia/cuda base: the torch wheel pinned in pyproject.toml
# (2.14.1 from PyPI) carries its own CUDA 13.0 user-space libraries as nvidia-* wheels (cudart,
# cuBLAS, cuDNN, NCCL, ...), and the driver (libcuda) is mounted from the host by the NVIDIA
# Container Toolkit. A CUDA base image would add a second, separately versioned copy of those
# libraries, and the Ubuntu images come with Python 3.12 rather than the 3.11 the project is
# tested on. What the CUDA images do contribute is a handful of environment variables; they
# are set below. The steps up to the galmet install are those of api.Dockerfile, so the two
# images share those layers (built and stored once).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/galmet \
    PATH=/opt/galmet/bin:$PATH

RUN python -m venv /opt/galmet

# The dependencies first, read from pyproject.toml alone (see api.Dockerfile).
ARG TORCH_INDEX_URL=
COPY pyproject.toml /tmp/galmet/pyproject.toml
RUN set -eux; \
    cd /tmp/galmet; \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt; \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        grep -E '^torch(vision)?==' requirements.txt > torch.txt; \
        pip install --index-url "$TORCH_INDEX_URL" -r torch.txt; \
    fi; \
    pip install -r requirements.txt; \
    rm -rf /tmp/galmet

COPY . /tmp/galmet
RUN set -eux; \
    pip install --no-deps /tmp/galmet; \
    rm -rf /tmp/galmet; \
    galmet --version; \
    python -c "import galmet.worker.tasks; from galmet.app.main import create_app; create_app()"

RUN useradd --create-home --uid 10001 --user-group galmet
USER galmet
WORKDIR /home/galmet

# For the NVIDIA Container Toolkit: the driver libraries to mount (compute: CUDA; utility:
# nvidia-smi), and the CUDA version the torch wheel needs. A host whose driver is too old for
# CUDA 13.0 (older than the 580 series) then refuses to start the container with a clear
# "unsatisfied condition: cuda>=13.0" instead of torch quietly falling back to the CPU.
# Which GPUs the container gets is the run's choice (--gpus, or compose's device reservation).
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0"

# One worker process per container, on the container's first visible GPU: for several GPUs,
# run one container per GPU (docker/README.md). Celery finishes the chunk in hand on SIGTERM;
# one killed mid-chunk loses nothing (the message is acknowledged late and runs again).
CMD ["galmet", "worker", "--concurrency", "1", "--log-level", "info"]
