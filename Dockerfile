# syntax=docker/dockerfile:1
# tunegate gateway image: slim Python, PostgreSQL driver, non-root, JSON logs on stderr.
#   docker build -t tunegate .
#   docker run -p 8787:8787 -e TUNEGATE_SECRET_KEY=... -e TUNEGATE_DATABASE_URL=postgresql+asyncpg://... tunegate
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tunegate ./tunegate

RUN python -m venv /opt/tunegate \
 && /opt/tunegate/bin/pip install ".[postgres]"

FROM python:3.11-slim
ENV PATH=/opt/tunegate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TUNEGATE_HOST=0.0.0.0 \
    TUNEGATE_PORT=8787 \
    TUNEGATE_DATA_DIR=/data \
    TUNEGATE_WORKERS=2 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/tunegate-metrics
COPY --from=build /opt/tunegate /opt/tunegate
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin tunegate \
 && mkdir -p /data /tmp/tunegate-metrics && chown tunegate:tunegate /data /tmp/tunegate-metrics
USER tunegate
VOLUME ["/data"]
EXPOSE 8787
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('TUNEGATE_PORT', '8787')}/readyz\", timeout=2)"]
# `serve` migrates the database first (in a short-lived process), then starts the workers.
CMD ["sh", "-c", "exec tunegate serve --workers \"${TUNEGATE_WORKERS}\""]
