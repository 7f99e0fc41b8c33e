"""Jobs over history: training and registering the per-store models, recomputing profiles."""

if __name__ != "storeml.batch":  # the folder is the package storeml.batch, under that name only
    raise ImportError(
        f"import storeml.batch, not {__name__}: the batch/ folder is installed as the"
        " subpackage storeml.batch (pyproject.toml [tool.setuptools.package-dir]), and a second"
        " name would load every module twice"
    )
