"""OpenTelemetry tracing, optional (``pip install 'tunegate[otel]'``).

Off unless ``TUNEGATE_OTLP_ENDPOINT`` is set (e.g. ``http://otel-collector:4318/v1/traces``); when
off nothing from OpenTelemetry is imported and the middleware pays one boolean test per request.

When on: a SERVER span per request, and a CLIENT span per upstream call (aiohttp's client is
instrumented, with query strings stripped from recorded URLs). The trace id follows the caller:

* ``traceparent`` (W3C) makes the request span a child of the caller's span;
* otherwise an ``x-portkey-trace-id`` of 32 hex digits becomes the trace id itself;
* otherwise a new one is made.

The gateway's request id (``x-portkey-trace-id`` echo, log ``request_id``) is the same value whenever
the caller sent a W3C trace id, so logs and traces join on it.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
from typing import Any

from starlette.types import Scope

log = logging.getLogger("tunegate.tracing")

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")

_tracer: Any = None
_provider: Any = None
_pinned: contextvars.ContextVar[int | None] = contextvars.ContextVar("tunegate_pinned_trace_id", default=None)


def trace_id_from_traceparent(value: str | None) -> str | None:
    """The trace id of a valid W3C ``traceparent`` header (no OpenTelemetry needed)."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match.group(1) == "0" * 32 or match.group(2) == "0" * 16:
        return None
    return match.group(1)


def enabled() -> bool:
    return _tracer is not None


def setup(endpoint: str | None = None, exporter: Any = None) -> bool:
    """Start tracing if an endpoint is configured (or an exporter is given, for tests). Safe to call
    more than once; returns whether tracing is on."""
    global _tracer, _provider
    if _tracer is not None:
        return True
    endpoint = endpoint or os.environ.get("TUNEGATE_OTLP_ENDPOINT")
    if not endpoint and exporter is None:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    except ImportError:
        log.warning("TUNEGATE_OTLP_ENDPOINT is set but OpenTelemetry is not installed "
                    "(pip install 'tunegate[otel]'); tracing stays off")
        return False

    class PinnedIds(RandomIdGenerator):
        """Random ids, except a root span's trace id when the request carried a usable one."""

        def generate_trace_id(self) -> int:
            pinned = _pinned.get()
            return pinned if pinned else super().generate_trace_id()

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "tunegate")})
    provider = TracerProvider(resource=resource, id_generator=PinnedIds())
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    try:
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

        AioHttpClientInstrumentor().instrument(tracer_provider=provider,
                                               url_filter=lambda url: str(url.with_query(None)))
    except ImportError:
        log.warning("opentelemetry-instrumentation-aiohttp-client is missing: no upstream call spans")
    _provider = provider
    _tracer = provider.get_tracer("tunegate")
    return True


def shutdown() -> None:
    """Flush and stop (tests; the process exit flushes the batch processor otherwise)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
        try:
            from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

            AioHttpClientInstrumentor().uninstrument()
        except ImportError:
            pass
    _tracer = _provider = None


def start_request(scope: Scope, trace_id: str, traceparent: str | None) -> tuple[Any, Any]:
    """Open the request's span and make it current; returns what :func:`end_request` needs."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = None
    pin = None
    if traceparent and trace_id_from_traceparent(traceparent):
        parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    elif _HEX32.match(trace_id):
        pin = _pinned.set(int(trace_id, 16))
    try:
        span = _tracer.start_span(f"{scope['method']} {scope['path']}", context=parent,
                                  kind=trace.SpanKind.SERVER,
                                  attributes={"http.request.method": scope["method"], "url.path": scope["path"],
                                              "tunegate.request_id": trace_id})
    finally:
        if pin is not None:
            _pinned.reset(pin)
    token = otel_context.attach(trace.set_span_in_context(span))
    return span, token


def end_request(handle: tuple[Any, Any], scope: Scope, status: int) -> None:
    from opentelemetry import context as otel_context
    from opentelemetry.trace import Status, StatusCode

    span, token = handle
    ctx = scope.get("tunegate.ctx")
    endpoint = scope.get("endpoint")
    span.set_attribute("http.response.status_code", status)
    if endpoint is not None:
        span.update_name(f"{scope['method']} {getattr(endpoint, '__name__', scope['path'])}")
        span.set_attribute("tunegate.operation", getattr(endpoint, "__name__", ""))
    if ctx is not None:
        span.set_attribute("tunegate.provider", ctx.provider_name)
        if ctx.upstream_status is not None:
            span.set_attribute("tunegate.upstream_status", ctx.upstream_status)
        span.set_attribute("tunegate.upstream_attempts", ctx.policy.stats["attempts"])
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()
    try:
        otel_context.detach(token)
    except ValueError:  # detached in another context (a cancelled task): nothing left to restore
        pass
