# The galmet API image: `galmet serve` (FastAPI, the web page, /api/v1) on port 8000.
#
# Build from the repository root (the build context is the whole checkout, trimmed by
# .dockerignore):
#     docker build -f docker/api.Dockerfile -t galmet-api .
# The same image runs the one-shot migration in docker/compose.yaml (`galmet db upgrade`).
#
# torch and torchvision are pinned in pyproject.toml to the PyPI builds, which are CUDA 13
# builds (about 4 GB with their nvidia-* wheels) that run on a CPU as well; the API in
# docker/compose.yaml runs on the CPU. To build a smaller, CPU-only API image, install torch
# and torchvision both from PyTorch's CPU index (never only one of them: a CPU torch with a
# CUDA torchvision fails at import):
#     docker build -f docker/api.Dockerfile -t galmet-api \
#         --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/galmet \
    PATH=/opt/galmet/bin:$PATH

RUN python -m venv /opt/galmet

# The dependencies first, read from pyproject.toml alone: this large layer is rebuilt when the
# dependencies change, not on every change of the code. Every one of them has a binary wheel
# for CPython 3.11 on manylinux x86_64, so no compiler is needed.
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

# Then galmet itself (a regular, non-editable install: the migrations go to
# /opt/galmet/share/galmet/alembic, where `galmet db upgrade` finds them), and a check that the
# installed package is whole (the app is built, static files and templates included).
COPY . /tmp/galmet
RUN set -eux; \
    pip install --no-deps /tmp/galmet; \
    rm -rf /tmp/galmet; \
    galmet --version; \
    python -c "import galmet.worker.tasks; from galmet.app.main import create_app; create_app()"

# An unprivileged user; its home holds the caches (the demo model, when no GALMET_MODEL is set).
RUN useradd --create-home --uid 10001 --user-group galmet
USER galmet
WORKDIR /home/galmet

EXPOSE 8000

# Liveness. The service answers only once it has started (migrations applied, model loaded);
# with no GALMET_MODEL it first trains the small mock-sky demo model, hence the start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/v1/healthz', timeout=4)"]

CMD ["galmet", "serve", "--host", "0.0.0.0", "--port", "8000"]
