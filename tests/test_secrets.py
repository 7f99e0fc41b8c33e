"""Secrets: authenticated Redis (requirepass + ACL users) through settings, and passwords for
Redis, MLflow and Kafka SASL that never show in settings prints, errors, logs or Spark plans."""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from storeml.cli import main
from storeml.connectors.redis_client import LOOKUP_ACL, STREAM_ACL
from storeml.connectors.redis_sink import FeatureStore, RedisProfileSink
from storeml.errors import ConfigError, ConnectorError, StackError
from storeml.redaction import SecretRedactingFilter, redact_url
from storeml.settings import Settings, load_settings
from storeml.stack import RedisServer, free_port, redis_answers
from storeml.streams.context import client, job_context

ADMIN_PW = "adm1n-Pw-7f3"
STREAM_PW = "str3am-Pw-91c"
LOOKUP_PW = "l00kup-Pw-5d2"
PREFIX = "acltest"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "security.md"
#: Spark's default spark.redaction.regex and spark.sql.redaction.options.regex (Spark 4.3)
SPARK_REDACTED = re.compile(r"(?i)secret|password|token|access[.]?key|credential|url")


@pytest.fixture(autouse=True)
def _no_storeml_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("STOREML_"):
            monkeypatch.delenv(name)
    # job contexts set these; absent again after each test
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of its own: default user behind requirepass, a stream and a lookup user
    with exactly the ACL rules docs/security.md gives."""
    server = RedisServer(
        workdir=tmp_path_factory.mktemp("acl-redis"),
        password=ADMIN_PW,
        config=[
            f"user storeml-stream on >{STREAM_PW} {STREAM_ACL.format(prefix=PREFIX)}",
            f"user storeml-lookup on >{LOOKUP_PW} {LOOKUP_ACL.format(prefix=PREFIX)}",
        ],
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _profile(store: str, customer: str, version: int) -> dict:
    return {
        "store_id": store,
        "customer_id": customer,
        "profile_version": version,
        "order_count": version,
        "total_spend_minor": 100 * version,
        "propensity": 0.5,
        "top_categories": [],
        "model": {"name": "m", "version": "1", "scope": "store"},
        "source": [],
    }


def _stream_settings(server: RedisServer, password: str = STREAM_PW) -> Settings:
    # the password inside the URL: settings move it to redis_password
    return load_settings(
        redis_url=f"redis://storeml-stream:{password}@127.0.0.1:{server.port}/0",
        redis_prefix=PREFIX,
    )


def test_the_docs_give_the_acl_rules_the_test_grants() -> None:
    text = DOCS.read_text()
    assert STREAM_ACL.format(prefix="storeml") in text
    assert LOOKUP_ACL.format(prefix="storeml") in text


def test_stream_sink_and_lookups_work_through_settings(acl_redis: RedisServer) -> None:
    settings = _stream_settings(acl_redis)
    assert STREAM_PW not in settings.redis_url and settings.redis_username == "storeml-stream"
    # the executors' way: the job context pickled into a task, the sink from the process cache
    ctx = pickle.loads(pickle.dumps(job_context(settings)))
    sink: RedisProfileSink = client(RedisProfileSink, ctx.redis, ctx.redis_prefix)
    assert sink.write("customer", [_profile("s1", "c1", 3)], "customer_id") == (1, 0)
    assert sink.write("customer", [_profile("s1", "c1", 2)], "customer_id") == (0, 1)
    assert sink.delete("customer", [("s1", "c1", 2)]) == 0  # guarded EVAL: newer stays
    store = FeatureStore(settings.redis, settings.redis_prefix)
    assert store.customer("s1", "c1")["profile_version"] == "3"
    assert store.scan("customer", "s1") == [f"{PREFIX}:{{s1}}:customer:c1"]
    # the ACL is real: the stream's user cannot touch keys outside its prefix
    with pytest.raises(redis.exceptions.NoPermissionError):
        settings.redis.connect().set("other-tenant:key", "x")
    # `storeml lookup` with the read-only user, configured by environment variables only
    env = {
        "STOREML_REDIS_URL": f"redis://127.0.0.1:{acl_redis.port}/0",
        "STOREML_REDIS_USERNAME": "storeml-lookup",
        "STOREML_REDIS_PASSWORD": LOOKUP_PW,
        "STOREML_REDIS_PREFIX": PREFIX,
    }
    result = CliRunner().invoke(main, ["lookup", "customer", "s1", "c1"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["profile_version"] == "3"
    assert redis_answers(settings.redis)


def test_wrong_password_is_a_clear_error_without_the_password(acl_redis: RedisServer) -> None:
    wrong = "wr0ng-Pw-0000"
    settings = _stream_settings(acl_redis, password=wrong)
    sink = RedisProfileSink(settings.redis, settings.redis_prefix, retry_seconds=60)
    with pytest.raises(ConnectorError) as info:  # at once: waiting does not fix a password
        sink.write("customer", [_profile("s1", "c9", 1)], "customer_id")
    for message in (str(info.value), str(info.value.__cause__)):
        assert wrong not in message
    assert "STOREML_REDIS_PASSWORD" in str(info.value)
    assert "storeml-stream" in str(info.value)
    with pytest.raises(ConnectorError, match="refused the credentials") as info:
        FeatureStore(settings.redis, settings.redis_prefix).customer("s1", "c1")
    assert wrong not in str(info.value)
    with pytest.raises(StackError, match="refused the credentials") as stack_info:
        redis_answers(settings.redis)
    assert wrong not in str(stack_info.value)
    # no password at all against requirepass: NOAUTH, the same advice
    no_password = f"redis://127.0.0.1:{acl_redis.port}/0"
    with pytest.raises(ConnectorError, match="STOREML_REDIS_PASSWORD"):
        FeatureStore(no_password, PREFIX).customer("s1", "c1")
    env = {"STOREML_REDIS_URL": f"redis://storeml-lookup:{wrong}@127.0.0.1:{acl_redis.port}/0"}
    result = CliRunner().invoke(main, ["lookup", "customer", "s1", "c1"], env=env)
    assert result.exit_code != 0
    assert "refused the credentials" in result.output and wrong not in result.output


# --- passwords everywhere, shown nowhere ------------------------------------------------------

SECRETS = {
    "redis": "r3dis-S3cret-aa",
    "mlflow": "mlfl0w-S3cret-bb",
    "mlflow_token": "t0ken-S3cret-cc",
    "sasl": "sasl-S3cret-dd",
    "key_password": "keypw-S3cret-ee",
    "oauth": "oauth-S3cret-ff",
    "pem": "-----BEGIN PRIVATE KEY-----pem-S3cret-gg",
}


def _secret_env(port: int) -> dict[str, str]:
    return {
        "STOREML_REDIS_URL": f"redis://stream:{SECRETS['redis']}@127.0.0.1:{port}/0",
        "STOREML_MLFLOW_TRACKING_URI": f"https://ml-user:{SECRETS['mlflow']}@mlflow.example:5000",
        "STOREML_MLFLOW_TOKEN": SECRETS["mlflow_token"],
        "STOREML_KAFKA_PASSWORD": SECRETS["sasl"],
        "STOREML_KAFKA_SECURITY": json.dumps(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": "stream",
                "ssl.key.password": SECRETS["key_password"],
                "sasl.oauthbearer.client.secret": SECRETS["oauth"],
                "ssl.key.pem": SECRETS["pem"],
            }
        ),
    }


def _leaks(text: str) -> list[str]:
    return [name for name, secret in SECRETS.items() if secret in text]


@pytest.fixture
def secret_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in _secret_env(free_port()).items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_settings_hold_every_secret_and_print_none(secret_settings: Settings) -> None:
    s = secret_settings
    assert s.redis_password is not None and s.redis_password.get_secret_value() == SECRETS["redis"]
    assert s.tracking_uri == "https://mlflow.example:5000" and s.mlflow_username == "ml-user"
    config = s.kafka_config()
    assert config["sasl.password"] == SECRETS["sasl"] and config["ssl.key.pem"] == SECRETS["pem"]
    assert set(s.secret_values()) == set(SECRETS.values())
    for text in (repr(s), str(s), s.model_dump_json(), str(s.shown()), str(s.redis)):
        assert _leaks(text) == [], text
    result = CliRunner().invoke(main, ["settings"], env=dict(os.environ))
    assert result.exit_code == 0, result.output
    assert _leaks(result.output) == []
    assert "sasl.username': 'stream'" in result.output  # what is not secret stays readable
    assert "kafka_password = ***" in result.output and "redis_username = stream" in result.output


def test_settings_errors_never_echo_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = [
        {"STOREML_REDIS_URL": f"http://u:{SECRETS['redis']}@h:1/0"},  # not a Redis scheme
        {
            "STOREML_REDIS_URL": f"redis://u:{SECRETS['redis']}@h:1/0",
            "STOREML_REDIS_PASSWORD": SECRETS["sasl"],  # two different passwords
        },
        {"STOREML_KAFKA_SECURITY": json.dumps({"sasl.password": [SECRETS["sasl"]]})},
        {"STOREML_KAFKA_PASSWORD": SECRETS["sasl"], "STOREML_TOPIC_PARTITIONS": "many"},
        {"STOREML_MLFLOW_TRACKING_URI": f"https://u:{SECRETS['mlflow']}@h", "STOREML_NOPE": "1"},
        {
            "STOREML_REDIS_URL": f"redis://u:{SECRETS['redis']}@h:1/0",
            "STOREML_REDIS_SSL_CA_CERTS": "/etc/ca.pem",  # TLS files without rediss://
        },
    ]
    for env in bad:
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            with pytest.raises(ConfigError) as info:
                load_settings()
            assert _leaks(str(info.value)) == [], str(info.value)
            result = CliRunner().invoke(main, ["settings"], env=dict(os.environ))
            assert result.exit_code != 0 and _leaks(result.output) == [], result.output


def test_connector_errors_and_logs_carry_no_secret(
    secret_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    messages: list[str] = []
    # Redis at a closed port, with its password in the URL and an ACL user
    sink = RedisProfileSink(secret_settings.redis, "p", retry_seconds=0.3)
    with pytest.raises(ConnectorError) as info:
        sink.write("customer", [_profile("s", "c", 1)], "customer_id")
    messages.append(str(info.value))
    with pytest.raises(ConnectorError) as info:
        FeatureStore(secret_settings.redis, "p").customer("s", "c")
    messages.append(str(info.value))
    assert not redis_answers(secret_settings.redis)
    # a plain URL with a password given to a connector directly
    with pytest.raises(ConnectorError) as info:
        FeatureStore(f"redis://:{SECRETS['redis']}@127.0.0.1:{free_port()}/0", "p").get(
            "customer", "s", "c"
        )
    messages.append(str(info.value))
    messages.append(redact_url(f"cannot open postgresql://mlflow:{SECRETS['mlflow']}@db/mlflow"))
    for message in messages:
        assert _leaks(message) == [], message
        assert "127.0.0.1" in message or "db/mlflow" in message  # still says where
    # everything logged meanwhile (the sink's retry warnings quote redis-py's errors)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records and _leaks(logged) == [], logged
    # the CLI's log filter masks what a library might log: a URI with userinfo, a known secret
    record = logging.LogRecord(
        "lib", logging.WARNING, __file__, 1, "GET %s failed (%s)",
        (f"https://u:{SECRETS['mlflow']}@h/api", SECRETS["sasl"]), None,
    )  # fmt: skip
    SecretRedactingFilter(secret_settings.secret_values()).filter(record)
    assert _leaks(record.getMessage()) == [] and "https://u:***@h/api" in record.getMessage()


def test_job_context_hands_mlflow_credentials_to_the_process(secret_settings: Settings) -> None:
    ctx = job_context(secret_settings)
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ml-user"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRETS["mlflow"]
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        del os.environ[name]
    pickle.loads(pickle.dumps(ctx))  # what an executor does with a task's context
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRETS["mlflow"]
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == SECRETS["mlflow_token"]
    assert _leaks(repr(ctx)) == []


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append(self.headers.get("Authorization"))
        body = b'{"registered_models": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_mlflow_client_sends_the_basic_auth_of_the_settings() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://ml-user:{SECRETS['mlflow']}@127.0.0.1:{server.server_port}"
        settings = load_settings(mlflow_tracking_uri=uri)
        assert SECRETS["mlflow"] not in settings.tracking_uri
        job_context(settings)  # the driver's part; executors apply the same on unpickling
        from mlflow import MlflowClient

        MlflowClient(settings.tracking_uri, settings.registry_uri).search_registered_models()
    finally:
        server.shutdown()
    expected = base64.b64encode(f"ml-user:{SECRETS['mlflow']}".encode()).decode()
    assert _Recorder.seen and _Recorder.seen[-1] == f"Basic {expected}"


def test_spark_options_and_plan_show_no_secret(secret_settings: Settings, spark: object) -> None:
    from storeml.streams.enrich import source_options
    from storeml.streams.event_source import EVENT_SOURCE_NAME, EventSource, context_option

    ctx = job_context(secret_settings)
    options = {**source_options(secret_settings, tasks=2), **context_option(ctx)}
    for key, value in options.items():  # a secret only where Spark's default regex redacts
        assert not _leaks(value) or SPARK_REDACTED.search(key), key
    assert "kafkaSecrets" in options
    assert _leaks(options["storeml.context"]) == []
    spark.dataSource.register(EventSource)  # type: ignore[attr-defined]
    frame = spark.readStream.format(EVENT_SOURCE_NAME).options(**options).load()  # type: ignore[attr-defined]
    plan = frame._jdf.queryExecution().toString()
    assert "kafkaSecrets" in plan.replace("kafkasecrets", "kafkaSecrets") or "redacted" in plan
    assert _leaks(plan) == [], plan
    # the source still gets the credentials it needs (Kafka), rebuilt from the options
    source = EventSource(options)
    rebuilt = source._context()
    assert rebuilt.kafka["sasl.password"] == SECRETS["sasl"]
    assert rebuilt.kafka["ssl.key.pem"] == SECRETS["pem"]
    assert rebuilt.redis.password is None  # the decoder needs no Redis password


@pytest.mark.slow
def test_the_stream_writes_through_an_acl_user_and_lookups_read_through_another(
    acl_redis: RedisServer, settings: Settings, spark: object, unique: str
) -> None:
    """The real stream against a requirepass + ACL Redis, configured by settings only."""
    from pydantic import SecretStr

    from storeml.connectors.synthetic import GeneratorConfig
    from storeml.streams.enrich import start_enrichment
    from tests.test_stream_e2e import input_events, latest_from_topic, produce

    prefix = f"{PREFIX}:{unique}"
    settings = settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{acl_redis.port}/0",
            "redis_username": "storeml-stream",
            "redis_password": SecretStr(STREAM_PW),
            "redis_prefix": prefix,
            "serving_alias": "",
            "shadow_alias": "",
        }
    )
    produce(settings, GeneratorConfig(stores=3, events=1_500, seed=41))
    query, _ = start_enrichment(spark, settings, available_now=True)  # type: ignore[arg-type]
    query.awaitTermination(600)
    assert query.exception() is None, query.exception()

    good, _ = input_events(settings)
    assert good
    got = latest_from_topic(
        settings, settings.topic_customer_profiles, "customer_id", "customer_profile"
    )
    (store, customer), record = next(iter(got.items()))
    env = {
        "STOREML_REDIS_URL": f"redis://127.0.0.1:{acl_redis.port}/0",
        "STOREML_REDIS_USERNAME": "storeml-lookup",
        "STOREML_REDIS_PASSWORD": LOOKUP_PW,
        "STOREML_REDIS_PREFIX": prefix,
    }
    result = CliRunner().invoke(main, ["lookup", "customer", store, customer], env=env)
    assert result.exit_code == 0, result.output
    assert int(json.loads(result.output)["profile_version"]) == record["profile_version"]
    lookups = FeatureStore(settings.redis, prefix)
    assert len(lookups.scan("customer")) == len(got)
    lookups.close()


def test_the_log_filter_masks_tracebacks_too() -> None:
    import io

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretRedactingFilter(("s3cr3t-token-xyz",)))
    logger = logging.getLogger("storeml.test-redaction")
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError("cannot reach redis://u:hunter22@host:6379/0 with s3cr3t-token-xyz")
        except RuntimeError:
            logger.exception("it failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "it failed" in text and "RuntimeError" in text
    assert "hunter22" not in text and "s3cr3t-token-xyz" not in text
