# chequered: one image for the producer (chequered replay), the projector
# (chequered project) and the gateway (chequered serve). docker-compose.yml
# runs them beside Mosquitto.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CHEQUERED_REPLAYS=/app/replays

WORKDIR /app

# The locked dependencies first (hash-checked), then the package without
# dependencies, so that a change to the code or the replays reinstalls neither.
COPY requirements/run.txt ./requirements/run.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/run.txt
COPY pyproject.toml README.md ./
COPY chequered ./chequered
COPY simulator ./simulator
COPY consumers ./consumers
COPY broker ./broker
COPY loadtest ./loadtest
RUN pip install --no-cache-dir --no-deps . && rm -rf build

COPY replays ./replays

# Not root: nothing here needs it. /data holds the projector's checkpoints.
RUN useradd --system --uid 10001 --home-dir /app chequered \
    && mkdir -p /data/checkpoints && chown -R chequered /data
USER chequered

ENTRYPOINT ["chequered"]
CMD ["--help"]
