"""How the admin API reads a dead letter: job requests, webhook deliveries, anything else."""

import json
from datetime import UTC, datetime

import pytest

from offload_contracts import EventKind, JobEvent, topology
from offload_contracts.webhooks import WebhookDelivery
from offload_gateway.admin.queues import DeadLetter


def delivery(
    url: str = "https://hooks.example.com/in/tok3n?sig=s3cret", **overrides: object
) -> bytes:
    event = JobEvent(
        event_id="ev1",
        job_id="job1",
        tenant="acme",
        type="image.process",
        event=EventKind.COMPLETED,
        at=datetime(2025, 1, 2, tzinfo=UTC),
        attempt=1,
    )
    values = {"webhook_id": "ev1", "url": url, "event": event, "attempt": 3, **overrides}
    return WebhookDelivery.model_validate(values).model_dump_json(exclude_none=True).encode()


def parked(error: str) -> dict[str, object]:
    return {
        topology.HEADER_ERROR: error,
        topology.HEADER_ERROR_TYPE: "webhook_failed",
        topology.HEADER_ATTEMPT: 3,
        topology.HEADER_FAILED_AT: "2025-01-02T00:00:01+00:00",
        topology.HEADER_SOURCE_QUEUE: "notifier.jobs",
    }


def test_a_webhook_delivery_names_its_job_event_and_receiver_but_no_secret() -> None:
    letter = DeadLetter.parse(0, delivery(), parked("HTTP 503 (attempts exhausted: 3 of 3)"))

    assert (letter.job_id, letter.tenant, letter.type) == ("job1", "acme", "image.process")
    assert letter.attempts == 3 and letter.reason == "failed"
    assert letter.webhook is not None
    assert letter.webhook.webhook_id == "ev1" and letter.webhook.event == "completed"
    assert letter.webhook.url_origin == "https://hooks.example.com"
    assert letter.webhook.last_status == 503
    assert "s3cret" not in repr(letter) and "tok3n" not in repr(letter)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://user:pass@127.0.0.1:8080/x", "http://127.0.0.1:8080"),
        ("https://[::1]:9000/hook", "https://[::1]:9000"),
        ("not a url", None),
        ("http://host:99999/", None),
    ],
)
def test_only_the_urls_origin_is_kept(url: str, origin: str | None) -> None:
    body = json.loads(delivery())
    body["url"] = url
    letter = DeadLetter.parse(0, json.dumps(body).encode(), parked("timed out"))
    assert letter.webhook is not None
    assert letter.webhook.url_origin == origin
    assert letter.webhook.last_status is None  # no HTTP answer


def test_a_job_request_has_no_webhook_part() -> None:
    body = json.dumps({"id": "job2", "type": "ai.generate", "tenant": "globex", "attempt": 2})
    letter = DeadLetter.parse(0, body.encode(), {topology.HEADER_ERROR: "HTTP 400 from the LLM"})
    assert (letter.job_id, letter.tenant, letter.type) == ("job2", "globex", "ai.generate")
    assert letter.webhook is None and letter.attempts == 2


def test_a_body_that_is_neither_names_nothing() -> None:
    for body in (b"not json", b'{"not": "a delivery"}', b'{"webhook_id": "x", "event": 3}'):
        letter = DeadLetter.parse(0, body, {})
        assert letter.job_id is None and letter.webhook is None


def test_the_http_status_header_gives_a_parked_deliverys_last_status() -> None:
    headers = {**parked("HTTP 503 (attempts exhausted: 3 of 3)"), "x-offload-http-status": "502"}
    letter = DeadLetter.parse(0, delivery(), headers)
    assert letter.webhook is not None and letter.webhook.last_status == 502

    # With the header, a status is never read from the error text.
    headers = {**parked("HTTP 410 gone, said the proxy"), topology.HEADER_HTTP_STATUS: "404"}
    letter = DeadLetter.parse(0, delivery(), headers)
    assert letter.webhook is not None and letter.webhook.last_status == 404
