# syntax=docker/dockerfile:1
# One Dockerfile for every Offload service; SERVICE chooses which one an image runs:
#
#   docker build --build-arg SERVICE=video -t offload-video .
#
# SERVICE is gateway, notifier, sandbox, ai, research, video or image. The image
# holds only that service's dependencies, installed with uv from uv.lock
# (`uv sync --frozen --package offload-<SERVICE> --no-dev`), and runs
# `python -m offload_<SERVICE>`. docker-compose.yml builds all seven.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG SERVICE
RUN test -n "${SERVICE}" \
    || { echo "build with --build-arg SERVICE=gateway|notifier|sandbox|ai|research|video|image" >&2; exit 1; }
COPY --from=ghcr.io/astral-sh/uv:0.13 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src

# Third-party dependencies first, from the lock file alone: this layer is reused
# until uv.lock changes, however often the code does.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-install-workspace --package "offload-${SERVICE}" --no-dev

# Then Offload's own packages (contracts, runtime, the service), installed rather
# than linked, so the final image needs no source tree.
COPY contracts contracts
COPY services services
COPY client client
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --package "offload-${SERVICE}" --no-dev --no-editable

FROM python:${PYTHON_VERSION}-slim-bookworm
ARG SERVICE
ENV SERVICE=${SERVICE} \
    PATH=/app/.venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OFFLOAD_STORAGE_DIR=/data/storage
RUN groupadd --system --gid 10001 offload \
    && useradd --system --uid 10001 --gid offload --home-dir /app --no-create-home offload \
    && mkdir -p /data/storage \
    && chown offload:offload /data/storage
COPY --from=build /app/.venv /app/.venv
COPY deploy/healthcheck.py deploy/probes.py /app/
WORKDIR /app
USER offload
# Workers stop consuming on SIGTERM and let in-flight jobs finish within
# OFFLOAD_SHUTDOWN_GRACE_S; compose's stop_grace_period leaves them that long.
STOPSIGNAL SIGTERM
CMD ["sh", "-c", "exec python -m \"offload_${SERVICE}\""]
