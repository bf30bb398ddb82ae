# syntax=docker/dockerfile:1
# The gateway (FastAPI in front of Triton, no torch) and, as the `loadtest` target, the Locust client.
# Build targets: `gateway` (the default, last stage) and `loadtest`.

FROM python:3.12-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/hybrid

# The `service` extra, pinned (fastapi, uvicorn, tritonclient, ...): no torch in this image.
COPY docker/requirements-core.txt docker/requirements-service.txt docker/
RUN pip install --no-cache-dir -r docker/requirements-service.txt

# The gateway reads the torch-free parts of `hybrid` (profiles, contracts, media).
COPY pyproject.toml ./
COPY hybrid/ hybrid/
COPY service/ service/
RUN pip install --no-cache-dir --no-deps . \
    && groupadd --system --gid 10001 hybrid \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin hybrid


# Locust, run on demand (compose profile `loadtest`). It stays root: it writes its report into the
# bind-mounted ./results/loadtest, which Docker creates root-owned; it publishes no port.
FROM base AS loadtest
COPY docker/requirements-loadtest.txt docker/
RUN pip install --no-cache-dir -r docker/requirements-loadtest.txt
COPY loadtest/ loadtest/
RUN pip install --no-cache-dir --no-deps .
CMD ["python", "-m", "loadtest", "--help"]


FROM base AS gateway
USER 10001:10001
# 0.0.0.0: inside a container the published port reaches the process only on the container's interface.
ENV HYBRID_HOST=0.0.0.0 \
    HYBRID_PORT=8080
EXPOSE 8080
CMD ["python", "-m", "service", "--no-embedded-triton"]
