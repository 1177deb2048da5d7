# syntax=docker/dockerfile:1
# One image for every SBS process: the operator (sbs-operator), the scheduler service
# (sbs-scheduler), the SGLang engine emulator (sbs-engine) and the simulator (sbs-sim).
#
#   docker build -t ghcr.io/sbs-project/sbs:0.1.0 .
#
# The builder turns the project and its dependencies into wheels; the runtime stage installs them
# into a pip-less virtual environment and keeps no compiler, no pip cache and no source. It runs as
# uid 65532 and needs no writable path but /tmp (HOME, MPLCONFIGDIR and NUMBA_CACHE_DIR point there;
# bytecode is compiled at install time), so it works with a read-only root filesystem; without a
# writable /tmp the scheduler compiles its kernels once per process, at start.
# `make docker-lint` lints this file; tests/packaging/test_dockerfile.py runs both RUN steps,
# verbatim, into a fresh virtual environment (docs/packaging.md). Keep paths in SBS_* build args.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG SBS_WHEELS=/wheels
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore lets in only pyproject.toml, README.md and the package folders.
COPY . .
# Every dependency is published as a binary wheel, so this needs no compiler. (`pip`, not
# `python -m pip`: with /src first on sys.path, operator/ would shadow the standard library's.)
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir "$SBS_WHEELS" .

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
# SBS_WHEELS is the mount target below; SBS_VENV is also on PATH.
ARG SBS_WHEELS=/wheels
ARG SBS_VENV=/opt/sbs
LABEL org.opencontainers.image.title="sbs" \
      org.opencontainers.image.description="Staggered Batch Scheduling: operator, scheduler service and SGLang engine emulator for P/D-disaggregated MoE serving" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/sbs-project/sbs" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PATH="/opt/sbs/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv --without-pip "$SBS_VENV" \
    && python -m pip --python "$SBS_VENV/bin/python" install --no-cache-dir --no-index \
        --find-links "$SBS_WHEELS" "sbs==${VERSION}"
USER 65532:65532
WORKDIR /tmp
# 8080 operator liveness, 9090 operator metrics, 8000 scheduler, 30000 engine emulator
EXPOSE 8080 9090 8000 30000
CMD ["sbs-operator", "--help"]
