# kefu-hub production image.
# PyPI's Linux torch wheels bundle CUDA, so this image runs the local model on
# an NVIDIA GPU (docker run --gpus all) and falls back to the CPU without one.
# Build a slim gateway-only image (FAQ / remote vLLM engine) with:
#   docker build --build-arg EXTRAS= -t kefu-hub:gateway .
FROM python:3.11-slim

ARG EXTRAS=llm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    BOT__SERVER__HOST=0.0.0.0 BOT__SERVER__PORT=8080

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY adapters ./adapters
COPY engine ./engine
COPY config ./config
COPY docs/openapi.yaml ./docs/openapi.yaml
RUN pip install --upgrade pip \
    && if [ -n "$EXTRAS" ]; then pip install -e ".[$EXTRAS]"; else pip install -e .; fi \
    && useradd --create-home --uid 10001 kefu
USER kefu

EXPOSE 8080
EXPOSE 8081
# A gateway (or --role all) answers on BOT__SERVER__PORT, a worker on BOT__SERVER__WORKER_PORT: set
# KEFU_HEALTH_PORT=8081 for workers (docker-compose.yml does).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import os,urllib.request,sys; port=os.environ.get('KEFU_HEALTH_PORT','8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz').status == 200 else 1)"
# --role gateway | worker | all (the default: one process does both, no broker needed)
CMD ["python", "-m", "bot", "serve"]
