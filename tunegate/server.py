"""The app factory uvicorn loads (also in each worker process of ``--workers N``)."""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Any

from starlette.applications import Starlette

from tunegate.app import create_app
from tunegate.config import Settings
from tunegate.private import UMASK

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024
TRIM_THRESHOLD = 8 * 1024 * 1024


def tune_allocator() -> bool:
    """Fixed glibc malloc thresholds for a process that streams large bodies; whether they were set.

    - mmap threshold 1 MiB: glibc raises it each time a large block is freed, after which 8 MiB upload
      parts come from the heap and their memory stays resident; fixed, every large buffer is mmap'd
      and handed back to the OS as soon as it is freed.
    - trim threshold 8 MiB: setting the mmap threshold also freezes the trim threshold at its 128 KiB
      default, so every freed 256 KiB body chunk at the top of the heap was returned to the kernel and
      faulted back in by the next one (~43k page faults and ~0.06 s of kernel time per 200 MiB upload).
      Up to 8 MiB of free heap now stays resident instead.

    Called where the serving process (and each uvicorn worker) builds its app, before any request.
    Not glibc (musl, macOS: no ``libc.so.6``, or no ``mallopt``): nothing to tune."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)


def app() -> Starlette:
    tune_allocator()
    os.umask(UMASK)  # whatever the serving process writes (database, files, spools) is its user's alone
    settings = Settings.load(os.environ.get("TUNEGATE_CONFIG") or None)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Libraries that log request signing material or headers at DEBUG (botocore prints the SigV4
    # canonical request, session token included) stay at WARNING whatever the gateway's level.
    for noisy in ("botocore", "boto3", "urllib3", "google.auth", "aiohttp.client", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger(noisy).level))
    return create_app(settings)


def connection_limits(settings: Settings) -> dict[str, Any]:
    """uvicorn settings against clients that hold connections (slowloris) or send endless headers."""
    # The request line and header framing come on top of the headers the app's 431 counts.
    head = settings.max_header_bytes + 8 * 1024
    # By import path, not by class: with --workers uvicorn pickles its config for each worker process,
    # and the worker builds the guarded protocol from the same settings (tunegate.guard.GuardedProtocol).
    return dict(http="tunegate.guard:GuardedProtocol", timeout_keep_alive=settings.keep_alive_timeout,
                limit_concurrency=settings.max_connections, h11_max_incomplete_event_size=head)


def run(host: str, port: int, workers: int = 1) -> None:
    """Serve the gateway with uvicorn until a signal stops it.

    `tunegate serve` replaces its own process with this one (``python -m tunegate.server``), so the
    command line's libraries (typer, click, rich, the HTTP client) never stay resident in a serving
    process. uvicorn's ``run()`` helper is avoided for the same reason: it imports click and the reload
    supervisor (watchfiles). No WebSocket protocol is loaded: the API has no WebSocket route."""
    import uvicorn

    from tunegate.logs import uvicorn_log_config
    from tunegate.metrics import prepare_multiprocess

    settings = Settings.load(os.environ.get("TUNEGATE_CONFIG") or None)
    prepare_multiprocess(workers)  # /metrics then merges every worker's counters
    config = uvicorn.Config("tunegate.server:app", factory=True, host=host, port=port, workers=workers,
                            log_level=settings.log_level, access_log=False, proxy_headers=False, ws="none",
                            timeout_graceful_shutdown=30, log_config=uvicorn_log_config(settings.log_level),
                            **connection_limits(settings))
    server = uvicorn.Server(config)
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    server.run()
    if not server.started:
        raise SystemExit(3)  # uvicorn's STARTUP_FAILURE: the port was taken or the app failed to start


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tunegate.server", description=run.__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    run(args.host, args.port, args.workers)


if __name__ == "__main__":
    main()
