"""Avro schemas (``avro/<name>/v<N>.avsc``) and the codec that frames and evolves them."""
