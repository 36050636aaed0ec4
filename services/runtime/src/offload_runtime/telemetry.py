"""OpenTelemetry tracing for every Offload process: off by default, OTLP when configured.

A trace follows a job from the HTTP request that submitted it, through the
queue, into the worker that runs it (and on to the webhook, through the
notifier's HTTP client):

- the gateway's FastAPI app is instrumented (`instrument_fastapi`), so each
  request opens a server span;
- every FastStream broker gets `RabbitTelemetryMiddleware`
  (`broker_middlewares`), which writes the W3C `traceparent` into the headers
  of each published message and continues the trace from those headers when a
  message is consumed, so a worker's span is a child of the gateway's publish;
- the job store writes the current span's `traceparent` into each `JobEvent` it
  records (`current_traceparent`), so the trace crosses the Redis outbox; the
  notifier publishes the event's webhook delivery in that trace
  (`continue_trace`), opens its delivery span in it (`span_in_trace`), and its
  httpx client, instrumented with `instrument_httpx`, puts the trace into the
  webhook request.

Tracing is on when `OFFLOAD_OTLP_ENDPOINT` is set (spans go there over
OTLP/HTTP in batches) or when a provider is handed in with
`use_tracer_provider` (tests, embedding). When it is off, nothing is added:
no middleware on the broker, no ASGI middleware, so the hot path pays nothing.
"""

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from offload_runtime.logging import get_logger
from offload_runtime.settings import RuntimeSettings

log = get_logger("offload.telemetry")

_override: TracerProvider | None = None
_configured: dict[tuple[str, str, float], TracerProvider] = {}


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Make every process part built from now on trace into `provider` (None: back to settings).

    Tests use it with an `InMemorySpanExporter`; it wins over `OFFLOAD_OTLP_ENDPOINT`.
    """
    global _override
    _override = provider


def tracer_provider_for(settings: RuntimeSettings, service: str) -> TracerProvider | None:
    """The provider a process part of `service` traces into, or None when tracing is off.

    One provider per (endpoint, service, ratio) and process, so the gateway's
    app and broker share it and spans are exported once.
    """
    if _override is not None:
        return _override
    endpoint = settings.otlp_endpoint
    if not endpoint:
        return None
    key = (endpoint, service, settings.trace_sample_ratio)
    provider = _configured.get(key)
    if provider is None:
        # Imported here: the exporter pulls in protobuf and requests, which a
        # process without tracing never needs.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider = TracerProvider(
            resource=Resource.create({"service.name": f"offload-{service}"}),
            sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
        )
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=_traces_url(endpoint)))
        )
        _configured[key] = provider
        log.info("tracing on", endpoint=endpoint, service=service)
    return provider


def _traces_url(endpoint: str) -> str:
    """`http://collector:4318` → `http://collector:4318/v1/traces` (a full URL is kept)."""
    trimmed = endpoint.rstrip("/")
    return trimmed if trimmed.endswith("/v1/traces") else f"{trimmed}/v1/traces"


def broker_middlewares(provider: TracerProvider | None) -> tuple[Any, ...]:
    """FastStream middlewares that carry trace context through message headers."""
    if provider is None:
        return ()
    from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware

    return (RabbitTelemetryMiddleware(tracer_provider=provider),)


def instrument_broker(broker: Any, provider: TracerProvider | None) -> None:
    """Add the tracing middleware to a FastStream broker (no-op when tracing is off).

    Call before the broker starts; publishes and subscribers added earlier are
    covered too, since FastStream reads the broker's middlewares per message.
    """
    for middleware in broker_middlewares(provider):
        broker.add_middleware(middleware)


def instrument_fastapi(app: Any, provider: TracerProvider | None) -> None:
    """Open a server span per HTTP request (no-op when tracing is off).

    `/metrics`, `/healthz` and `/readyz` are left out: scrapes and probes
    would drown the traces that matter.
    """
    if provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls="/metrics,/healthz,/readyz",
        exclude_spans=["receive", "send"],
    )


def instrument_httpx(client: Any, provider: TracerProvider | None) -> None:
    """Propagate the current trace on an `httpx.AsyncClient`'s requests (no-op when off).

    The client span records the URL's origin only: a webhook URL's path or query
    often carries the receiver's token, and spans leave for a collector.
    """
    if provider is None:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(
        client, tracer_provider=provider, request_hook=_record_origin_only
    )


_URL_ATTRIBUTES = ("url.full", "http.url")


async def _record_origin_only(span: Any, request: Any) -> None:
    import httpx

    url = httpx.URL(str(request[1]))
    origin = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
    recorded = getattr(span, "attributes", None) or {}
    for key in _URL_ATTRIBUTES:
        if key in recorded:
            span.set_attribute(key, origin)


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span, or None (always None when tracing is off).

    On the job store's hot path: with tracing off it returns before touching
    OpenTelemetry's context, so an untraced worker pays one function call.
    """
    if _override is None and not _configured:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


_NO_TRACE: AbstractContextManager[None] = nullcontext()


def _remote_context(traceparent: str) -> Any:
    """An OpenTelemetry context whose current span is the one `traceparent` names (or None)."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None  # malformed: better no parent than a broken one
    return context


def continue_trace(traceparent: str | None) -> AbstractContextManager[None]:
    """Make the span `traceparent` names the current parent for the block.

    Spans opened in the block, and the trace headers the broker's telemetry
    middleware writes on a publish made in it, then belong to that trace. No
    span is opened here. A no-op when `traceparent` is None (tracing was off
    where it came from). Use it inside the task that does the work: asyncio
    copies the context when a task is created.
    """
    if not traceparent:
        return _NO_TRACE
    return _attached(traceparent)


@contextmanager
def _attached(traceparent: str) -> Iterator[None]:
    from opentelemetry import context as otel_context

    remote = _remote_context(traceparent)
    if remote is None:
        yield
        return
    token = otel_context.attach(remote)
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def span_in_trace(
    provider: TracerProvider | None,
    name: str,
    traceparent: str | None,
    *,
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[Any]:
    """Open span `name` in the trace `traceparent` names; yields it (None when tracing is off).

    Its parent is the current span when that one already belongs to the same
    trace (a consumer span continued from message headers), so the nesting is
    kept; otherwise the span `traceparent` names. Without a `traceparent` it is
    a child of the current span, or starts a trace.
    """
    if provider is None:
        yield None
        return
    from opentelemetry import trace

    parent = None
    if traceparent:
        remote = _remote_context(traceparent)
        current = trace.get_current_span().get_span_context()
        if remote is not None and not (
            current.is_valid
            and current.trace_id == trace.get_current_span(remote).get_span_context().trace_id
        ):
            parent = remote
    tracer = provider.get_tracer("offload")
    with tracer.start_as_current_span(name, context=parent, attributes=attributes) as span:
        yield span
