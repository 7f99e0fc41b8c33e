"""Wiring of the streaming jobs: read, enrich, write (Spark Structured Streaming, Faust)."""
