# Apache Airflow with storeml beside it, for the `airflow` profile of docker-compose.yml:
#   docker compose --profile airflow up -d --build
# storeml lives in its own virtual environment (/opt/storeml), installed from requirements-runtime.lock:
# Airflow's pins and storeml's lock never mix. The generated DAGs call /opt/storeml/bin/storeml
# (`storeml schedule airflow --storeml-bin /opt/storeml/bin/storeml`). Build context: the repo.
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11

USER root
# Java 17 for Spark's JVM (the tasks run Spark local); procps: Spark's launcher scripts call `ps`.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && rm -rf /var/lib/apt/lists/*

ENV UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1 \
    PIP_NO_CACHE_DIR=1

# Dependencies first, so code changes do not reinstall them.
COPY requirements-runtime.lock /tmp/storeml/requirements-runtime.lock
RUN /usr/local/bin/python -m venv /opt/storeml \
 && /opt/storeml/bin/pip install uv \
 && /opt/storeml/bin/uv pip install --python /opt/storeml/bin/python -r /tmp/storeml/requirements-runtime.lock

COPY . /tmp/storeml/src
RUN /opt/storeml/bin/uv pip install --python /opt/storeml/bin/python --no-deps /tmp/storeml/src \
 && cp -r /tmp/storeml/src/examples/packages /opt/storeml/packages \
 && rm -rf /tmp/storeml \
 && mkdir -p /var/lib/storeml /opt/airflow/dags/storeml \
 && chown -R 10001:0 /var/lib/storeml /opt/airflow/dags \
 && chmod -R g+rwX /var/lib/storeml /opt/airflow/dags

# The compose services run as the stream image's uid (10001, group 0, which Airflow's image
# supports) so that they read and write the storeml volume as the stream does.
USER airflow
