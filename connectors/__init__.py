"""All of storeml's I/O, one connector per module: ``kafka_source`` (Kafka as a Spark Python data
source, format ``storeml_kafka``, batch and streaming), ``kafka_admin`` (topic creation, partition
discovery, watermarks with each broker's quirks, reading a topic back), ``kafka_sink``,
``redis_sink`` and ``dead_letter`` (the stream's sinks on the common ``base.Sink``), ``state_store``
(the profile state), ``event_producer`` and ``synthetic`` (event generation and replays).
"""

if (
    __name__ != "storeml.connectors"
):  # the folder is the package storeml.connectors, under that name only
    raise ImportError(
        f"import storeml.connectors, not {__name__}: the connectors/ folder is installed as the"
        " subpackage storeml.connectors (pyproject.toml [tool.setuptools.package-dir]), and a second"
        " name would load every module twice"
    )
