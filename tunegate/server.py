"""The app factory uvicorn loads (also in each worker process of ``--workers N``)."""

from __future__ import annotations

import logging
import os
from typing import Any

from starlette.applications import Starlette

from tunegate.allocator import tune_allocator
from tunegate.app import create_app
from tunegate.config import Settings
from tunegate.private import UMASK


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
