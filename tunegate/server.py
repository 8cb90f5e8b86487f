"""The app factory uvicorn loads (also in each worker process of ``--workers N``)."""

from __future__ import annotations

import ctypes
import logging
import os

from starlette.applications import Starlette

from tunegate.app import create_app
from tunegate.config import Settings


def _return_large_buffers_to_the_os() -> None:
    """glibc raises its mmap threshold each time a large block is freed, after which 8 MiB upload parts
    come from the heap and their memory stays resident. A fixed 1 MiB threshold keeps every large
    buffer mmap'd, so it is handed back to the OS as soon as it is freed."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1024 * 1024)  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def app() -> Starlette:
    _return_large_buffers_to_the_os()
    settings = Settings.load(os.environ.get("TUNEGATE_CONFIG") or None)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Libraries that log request signing material or headers at DEBUG (botocore prints the SigV4
    # canonical request, session token included) stay at WARNING whatever the gateway's level.
    for noisy in ("botocore", "boto3", "urllib3", "google.auth", "aiohttp.client", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger(noisy).level))
    return create_app(settings)
