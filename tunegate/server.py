"""The app factory uvicorn loads (also in each worker process of ``--workers N``)."""

from __future__ import annotations

import logging
import os

from starlette.applications import Starlette

from tunegate.app import create_app
from tunegate.config import Settings


def app() -> Starlette:
    settings = Settings.load(os.environ.get("TUNEGATE_CONFIG") or None)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return create_app(settings)
