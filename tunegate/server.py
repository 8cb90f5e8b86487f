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
    # Libraries that log request signing material or headers at DEBUG (botocore prints the SigV4
    # canonical request, session token included) stay at WARNING whatever the gateway's level.
    for noisy in ("botocore", "boto3", "urllib3", "google.auth", "aiohttp.client", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger(noisy).level))
    return create_app(settings)
