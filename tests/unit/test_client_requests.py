"""The client shapes requests as DESIGN §2 says and turns answers into models and errors.

The network is an `httpx.MockTransport` playing the gateway and the notifier;
what the real services answer is covered by tests/e2e/test_client_*.py.
"""

import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from offload import (
    AsyncOffload,
    ChecksumMismatch,
    Conflict,
    ConnectionFailed,
    FileInfo,
    JobStatus,
    NotFound,
    Offload,
    OffloadError,
    RateLimited,
    ServerError,
    Unavailable,
    ValidationFailed,
    WaitTimeout,
)
from offload_contracts import AiGenerateInput

GATEWAY = "http://gateway.test"
NOTIFIER = "http://notifier.test"
Handler = Callable[[httpx.Request], httpx.Response]


def job_json(job_id: str = "j1", status: str = "waiting", **fields: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "type": "ai.generate",
        "status": status,
        "attempt": 0,
        "max_attempts": 3,
        "progress": None,
        "result": None,
        "error": None,
        "created_at": "2026-11-29T10:00:00Z",
        "started_at": None,
        "finished_at": None,
        "next_attempt_at": None,
        "links": {"self": f"/v1/jobs/{job_id}", "events": f"{NOTIFIER}/v1/jobs/{job_id}/events"},
        **fields,
    }


def event_json(kind: str, job_id: str = "j1", attempt: int = 1, **fields: Any) -> str:
    return json.dumps(
        {
            "event_id": f"e-{kind}-{fields.get('progress', {}).get('percent', '')}",
            "job_id": job_id,
            "tenant": "dev",
            "type": "ai.generate",
            "event": kind,
            "at": datetime(2026, 11, 29, 10, 0, 1, tzinfo=UTC).isoformat(),
            "attempt": attempt,
            **fields,
        }
    )


def sse(*events: tuple[str, str]) -> bytes:
    """An SSE body: `(id, data)` pairs, with a comment ping first as the notifier sends."""
    lines = [": ping\n\n"]
    lines += [f"id: {event_id}\nevent: job\ndata: {data}\n\n" for event_id, data in events]
    return "".join(lines).encode()


def problem(status: int, detail: str, **extra: Any) -> httpx.Response:
    body = {"type": "about:blank", "title": "Problem", "status": status, "detail": detail, **extra}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


class Recorder:
    """A MockTransport handler that records requests and answers from a route table."""

    def __init__(self, routes: dict[tuple[str, str], Handler | list[httpx.Response]]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, f"{request.url.scheme}://{request.url.host}{request.url.path}")
        route = self.routes.get(key)
        if route is None:
            return problem(404, f"no route {key}")
        if isinstance(route, list):
            return route.pop(0) if len(route) > 1 else route[0]
        return route(request)

    def to(self, method: str, url: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and str(r.url).startswith(url)]


@pytest.fixture
def make_client() -> Iterator[Callable[..., Offload]]:
    made: list[Offload] = []

    def make(recorder: Recorder, **overrides: Any) -> Offload:
        options: dict[str, Any] = {"api_key": "k-dev", "transport": httpx.MockTransport(recorder)}
        options.update(overrides)
        client = Offload(GATEWAY, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


# --------------------------------------------------------------------------- submit


def test_submit_posts_type_input_webhook_and_idempotency_key(make_client: Any) -> None:
    recorder = Recorder({("POST", f"{GATEWAY}/v1/jobs"): [httpx.Response(202, json=job_json())]})
    job = make_client(recorder).submit(
        "ai.generate",
        {"prompt": "Write a haiku"},
        webhook="https://example.com/hook",
        idempotency_key="order-42",
    )
    (request,) = recorder.requests
    assert request.headers["authorization"] == "Bearer k-dev"
    assert request.headers["idempotency-key"] == "order-42"
    assert json.loads(request.content) == {
        "type": "ai.generate",
        "input": {"prompt": "Write a haiku"},
        "webhook": {"url": "https://example.com/hook"},
    }
    assert job.id == "j1"
    assert job.status is JobStatus.WAITING
    assert job.max_attempts == 3


def test_submit_sends_only_the_fields_set_on_a_contract_model(make_client: Any) -> None:
    recorder = Recorder({("POST", f"{GATEWAY}/v1/jobs"): [httpx.Response(202, json=job_json())]})
    make_client(recorder).submit(
        "ai.generate",
        AiGenerateInput(prompt="hi", max_tokens=20),
        webhook={"url": "https://example.com/h", "events": ["completed", "failed"]},
    )
    body = json.loads(recorder.requests[0].content)
    assert body["input"] == {"prompt": "hi", "max_tokens": 20}
    assert body["webhook"] == {"url": "https://example.com/h", "events": ["completed", "failed"]}
    assert "idempotency-key" not in recorder.requests[0].headers


def test_a_422_raises_validation_failed_with_the_field_errors(make_client: Any) -> None:
    errors = [{"loc": ["body", "input", "prompt"], "msg": "Field required", "type": "missing"}]
    recorder = Recorder(
        {("POST", f"{GATEWAY}/v1/jobs"): [problem(422, "input is invalid", errors=errors)]}
    )
    with pytest.raises(ValidationFailed) as caught:
        make_client(recorder).submit("ai.generate", {})
    assert caught.value.status == 422
    assert caught.value.detail == "input is invalid"
    assert caught.value.errors == errors
    assert "input is invalid" in str(caught.value)


@pytest.mark.parametrize(
    ("answer", "error", "retry_after"),
    [
        (problem(429, "slow down"), RateLimited, 3.0),
        (problem(503, "broker unreachable"), Unavailable, 3.0),
        (problem(409, "finished"), Conflict, None),
        (problem(404, "no such job"), NotFound, None),
    ],
)
def test_error_statuses_raise_their_typed_exception_with_retry_after(
    make_client: Any, answer: httpx.Response, error: type[Exception], retry_after: float | None
) -> None:
    if retry_after is not None:
        answer.headers["retry-after"] = "3"
    recorder = Recorder({("POST", f"{GATEWAY}/v1/jobs"): [answer]})
    with pytest.raises(error) as caught:
        make_client(recorder).submit("ai.generate", {"prompt": "x"})
    assert getattr(caught.value, "retry_after", None) == retry_after
    assert caught.value.problem.detail == answer.json()["detail"]  # type: ignore[attr-defined]


def test_a_non_json_5xx_still_becomes_a_problem_with_the_body_as_detail(
    make_client: Any,
) -> None:
    recorder = Recorder(
        {("GET", f"{GATEWAY}/v1/jobs/j1"): [httpx.Response(502, text="upstream went away")]}
    )
    with pytest.raises(ServerError) as caught:
        make_client(recorder).get("j1")
    assert caught.value.status == 502
    assert caught.value.detail == "upstream went away"


def test_an_unreachable_gateway_raises_connection_failed(make_client: Any) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = make_client(Recorder({}), transport=httpx.MockTransport(refuse))
    with pytest.raises(ConnectionFailed, match="connection refused"):
        client.get("j1")


def test_without_an_api_key_nothing_is_sent_and_the_error_says_what_to_set() -> None:
    recorder = Recorder({})
    with (
        Offload(GATEWAY, api_key="", transport=httpx.MockTransport(recorder)) as client,
        pytest.raises(OffloadError, match="OFFLOAD_API_KEY"),
    ):
        client._api_key = None  # as with no OFFLOAD_API_KEY in the environment
        client.get("j1")
    assert recorder.requests == []


# --------------------------------------------------------------------------- list, cancel


def test_list_sends_only_given_filters_and_iter_jobs_follows_cursors(make_client: Any) -> None:
    pages = [
        httpx.Response(200, json={"items": [job_json("a"), job_json("b")], "next_cursor": "c2"}),
        httpx.Response(200, json={"items": [job_json("c")], "next_cursor": None}),
    ]
    recorder = Recorder({("GET", f"{GATEWAY}/v1/jobs"): pages})
    client = make_client(recorder)
    ids = [job.id for job in client.iter_jobs(status="waiting", page_size=2)]
    assert ids == ["a", "b", "c"]
    first, second = (dict(r.url.params) for r in recorder.requests)
    assert first == {"status": "waiting", "limit": "2"}
    assert second == {"status": "waiting", "limit": "2", "cursor": "c2"}


def test_cancel_deletes_and_a_finished_job_is_a_conflict(make_client: Any) -> None:
    recorder = Recorder(
        {
            ("DELETE", f"{GATEWAY}/v1/jobs/j1"): [
                httpx.Response(200, json=job_json(status="cancelled")),
                problem(409, "job j1 is already completed"),
            ]
        }
    )
    client = make_client(recorder)
    assert client.cancel("j1").status is JobStatus.CANCELLED
    with pytest.raises(Conflict, match="already completed"):
        client.cancel("j1")


# --------------------------------------------------------------------------- watch / wait


def completed_job() -> dict[str, Any]:
    return job_json(
        status="completed",
        attempt=1,
        progress={"percent": 100, "message": "done"},
        result={"text": "a haiku", "model": "sandbox", "usage": {}},
        finished_at="2026-11-29T10:00:02Z",
    )


def test_wait_follows_the_sse_stream_and_returns_the_finished_job(make_client: Any) -> None:
    stream = sse(
        ("1-0", event_json("queued", attempt=0)),
        ("2-0", event_json("started")),
        ("3-0", event_json("progress", progress={"percent": 40.0, "message": "tokens"})),
        ("4-0", event_json("completed", result={"text": "a haiku"})),
    )
    recorder = Recorder(
        {
            ("GET", f"{GATEWAY}/v1/jobs/j1"): [
                httpx.Response(200, json=job_json()),
                httpx.Response(200, json=completed_job()),
            ],
            ("GET", f"{NOTIFIER}/v1/jobs/j1/events"): [
                httpx.Response(200, content=stream, headers={"content-type": "text/event-stream"})
            ],
        }
    )
    seen: list[tuple[str, float]] = []
    job = make_client(recorder).wait("j1", on_update=lambda j: seen.append((j.status, j.percent)))
    assert seen == [
        ("waiting", 0.0),
        ("active", 0.0),
        ("active", 40.0),
        ("completed", 100.0),
        ("completed", 100.0),
    ]
    assert job.result == {"text": "a haiku", "model": "sandbox", "usage": {}}
    (events_request,) = recorder.to("GET", NOTIFIER)
    assert events_request.headers["authorization"] == "Bearer k-dev"
    assert events_request.headers["accept"] == "text/event-stream"


@pytest.mark.parametrize(
    ("events_link", "notifier_url", "streamed_from"),
    [
        # What the gateway gives: the notifier's absolute URL, followed as it is.
        (
            "https://events.example.com/offload/v1/jobs/j1/events",
            None,
            "https://events.example.com/offload/v1/jobs/j1/events",
        ),
        # A relative link resolves against the gateway it came from (RFC 3986).
        ("/v1/jobs/j1/events", None, f"{GATEWAY}/v1/jobs/j1/events"),
        # OFFLOAD_NOTIFIER_URL: this client reaches the notifier under another name.
        (
            "https://events.example.com/v1/jobs/j1/events",
            "http://inside.test:8001",
            "http://inside.test:8001/v1/jobs/j1/events",
        ),
    ],
)
def test_the_stream_is_read_where_the_jobs_events_link_points(
    make_client: Any, events_link: str, notifier_url: str | None, streamed_from: str
) -> None:
    links = {"self": "/v1/jobs/j1", "events": events_link}
    stream = sse(("1-0", event_json("completed", result={"text": "x"})))
    streamed: list[str] = []

    def notifier(request: httpx.Request) -> httpx.Response:
        streamed.append(str(request.url))
        return httpx.Response(200, content=stream, headers={"content-type": "text/event-stream"})

    host = httpx.URL(streamed_from)
    recorder = Recorder(
        {
            ("GET", f"{GATEWAY}/v1/jobs/j1"): [
                httpx.Response(200, json=job_json(links=links)),
                httpx.Response(200, json=completed_job()),
            ],
            ("GET", f"{host.scheme}://{host.host}{host.path}"): notifier,
        }
    )
    # Polling once an hour: only the stream can end this wait in time.
    job = make_client(recorder, notifier_url=notifier_url).wait(
        "j1", timeout_s=5, poll_interval_s=3600
    )
    assert job.status is JobStatus.COMPLETED
    assert streamed == [streamed_from]


def test_the_streams_history_does_not_take_the_job_back_in_time(make_client: Any) -> None:
    # The job is already 40% through when watching starts; the stream replays from `queued`.
    stream = sse(
        ("1-0", event_json("queued", attempt=0)),
        ("2-0", event_json("started")),
        ("3-0", event_json("progress", progress={"percent": 20.0, "message": "a"})),
        ("4-0", event_json("progress", progress={"percent": 40.0, "message": "b"})),
        ("5-0", event_json("progress", progress={"percent": 60.0, "message": "c"})),
        ("6-0", event_json("completed", result={"text": "x"})),
    )
    snapshot = job_json(status="active", attempt=1, progress={"percent": 40.0, "message": "b"})
    recorder = Recorder(
        {
            ("GET", f"{GATEWAY}/v1/jobs/j1"): [
                httpx.Response(200, json=snapshot),
                httpx.Response(200, json=completed_job()),
            ],
            ("GET", f"{NOTIFIER}/v1/jobs/j1/events"): [
                httpx.Response(200, content=stream, headers={"content-type": "text/event-stream"})
            ],
        }
    )
    seen: list[tuple[str, float]] = []
    make_client(recorder).wait("j1", on_update=lambda j: seen.append((j.status, j.percent)))
    assert seen[0] == ("active", 40.0)
    assert ("waiting", 0.0) not in seen and ("active", 20.0) not in seen
    assert ("active", 60.0) in seen and seen[-1] == ("completed", 100.0)


def test_a_dropped_stream_resumes_after_the_last_event_id(make_client: Any) -> None:
    first = sse(("1-0", event_json("started")))
    second = sse(("2-0", event_json("completed", result={"text": "x"})))
    recorder = Recorder(
        {
            ("GET", f"{GATEWAY}/v1/jobs/j1"): [
                httpx.Response(200, json=job_json()),
                httpx.Response(200, json=completed_job()),
            ],
            ("GET", f"{NOTIFIER}/v1/jobs/j1/events"): [
                httpx.Response(200, content=first, headers={"content-type": "text/event-stream"}),
                httpx.Response(200, content=second, headers={"content-type": "text/event-stream"}),
            ],
        }
    )
    job = make_client(recorder).wait("j1", timeout_s=10)
    assert job.status is JobStatus.COMPLETED
    first_request, second_request = recorder.to("GET", NOTIFIER)
    assert "last-event-id" not in first_request.headers
    assert second_request.headers["last-event-id"] == "1-0"


def test_without_a_notifier_wait_polls_the_gateway(make_client: Any) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    recorder = Recorder(
        {
            ("GET", f"{GATEWAY}/v1/jobs/j1"): [
                httpx.Response(200, json=job_json()),
                httpx.Response(200, json=job_json(status="active", attempt=1)),
                httpx.Response(200, json=completed_job()),
            ],
            ("GET", f"{NOTIFIER}/v1/jobs/j1/events"): refuse,
        }
    )
    statuses: list[str] = []
    job = make_client(recorder).wait(
        "j1", poll_interval_s=0.01, on_update=lambda j: statuses.append(j.status)
    )
    assert job.status is JobStatus.COMPLETED
    assert statuses == ["waiting", "active", "completed"]
    assert len(recorder.to("GET", NOTIFIER)) == 3  # tried the stream, then gave up on it


def test_a_notifier_404_falls_back_to_polling_at_once(make_client: Any) -> None:
    recorder = Recorder(
        {
            ("GET", f"{GATEWAY}/v1/jobs/j1"): [
                httpx.Response(200, json=job_json()),
                httpx.Response(200, json=completed_job()),
            ],
        }
    )
    job = make_client(recorder).wait("j1", poll_interval_s=0.01)
    assert job.status is JobStatus.COMPLETED
    assert len(recorder.to("GET", NOTIFIER)) == 1


def test_wait_times_out_with_the_last_state_seen(make_client: Any) -> None:
    recorder = Recorder(
        {("GET", f"{GATEWAY}/v1/jobs/j1"): [httpx.Response(200, json=job_json(status="active"))]}
    )
    with pytest.raises(WaitTimeout) as caught:
        make_client(recorder, notifier_url="").wait("j1", timeout_s=0.2, poll_interval_s=0.02)
    assert caught.value.job.status is JobStatus.ACTIVE
    assert "still active" in str(caught.value)


def test_watch_of_a_finished_job_yields_it_once_and_opens_no_stream(make_client: Any) -> None:
    recorder = Recorder(
        {("GET", f"{GATEWAY}/v1/jobs/j1"): [httpx.Response(200, json=completed_job())]}
    )
    jobs = list(make_client(recorder).watch("j1"))
    assert [job.status for job in jobs] == ["completed"]
    assert recorder.to("GET", NOTIFIER) == []


# --------------------------------------------------------------------------- files


def test_upload_streams_a_file_as_multipart(make_client: Any, tmp_path: Path) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(b"\x89PNG fake")
    stored = {
        "id": "f1",
        "url": "/v1/files/f1",
        "bytes": 9,
        "sha256": hashlib.sha256(b"\x89PNG fake").hexdigest(),
        "content_type": "image/png",
    }
    recorder = Recorder({("POST", f"{GATEWAY}/v1/files"): [httpx.Response(201, json=stored)]})
    info = make_client(recorder).upload(path)
    assert info == FileInfo.model_validate(stored)
    (request,) = recorder.requests
    body = request.read()
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="file"; filename="cat.png"' in body
    assert b"Content-Type: image/png" in body
    assert b"\x89PNG fake" in body


def test_download_checks_the_sha256_and_keeps_nothing_on_mismatch(
    make_client: Any, tmp_path: Path
) -> None:
    content = b"video bytes" * 1000
    recorder = Recorder({("GET", f"{GATEWAY}/v1/files/f1"): [httpx.Response(200, content=content)]})
    client = make_client(recorder)
    good = FileInfo(id="f1", sha256=hashlib.sha256(content).hexdigest(), content_type="video/mp4")
    path = client.download(good, tmp_path)
    assert path == tmp_path / "f1.mp4"
    assert path.read_bytes() == content

    into_new_dir = client.download(good, f"{tmp_path}/new/")  # a trailing slash: a directory
    assert into_new_dir == tmp_path / "new" / "f1.mp4"
    into_new_dir.unlink()
    (tmp_path / "new").rmdir()

    bad = good.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(ChecksumMismatch):
        client.download(bad, tmp_path / "other.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f1.mp4"]


def test_download_of_an_unknown_file_raises_not_found_and_writes_nothing(
    make_client: Any, tmp_path: Path
) -> None:
    recorder = Recorder({})
    with pytest.raises(NotFound):
        make_client(recorder).download("nope", tmp_path / "x.bin")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- admin


def test_dead_letters_use_the_admin_key_and_the_dead_queue_name(make_client: Any) -> None:
    page = {
        "queue": "video.dead",
        "total": 1,
        "offset": 0,
        "limit": 50,
        "next_offset": None,
        "scanned": 1,
        "items": [
            {
                "position": 0,
                "job_id": "j9",
                "type": "video.generate",
                "reason": "failed",
                "error": "provider said no",
                "attempts": 5,
                "browsed": 1,
                "size": 300,
                "valid_json": True,
            }
        ],
    }
    report = {
        "queue": "video.dead",
        "replayed": ["j9"],
        "skipped": [],
        "not_found": [],
        "scanned": 1,
        "remaining": 0,
        "audit_id": "1-0",
    }
    recorder = Recorder(
        {
            ("GET", f"{GATEWAY}/v1/admin/dead-letters/video.dead"): [
                httpx.Response(200, json=page)
            ],
            ("POST", f"{GATEWAY}/v1/admin/dead-letters/video.dead/replay"): [
                httpx.Response(200, json=report)
            ],
        }
    )
    client = make_client(recorder, admin_key="k-admin")
    listed = client.dead_letters("video", limit=20)
    (letter,) = listed.items
    assert (letter.job_id, letter.attempts, letter.error) == ("j9", 5, "provider said no")
    assert client.replay_dead_letters("video.dead", job_ids=["j9"]).replayed == ["j9"]
    client.replay_dead_letters("video")
    browse, by_id, everything = recorder.requests
    assert browse.headers["authorization"] == "Bearer k-admin"
    assert dict(browse.url.params) == {"offset": "0", "limit": "20"}
    assert json.loads(by_id.content) == {"job_ids": ["j9"]}
    assert json.loads(everything.content) == {"all": True}


# --------------------------------------------------------------------------- async


async def test_the_async_client_submits_watches_and_downloads_alike(tmp_path: Path) -> None:
    stream = sse(
        ("1-0", event_json("started")),
        ("2-0", event_json("progress", progress={"percent": 50.0, "message": "half"})),
        ("3-0", event_json("completed", result={"text": "x"})),
    )
    recorder = Recorder(
        {
            ("POST", f"{GATEWAY}/v1/jobs"): [httpx.Response(202, json=job_json())],
            ("GET", f"{GATEWAY}/v1/jobs/j1"): [
                httpx.Response(200, json=job_json()),
                httpx.Response(200, json=completed_job()),
            ],
            ("GET", f"{NOTIFIER}/v1/jobs/j1/events"): [
                httpx.Response(200, content=stream, headers={"content-type": "text/event-stream"})
            ],
            ("GET", f"{GATEWAY}/v1/files/f1"): [httpx.Response(200, content=b"abc")],
        }
    )
    percents: list[float] = []

    async def on_update(job: Any) -> None:
        percents.append(job.percent)

    async with AsyncOffload(
        GATEWAY, api_key="k-dev", transport=httpx.MockTransport(recorder)
    ) as client:
        job = await client.submit("ai.generate", {"prompt": "x"}, idempotency_key="k1")
        done = await client.wait(job.id, on_update=on_update)
        path = await client.download("f1", tmp_path / "out.bin")
    assert done.status is JobStatus.COMPLETED
    assert percents == [0.0, 0.0, 50.0, 100.0, 100.0]
    assert path.read_bytes() == b"abc"
    assert recorder.requests[0].headers["idempotency-key"] == "k1"
