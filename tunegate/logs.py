"""Structured JSON logs: one object per line, and one ``request`` line per HTTP request.

The request line carries the request id (the trace id echoed as ``x-portkey-trace-id``), the key *id*,
provider, operation, method, path, statuses and latency. It never carries a header value, a query
string or a body: secrets travel in those, so they are not read here at all.

``tunegate serve`` passes :func:`uvicorn_log_config` to uvicorn, so every worker process writes JSON
(``TUNEGATE_LOG_FORMAT=text`` switches back to plain text for local debugging).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

import orjson

REQUEST_LOGGER = "tunegate.request"
request_log = logging.getLogger(REQUEST_LOGGER)

# LogRecord attributes that are not "extra" fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra}`` on one line. Tracebacks are reduced to the
    exception's type: the message of a foreign exception may hold request data."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
        return orjson.dumps(entry, default=str).decode()


def json_enabled() -> bool:
    return os.environ.get("TUNEGATE_LOG_FORMAT", "json").lower() != "text"


def uvicorn_log_config(level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn (applied in every worker process): everything —
    tunegate's loggers, uvicorn's own and the request lines — goes to stderr as JSON."""
    formatter: dict[str, Any] = ({"()": "tunegate.logs.JsonFormatter"} if json_enabled() else
                                 {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default",
                                "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},  # tunegate writes its own request line
        },
    }


def ensure_request_handler() -> None:
    """Make request lines visible even when nothing configured logging (e.g. the app embedded in
    another server): a JSON handler on stderr, added once, only if no handler would receive them."""
    if request_log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    request_log.addHandler(handler)
    request_log.setLevel(logging.INFO)


def _stock_dispatch() -> bool:
    """``Logger.handle`` and ``callHandlers`` are logging's own (an SDK may wrap them to see records)."""
    return all(getattr(getattr(logging.Logger, name), "__module__", None) == "logging"
               for name in ("handle", "callHandlers"))


def _sole_json_stream() -> logging.StreamHandler[Any] | None:
    """The one handler a request line reaches, when it is what ``tunegate serve`` (or
    :func:`ensure_request_handler`) sets up: a plain ``StreamHandler`` with :class:`JsonFormatter`, open to
    INFO, with no filter anywhere on the way and the stock record factory. ``None`` for anything else
    (caplog, a custom handler, a second handler, a filter): those get the record through ``logging``.

    Walked on every line rather than cached, so a change to the logging set-up is seen at once; the walk is
    a few attribute reads, against the ~30 µs that making and formatting a ``LogRecord`` costs per request."""
    if (logging.getLogRecordFactory() is not logging.LogRecord or request_log.disabled
            or type(request_log) is not logging.Logger or not _stock_dispatch()):
        return None  # a custom record, logger class or patched dispatch (Sentry's) must see every record
    found: logging.StreamHandler[Any] | None = None
    logger: logging.Logger | None = request_log
    while logger is not None:
        if logger.filters:
            return None
        for handler in logger.handlers:
            if (found is not None or type(handler) is not logging.StreamHandler or handler.filters
                    or handler.level > logging.INFO or type(handler.formatter) is not JsonFormatter):
                return None
            found = handler
        logger = logger.parent if logger.propagate else None
    return found


def log_request(trace_id: str, method: str, path: str, status: int, latency_ms: float,
                key_id: str | None = None, provider: str | None = None, operation: str | None = None,
                upstream_status: int | None = None, attempts: int | None = None) -> None:
    """Write the one line for a finished request (cheap when INFO is disabled)."""
    if not request_log.isEnabledFor(logging.INFO):
        return
    extra = {
        "request_id": trace_id, "method": method, "path": path[:500], "status": status,
        "latency_ms": round(latency_ms, 3), "key_id": key_id, "provider": provider, "operation": operation,
        "upstream_status": upstream_status, "upstream_attempts": attempts
    }
    handler = _sole_json_stream()
    if handler is None:
        request_log.info("request", extra=extra)
        return
    # The same line JsonFormatter would make from the record, written the way StreamHandler.emit writes
    # it (under the handler's lock, then flushed), without the LogRecord.
    line = orjson.dumps({"ts": round(time.time(), 3), "level": "info", "logger": REQUEST_LOGGER, "msg": "request",
                         **extra}, default=str).decode() + handler.terminator
    try:
        with handler.lock or contextlib.nullcontext():
            handler.stream.write(line)
            handler.flush()
    except Exception:  # a closed or broken stream: what logging does with it (handleError) is its own call
        request_log.info("request", extra=extra)
