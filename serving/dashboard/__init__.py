"""The monitoring dashboard's HTML: pure rendering (``pages``), inline SVG plots (``svg``) and the
page shell (``layout``). The routes are in :mod:`storeml.serving.routes.dashboard`."""

from storeml.serving.dashboard.overview import overview_page
from storeml.serving.dashboard.pages import login_page, message_page, model_page, store_page

__all__ = ["overview_page", "store_page", "model_page", "login_page", "message_page"]
