"""Wiring of the streaming jobs: read, enrich, write (Spark Structured Streaming, Faust)."""

if __name__ != "storeml.streams":  # the folder is the package storeml.streams, under that name only
    raise ImportError(
        f"import storeml.streams, not {__name__}: the streams/ folder is installed as the"
        " subpackage storeml.streams (pyproject.toml [tool.setuptools.package-dir]), and a second"
        " name would load every module twice"
    )
