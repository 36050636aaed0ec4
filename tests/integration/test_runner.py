"""The job runner against the real RabbitMQ and Redis (DESIGN §5)."""

import asyncio
import itertools
import json

from prometheus_client import REGISTRY

from offload_contracts import EventKind, JobStatus, topology
from tests.support.harness import Harness
from tests.support.testjob import Recorder

TERMINAL = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}


async def test_a_job_completes_with_its_result(harness: Harness) -> None:
    recorder = Recorder()
    await harness.start_worker(recorder.handler())
    job = await harness.submit()

    record = await harness.wait_status(job.id, TERMINAL)

    assert record.status == JobStatus.COMPLETED
    assert record.attempt == 1
    assert record.result == {"attempt": 1, "run": 1}
    assert record.started_at is not None and record.finished_at is not None
    assert [e.event for e in await harness.events(job.id)] == [
        EventKind.QUEUED,
        EventKind.STARTED,
        EventKind.COMPLETED,
    ]


async def test_a_worker_never_runs_more_jobs_at_once_than_its_concurrency(
    harness: Harness,
) -> None:
    recorder = Recorder()
    await harness.start_worker(recorder.handler(), concurrency=4)
    jobs = [await harness.submit(sleep_s=0.1) for _ in range(20)]

    for job in jobs:
        await harness.wait_status(job.id, TERMINAL)

    # Prefetch = concurrency: the broker hands the worker at most 4 unacked jobs.
    assert recorder.most_in_flight == 4


async def test_transient_failures_retry_through_the_tiers_then_complete(harness: Harness) -> None:
    recorder = Recorder()
    await harness.start_worker(recorder.handler(max_attempts=3))
    job = await harness.submit(transient_failures=2)

    record = await harness.wait_status(job.id, TERMINAL)

    assert record.status == JobStatus.COMPLETED
    assert record.attempt == 3
    runs = recorder.runs[job.id]
    assert [attempt for attempt, _ in runs] == [1, 2, 3]
    tiers = harness.settings.tiers
    # Each retry waited at least its tier's delay: 50 ms after attempt 1, 100 ms after 2.
    assert runs[1][1] - runs[0][1] >= tiers[0].delay_s
    assert runs[2][1] - runs[1][1] >= tiers[1].delay_s


async def test_every_transition_appends_one_event_in_order_to_job_stream_and_outbox(
    harness: Harness,
) -> None:
    recorder = Recorder()
    await harness.start_worker(recorder.handler(max_attempts=3))
    job = await harness.submit(transient_failures=2)
    await harness.wait_status(job.id, TERMINAL)

    expected = [
        (EventKind.QUEUED, 0),
        (EventKind.STARTED, 1),
        (EventKind.RETRYING, 1),
        (EventKind.STARTED, 2),
        (EventKind.RETRYING, 2),
        (EventKind.STARTED, 3),
        (EventKind.COMPLETED, 3),
    ]
    job_events = await harness.events(job.id)
    outbox = await harness.outbox_events(job.id)
    assert [(e.event, e.attempt) for e in job_events] == expected
    assert [e.event_id for e in outbox] == [e.event_id for e in job_events]
    retrying = job_events[2]
    assert retrying.error is not None and retrying.error.type == "transient"
    assert retrying.next_attempt_at is not None
    assert job_events[-1].result == {"attempt": 3, "run": 3}


async def test_permanent_error_fails_at_once_and_parks_the_message_with_the_error(
    harness: Harness,
) -> None:
    recorder = Recorder()
    await harness.start_worker(recorder.handler(max_attempts=3))
    job = await harness.submit(permanent=True)

    record = await harness.wait_status(job.id, TERMINAL)

    assert record.status == JobStatus.FAILED
    assert record.attempt == 1
    assert record.error is not None
    assert record.error.type == "permanent" and not record.error.retryable
    assert record.error.message == "the input can never work"
    [dead] = await harness.take_dead(1)
    assert json.loads(dead.body)["id"] == job.id
    assert dead.headers[topology.HEADER_ERROR] == "the input can never work"
    assert dead.headers[topology.HEADER_ERROR_TYPE] == "permanent"
    assert dead.headers[topology.HEADER_ATTEMPT] == 1


async def test_exhausted_attempts_fail_into_the_dead_queue(harness: Harness) -> None:
    recorder = Recorder()
    await harness.start_worker(recorder.handler(max_attempts=2))
    job = await harness.submit(max_attempts=2, crash_failures=99)

    record = await harness.wait_status(job.id, TERMINAL)

    assert record.status == JobStatus.FAILED
    assert record.attempt == 2
    assert record.error is not None and record.error.type == "RuntimeError"
    assert "attempts exhausted: 2 of 2" in record.error.message
    assert len(recorder.runs[job.id]) == 2
    [dead] = await harness.take_dead(1)
    assert json.loads(dead.body)["attempt"] == 2
    assert dead.headers[topology.HEADER_ATTEMPT] == 2


async def test_a_timeout_is_a_transient_failure(harness: Harness) -> None:
    recorder = Recorder()
    await harness.start_worker(recorder.handler(max_attempts=2), job_timeout_s=0.1)
    job = await harness.submit(max_attempts=2, sleep_s=5)

    record = await harness.wait_status(job.id, TERMINAL)

    assert record.status == JobStatus.FAILED
    assert len(recorder.runs[job.id]) == 2  # retried once after the first timeout
    events = await harness.events(job.id)
    retrying = [e for e in events if e.event == EventKind.RETRYING]
    assert len(retrying) == 1 and retrying[0].error is not None
    assert retrying[0].error.type == "timeout"
    assert record.error is not None and record.error.type == "timeout"


async def test_a_duplicate_message_for_a_completed_job_does_not_run_it_again(
    harness: Harness,
) -> None:
    recorder = Recorder()
    await harness.start_worker(recorder.handler())
    job = await harness.submit()
    await harness.wait_status(job.id, TERMINAL)
    skipped = _skipped_count()

    await harness.publish(job.model_dump_json().encode())
    await _until(lambda: _skipped_count() > skipped)

    assert len(recorder.runs[job.id]) == 1
    assert [e.event for e in await harness.events(job.id)].count(EventKind.COMPLETED) == 1
    assert await harness.queue_depth(topology.work_queue(harness.service)) == 0


async def test_a_malformed_message_is_parked_and_the_worker_keeps_consuming(
    harness: Harness,
) -> None:
    recorder = Recorder()
    await harness.start_worker(recorder.handler())
    await harness.publish(b"this is not json")
    await harness.publish(b'{"id": "x", "type": "test.job", "input": {"nonsense": 1}}')

    job = await harness.submit()
    record = await harness.wait_status(job.id, TERMINAL)

    assert record.status == JobStatus.COMPLETED
    dead = await harness.take_dead(2)
    assert sorted(m.body for m in dead) == sorted(
        [b"this is not json", b'{"id": "x", "type": "test.job", "input": {"nonsense": 1}}']
    )
    assert all(m.headers[topology.HEADER_ERROR_TYPE] == "invalid_message" for m in dead)


async def test_an_invalid_message_for_a_known_job_fails_that_job(harness: Harness) -> None:
    recorder = Recorder()
    await harness.start_worker(recorder.handler())
    request = harness.request()
    await harness.store.create(request)
    body = json.loads(request.model_dump_json())
    body["input"]["sleep_s"] = "not a number"
    await harness.publish(json.dumps(body).encode())

    record = await harness.wait_status(request.id, TERMINAL)

    assert record.status == JobStatus.FAILED
    assert record.error is not None and record.error.type == "invalid_message"
    assert "input.sleep_s" in record.error.message
    assert recorder.runs[request.id] == []


async def test_a_cancelled_waiting_job_never_runs(harness: Harness) -> None:
    recorder = Recorder()
    request = harness.request()
    await harness.store.create(request)
    waiting = await harness.store.get(request.id)
    assert waiting is not None
    assert (await harness.store.cancel(waiting)).applied
    await harness.publish(request.model_dump_json().encode())
    skipped = _skipped_count()
    await harness.start_worker(recorder.handler())

    await _until(lambda: _skipped_count() > skipped)

    assert recorder.runs[request.id] == []
    record = await harness.store.get(request.id)
    assert record is not None and record.status == JobStatus.CANCELLED


async def test_cancelling_an_active_job_stops_it_and_acks_it(harness: Harness) -> None:
    recorder = Recorder()
    worker = await harness.start_worker(recorder.handler())
    job = await harness.submit(block=True)
    active = await harness.wait_status(job.id, {JobStatus.ACTIVE})

    assert (await harness.store.cancel(active)).applied
    await _until(lambda: worker.runner.running_jobs == 0)

    record = await harness.store.get(job.id)
    assert record is not None and record.status == JobStatus.CANCELLED
    assert recorder.finished[job.id] == 0
    assert await harness.queue_depth(topology.work_queue(harness.service)) == 0
    kinds = [e.event for e in await harness.events(job.id)]
    assert kinds == [EventKind.QUEUED, EventKind.STARTED, EventKind.CANCELLED]


async def test_a_dropped_connection_mid_job_completes_exactly_once(harness: Harness) -> None:
    recorder = Recorder()
    first = await harness.start_worker(recorder.handler())
    job = await harness.submit(block=True)
    await harness.wait_status(job.id, {JobStatus.ACTIVE})

    # The first worker loses its connection while the job runs; its message
    # goes back to the queue and a new consumer takes it over.
    connection = first.broker._connection  # the aio-pika connection under FastStream
    assert connection is not None
    await connection.close()
    await harness.start_worker(recorder.handler())
    record = await harness.wait_status(job.id, TERMINAL)
    recorder.released[job.id].set()  # let the first run go on, if it still runs
    await _until(lambda: first.runner.running_jobs == 0)

    assert record.status == JobStatus.COMPLETED
    assert record.result == {"attempt": 1, "run": 2}
    events = await harness.events(job.id)
    assert [e.event for e in events].count(EventKind.COMPLETED) == 1
    final = await harness.store.get(job.id)
    assert final is not None and final.result == {"attempt": 1, "run": 2}


async def test_progress_is_recorded_and_throttled(harness: Harness) -> None:
    recorder = Recorder()
    await harness.start_worker(recorder.handler())
    # A report every 0.3 s, then 0.6 s more work before the job ends.
    job = await harness.submit(progress_steps=3, sleep_s=0.6)
    await harness.wait_status(job.id, TERMINAL)

    progress = [e for e in await harness.events(job.id) if e.event == EventKind.PROGRESS]
    # At most two a second: a report inside the window waits for its end, and
    # the latest one is sent then, so no step's message is lost.
    assert [e.progress.message for e in progress if e.progress] == ["step 1", "step 2", "step 3"]
    gaps = [(b.at - a.at).total_seconds() for a, b in itertools.pairwise(progress)]
    assert all(gap >= 0.45 for gap in gaps), gaps


def _skipped_count() -> float:
    return (
        REGISTRY.get_sample_value("offload_jobs_total", {"type": "test.job", "outcome": "skipped"})
        or 0.0
    )


async def _until(predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
