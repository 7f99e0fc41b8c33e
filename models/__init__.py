"""Pure enrichment: profile folding, features and per-store model scoring (DataFrame in, DataFrame out)."""

if __name__ != "storeml.models":  # the folder is the package storeml.models, under that name only
    raise ImportError(
        f"import storeml.models, not {__name__}: the models/ folder is installed as the"
        " subpackage storeml.models (pyproject.toml [tool.setuptools.package-dir]), and a second"
        " name would load every module twice"
    )
