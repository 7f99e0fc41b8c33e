"""All of storeml's I/O, one connector per module: ``kafka_source`` (Kafka as a Spark Python data
source, format ``storeml_kafka``, batch and streaming), ``kafka_admin`` (topic creation, partition
discovery, watermarks with each broker's quirks, reading a topic back), ``kafka_sink``,
``redis_sink`` and ``dead_letter`` (the stream's sinks on the common ``base.Sink``), ``state_store``
(the profile state), ``event_producer`` and ``synthetic`` (event generation and replays).
"""
