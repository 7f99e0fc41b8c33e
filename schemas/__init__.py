"""Avro schemas (``avro/<name>/v<N>.avsc``) and the codec that frames and evolves them."""

if __name__ != "storeml.schemas":  # the folder is the package storeml.schemas, under that name only
    raise ImportError(
        f"import storeml.schemas, not {__name__}: the schemas/ folder is installed as the"
        " subpackage storeml.schemas (pyproject.toml [tool.setuptools.package-dir]), and a second"
        " name would load every module twice"
    )
