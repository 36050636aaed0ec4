"""One trace from the HTTP request, through the queue, into the worker (issue 11).

The gateway app and a worker built with the runtime share a TracerProvider
whose spans go to an in-memory exporter: the gateway's FastAPI server span,
the publish to the `jobs` exchange (trace context written into the message
headers) and the worker's processing of that message must all carry one
trace id, linked parent to child.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from offload_runtime import telemetry
from tests.support.gateway import running_gateway
from tests.support.infra import Infra
from tests.support.ops import StubAi, own_vhost


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry.use_tracer_provider(provider)
    try:
        yield spans
    finally:
        telemetry.use_tracer_provider(None)
        provider.shutdown()


@pytest.fixture
async def ops_infra(infra: Infra) -> AsyncIterator[Infra]:
    async with own_vhost(infra) as own:
        yield own


def _by_id(spans: tuple[ReadableSpan, ...]) -> dict[int, ReadableSpan]:
    return {span.context.span_id: span for span in spans if span.context is not None}


def _ancestors(span: ReadableSpan, index: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    chain = []
    while span.parent is not None and span.parent.span_id in index:
        span = index[span.parent.span_id]
        chain.append(span)
    return chain


async def test_one_trace_spans_the_gateway_request_the_queue_and_the_worker(
    exporter: InMemorySpanExporter, ops_infra: Infra
) -> None:
    stub = StubAi()
    async with running_gateway(ops_infra) as gateway:
        worker = await stub.start(ops_infra, gateway.settings.redis_prefix)
        try:
            async with gateway.client("acme") as http:
                answer = await http.post(
                    "/v1/jobs", json={"type": "ai.generate", "input": {"prompt": "trace me"}}
                )
                assert answer.status_code == 202, answer.text
                job_id = answer.json()["id"]
                deadline = time.monotonic() + 10
                while (await http.get(f"/v1/jobs/{job_id}")).json()["status"] != "completed":
                    assert time.monotonic() < deadline, "the job never completed"
                    await asyncio.sleep(0.02)
            # The worker's process span ends just after the job is recorded.
            deadline = time.monotonic() + 5
            while not any(
                s.kind == SpanKind.CONSUMER and s.name.endswith("process")
                for s in exporter.get_finished_spans()
            ):
                assert time.monotonic() < deadline, "the worker recorded no span"
                await asyncio.sleep(0.02)
        finally:
            await worker.app.stop()

    spans = exporter.get_finished_spans()
    index = _by_id(spans)
    server = next(s for s in spans if s.kind == SpanKind.SERVER and s.name == "POST /v1/jobs")
    publish = next(
        s for s in spans if s.kind == SpanKind.PRODUCER and s.name == "jobs.ai.generate publish"
    )
    process = next(
        s for s in spans if s.kind == SpanKind.CONSUMER and s.name == "jobs.ai.generate process"
    )
    assert server.context is not None and publish.context is not None
    assert process.context is not None
    trace_id = server.context.trace_id
    assert publish.context.trace_id == trace_id
    assert process.context.trace_id == trace_id
    # The worker's span descends from the publish, which descends from the request.
    assert server in _ancestors(publish, index)
    assert server in _ancestors(process, index)
    assert process.attributes is not None
    assert process.attributes["messaging.message.id"] == job_id
    # Scrapes and probes stay out of traces.
    assert not [s for s in spans if s.name.startswith(("GET /readyz", "GET /metrics"))]


async def test_tracing_is_off_by_default_and_adds_no_middleware(ops_infra: Infra) -> None:
    stub = StubAi()
    async with running_gateway(ops_infra) as gateway:
        worker = await stub.start(ops_infra, gateway.settings.redis_prefix)
        try:
            assert telemetry.tracer_provider_for(gateway.settings, "gateway") is None
            names = [type(m).__name__ for m in worker.broker.config.broker_middlewares]
            assert "RabbitTelemetryMiddleware" not in names
            gateway_broker = gateway.deps.broker.broker
            assert not [
                m
                for m in gateway_broker.config.broker_middlewares
                if type(m).__name__ == "RabbitTelemetryMiddleware"
            ]
            async with httpx.AsyncClient(base_url=gateway.base_url) as http:
                assert (await http.get("/healthz")).status_code == 200
        finally:
            await worker.app.stop()
