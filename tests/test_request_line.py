"""The request line's direct path (orjson + one write, no LogRecord) writes exactly what the
logging path writes, and is taken only for the set-up `tunegate serve` makes."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Iterator

import pytest

from tunegate import logs

ARGS = dict(trace_id="trace-1", method="GET", path="/v1/fine_tuning/jobs", status=200, latency_ms=1.23456,
            key_id="key_1", provider="openai", operation="list_jobs", upstream_status=200, attempts=1)


@contextlib.contextmanager
def sole_handler() -> Iterator[logging.StreamHandler[io.StringIO]]:
    """The request logger with one JSON StreamHandler and nothing above it. Made inside the test, not in
    a fixture: pytest attaches its capture handlers to the root and to every non-propagating logger as
    each phase starts."""
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logs.JsonFormatter())
    saved = (logs.request_log.handlers[:], logs.request_log.propagate, logs.request_log.level)
    logs.request_log.handlers = [handler]
    logs.request_log.propagate = False
    logs.request_log.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logs.request_log.handlers, logs.request_log.propagate = saved[0], saved[1]
        logs.request_log.setLevel(saved[2])


def written(handler: logging.StreamHandler[io.StringIO]) -> list[dict[str, object]]:
    return [json.loads(line) for line in handler.stream.getvalue().splitlines()]


def test_the_direct_line_is_the_line_logging_writes() -> None:
    with sole_handler() as handler:
        _test_the_direct_line_is_the_line_logging_writes(handler)


def _test_the_direct_line_is_the_line_logging_writes(sole_handler: logging.StreamHandler[io.StringIO]) -> None:
    assert logs._sole_json_stream() is sole_handler
    before = time.time()
    logs.log_request(**ARGS)  # type: ignore[arg-type]
    sole_handler.addFilter(lambda record: True)  # any filter sends the line through logging
    assert logs._sole_json_stream() is None
    logs.log_request(**ARGS)  # type: ignore[arg-type]
    direct, through_logging = written(sole_handler)
    assert before - 0.001 <= float(direct.pop("ts")) <= time.time() + 0.001  # type: ignore[arg-type]
    through_logging.pop("ts")
    assert list(direct.items()) == list(through_logging.items())  # same fields, same order, same values
    assert direct["msg"] == "request" and direct["latency_ms"] == 1.235 and direct["upstream_attempts"] == 1


def test_any_other_set_up_goes_through_logging() -> None:
    with sole_handler() as handler:
        _test_any_other_set_up_goes_through_logging(handler)


def _test_any_other_set_up_goes_through_logging(sole_handler: logging.StreamHandler[io.StringIO]) -> None:
    class Capture(logging.StreamHandler):  # type: ignore[type-arg]  # a subclass may do anything in emit
        pass

    second = logging.StreamHandler(io.StringIO())
    second.setFormatter(logs.JsonFormatter())
    changes = [
        lambda: logs.request_log.addHandler(second),
        lambda: logs.request_log.addHandler(Capture(io.StringIO())),
        lambda: sole_handler.setFormatter(logging.Formatter()),
        lambda: sole_handler.setLevel(logging.WARNING),
        lambda: logs.request_log.addFilter(lambda record: True),
        lambda: setattr(logs.request_log, "propagate", True),  # pytest's handlers on the root join in
    ]
    for change in changes:
        handlers, formatter = logs.request_log.handlers[:], sole_handler.formatter
        change()
        assert logs._sole_json_stream() is None
        logs.request_log.handlers, logs.request_log.filters, logs.request_log.propagate = handlers, [], False
        sole_handler.setFormatter(formatter)
        sole_handler.setLevel(logging.NOTSET)
        assert logs._sole_json_stream() is sole_handler


def test_a_custom_record_factory_goes_through_logging() -> None:
    with sole_handler() as handler:
        _test_a_custom_record_factory_goes_through_logging(handler)


def _test_a_custom_record_factory_goes_through_logging(sole_handler: logging.StreamHandler[io.StringIO]) -> None:
    stock = logging.getLogRecordFactory()
    logging.setLogRecordFactory(lambda *a, **kw: stock(*a, **kw))
    try:
        assert logs._sole_json_stream() is None
    finally:
        logging.setLogRecordFactory(stock)


def test_a_patched_dispatch_or_logger_class_goes_through_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """An SDK that wraps Logger.callHandlers (Sentry's breadcrumbs) must still see every request line."""
    with sole_handler() as handler:
        assert logs._sole_json_stream() is handler
        stock = logging.Logger.callHandlers
        seen: list[logging.LogRecord] = []

        def wrapped(self: logging.Logger, record: logging.LogRecord) -> None:
            seen.append(record)
            stock(self, record)

        monkeypatch.setattr(logging.Logger, "callHandlers", wrapped)
        assert logs._sole_json_stream() is None
        logs.log_request(**ARGS)  # type: ignore[arg-type]
        assert [r.getMessage() for r in seen] == ["request"] and written(handler)[0]["request_id"] == "trace-1"


def test_a_broken_stream_is_handled_as_logging_handles_it(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError

    handled: list[logging.LogRecord] = []
    with sole_handler() as handler:
        handler.setStream(Broken())
        monkeypatch.setattr(handler, "handleError", handled.append)
        logs.log_request(**ARGS)  # type: ignore[arg-type]  # must not raise
    assert [r.getMessage() for r in handled] == ["request"]
