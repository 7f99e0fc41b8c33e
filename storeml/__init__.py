"""storeml: per-store machine-learning models on live commerce events.

The code is laid out along the data flow (source -> decode -> enrich -> encode -> sinks):

- ``storeml.schemas``     Avro ``.avsc`` files and the codec (top-level folder ``schemas/``)
- ``storeml.connectors``  all I/O: Kafka source for Spark, Kafka/Redis/dead-letter sinks, MLflow,
                          the profile state store, event generators and replays (``connectors/``)
- ``storeml.models``      pure DataFrame-in/DataFrame-out profile folding, features and scoring
                          (``models/``)
- ``storeml.streams``     wiring of the streaming jobs (``streams/``)
- ``storeml.batch``       training and jobs over history (``batch/``)

Those folders are mapped into this package by ``[tool.setuptools.package-dir]`` in
pyproject.toml, so each module has one import name (``storeml.models.events``; ``import models``
raises ImportError).

``storeml.settings`` holds the one settings object, ``storeml.errors`` the exception tree and
``storeml.cli`` the ``storeml`` command.
"""

__version__ = "0.1.0"
