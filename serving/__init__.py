"""The HTTP surface: lookups, real-time predict and segments over the feature store (FastAPI)."""

if __name__ != "storeml.serving":  # the folder is the package storeml.serving, under that name only
    raise ImportError(
        f"import storeml.serving, not {__name__}: the serving/ folder is installed as the"
        " subpackage storeml.serving (pyproject.toml [tool.setuptools.package-dir]), and a second"
        " name would load every module twice"
    )
