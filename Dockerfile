# The storeml stream job: Python 3.11, Java 17 for Spark's JVM, the locked dependencies.
#   docker build -t storeml .        (docker-compose.yml builds it as the `stream` service)
# bookworm, not the default slim tag: Debian 13 (trixie) no longer ships openjdk-17.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1 \
    STOREML_HOME=/var/lib/storeml

# procps: Spark's launcher scripts call `ps`; tini reaps the Python workers Spark forks.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps tini \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, so code changes do not reinstall them.
# requirements-runtime.lock: the runtime dependencies only, at requirements.lock's versions (no
# dev tools, no embedded-stack extra: the image talks to real Kafka, Redis and MLflow).
COPY requirements-runtime.lock ./
RUN pip install uv \
 && uv pip install --system -r requirements-runtime.lock

COPY . .
RUN uv pip install --system --no-deps . \
 && useradd --create-home --uid 10001 storeml \
 && mkdir -p /var/lib/storeml \
 && chown storeml /var/lib/storeml

USER storeml
VOLUME ["/var/lib/storeml"]
ENTRYPOINT ["tini", "--", "storeml"]
CMD ["stream", "run"]
