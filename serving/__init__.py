"""The HTTP surface: lookups, real-time predict and segments over the feature store (FastAPI)."""
