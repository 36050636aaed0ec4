"""One trace from the HTTP request, through the queue, into the worker and on to the
webhook (issue 11).

The gateway app, a worker built with the runtime and the notifier share a
TracerProvider whose spans go to an in-memory exporter: the gateway's FastAPI
server span, the publish to the `jobs` exchange (trace context written into
the message headers), the worker's processing of that message, and then,
across the Redis outbox (the trace context rides in the `JobEvent`), the
notifier's delivery of the webhook and its HTTP request must all carry one
trace id, linked parent to child; the receiver gets that trace in its
`traceparent` header.
"""

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aio_pika
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from offload_contracts import topology
from offload_notifier.adapters.tracing import SPAN_NAME as DELIVERY_SPAN
from offload_notifier.app import build_app as build_notifier
from offload_notifier.settings import NotifierSettings
from offload_runtime import telemetry
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.infra import Infra
from tests.support.notifier import Receiver, serve, sse
from tests.support.ops import StubAi, own_vhost
from tests.support.waiting import sync_probe, wait_until


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


def _notifier_settings(infra: Infra, gateway: RunningGateway) -> NotifierSettings:
    """A notifier on the gateway's Redis prefix and API keys (its queues in `infra`'s vhost)."""
    return NotifierSettings(
        rabbitmq_url=infra.rabbitmq_url,
        redis_url=infra.redis_url,
        redis_prefix=gateway.settings.redis_prefix,
        api_keys=",".join(f"{key}={tenant}" for tenant, key in gateway.api_keys.items()),
        retry_tiers="50ms,100ms",
        webhook_allow_private=True,
        webhook_timeout_s=2.0,
        relay_block_ms=100,
        log_level="warning",
    )


async def _finished(
    exporter: InMemorySpanExporter, found: Callable[[ReadableSpan], bool], what: str
) -> ReadableSpan:
    """The first finished span `found` accepts, waiting for it (spans end after the work)."""
    spans = await wait_until(
        sync_probe(exporter.get_finished_spans),
        lambda spans: any(found(s) for s in spans),
        timeout=5,
        what=what,
        interval=0.02,
    )
    return next(s for s in spans if found(s))


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
                await wait_until(
                    lambda: http.get(f"/v1/jobs/{job_id}"),
                    lambda answer: answer.json()["status"] == "completed",
                    timeout=10,
                    what=f"job {job_id} completed",
                    interval=0.02,
                    describe=lambda answer: answer.text,
                )
            # The worker's process span ends just after the job is recorded.
            await wait_until(
                sync_probe(exporter.get_finished_spans),
                lambda spans: any(
                    s.kind == SpanKind.CONSUMER and s.name.endswith("process") for s in spans
                ),
                timeout=5,
                what="the worker's process span",
                interval=0.02,
            )
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
            async with gateway.client("acme") as http:
                answer = await http.post(
                    "/v1/jobs", json={"type": "ai.generate", "input": {"prompt": "untraced"}}
                )
                assert answer.status_code == 202, answer.text
                job_id = answer.json()["id"]
                await wait_until(
                    lambda: _status(http, job_id, "completed"),
                    timeout=10,
                    what="the job to complete",
                    interval=0.02,
                )
            stored: Any = await gateway.deps.redis.xrange(gateway.keys.job_events(job_id))
            assert len(stored) == 4
            assert not [f for _, f in stored if "traceparent" in json.loads(f["data"])]
            assert telemetry.current_traceparent() is None
        finally:
            await worker.app.stop()


async def _status(http: httpx.AsyncClient, job_id: str, status: str) -> bool:
    return bool((await http.get(f"/v1/jobs/{job_id}")).json()["status"] == status)


async def test_the_trace_goes_on_through_the_outbox_to_the_webhook_request(
    exporter: InMemorySpanExporter, ops_infra: Infra
) -> None:
    stub = StubAi()
    hooks = Receiver()
    async with (
        running_gateway(ops_infra) as gateway,
        serve(hooks.app) as receiver_url,
        serve(build_notifier(_notifier_settings(ops_infra, gateway))) as notifier_url,
    ):
        worker = await stub.start(ops_infra, gateway.settings.redis_prefix)
        # A system of our own bound to `jobs.events`, as an analytics consumer would be.
        connection = await aio_pika.connect(ops_infra.rabbitmq_url)
        try:
            channel = await connection.channel()
            events_queue = await channel.declare_queue(exclusive=True)
            await events_queue.bind(topology.EVENTS_EXCHANGE, routing_key="ai.generate.completed")
            async with gateway.client("acme") as http:
                answer = await http.post(
                    "/v1/jobs",
                    json={
                        "type": "ai.generate",
                        "input": {"prompt": "trace me to the webhook"},
                        # A token in the query, as many receivers use: no span may keep it.
                        "webhook": {"url": f"{receiver_url}/traced?token=hunter2"},
                    },
                )
                assert answer.status_code == 202, answer.text
                job_id = answer.json()["id"]
            [request] = await hooks.wait_for("traced", 1)
            delivery = await _finished(
                exporter, lambda s: s.name == DELIVERY_SPAN, "the webhook delivery span"
            )
            taken: list[aio_pika.abc.AbstractIncomingMessage] = []

            async def event_published() -> bool:
                if (message := await events_queue.get(no_ack=True, fail=False)) is not None:
                    taken.append(message)
                return bool(taken)

            await wait_until(
                event_published,
                timeout=5,
                what="the completed event on jobs.events",
                interval=0.02,
            )
            [published] = taken
            # What users see: the job's SSE stream, from its history to its terminal event.
            headers = {"Authorization": f"Bearer {gateway.api_keys['acme']}"}
            async with (
                httpx.AsyncClient(base_url=notifier_url, headers=headers, timeout=10) as client,
                sse(client, f"/v1/jobs/{job_id}/events") as stream,
            ):
                seen = await stream.rest()
            stored: Any = await gateway.deps.redis.xrange(gateway.keys.job_events(job_id))
        finally:
            await connection.close()
            await worker.app.stop()

    spans = exporter.get_finished_spans()
    index = _by_id(spans)
    server = next(s for s in spans if s.kind == SpanKind.SERVER and s.name == "POST /v1/jobs")
    process = next(
        s for s in spans if s.kind == SpanKind.CONSUMER and s.name == "jobs.ai.generate process"
    )
    assert server.context is not None and delivery.context is not None
    trace_id = server.context.trace_id
    # The delivery descends from the worker's processing, hence from the HTTP request,
    # through the relay's publish and the notifier's consumer span.
    lineage = _ancestors(delivery, index)
    assert process in lineage and server in lineage
    deliveries_queue = topology.work_queue("notifier")
    assert any(s.kind == SpanKind.CONSUMER and deliveries_queue in s.name for s in lineage)
    assert delivery.attributes is not None
    assert delivery.attributes["offload.job_id"] == job_id
    assert delivery.attributes["offload.webhook.outcome"] == "delivered"
    # The webhook POST is a client span of the delivery, and the receiver got its context.
    post = next(s for s in spans if s.kind == SpanKind.CLIENT and s.parent == delivery.context)
    assert post.context is not None and post.context.trace_id == trace_id
    version, header_trace, header_span, _flags = request.headers["traceparent"].split("-")
    assert (version, int(header_trace, 16), int(header_span, 16)) == (
        "00",
        trace_id,
        post.context.span_id,
    )

    # Spans leave for a collector: the webhook URL is recorded by its origin only.
    assert post.attributes is not None
    recorded_urls = [v for k, v in post.attributes.items() if k in ("url.full", "http.url")]
    assert recorded_urls == [receiver_url]
    assert not [s for s in spans if "hunter2" in str(dict(s.attributes or {}))]

    # The trace context is internal: it rides in the stored events, but neither the
    # webhook body, nor SSE, nor the `jobs.events` body shows it.
    assert all("traceparent" in json.loads(fields["data"]) for _, fields in stored)
    assert "traceparent" not in request.json["data"]
    assert [event.event for event in seen] == ["queued", "started", "progress", "completed"]
    assert not [event for event in seen if "traceparent" in event.json]
    assert "traceparent" not in json.loads(published.body)
    assert published.headers["traceparent"] == json.loads(stored[-1][1]["data"])["traceparent"]
