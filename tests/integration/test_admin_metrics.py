"""Prometheus `/metrics` of a worker (OFFLOAD_METRICS_PORT), and the event-loop lag sampler."""

import asyncio
import time

import httpx
from prometheus_client import REGISTRY

from offload_contracts import JobStatus
from offload_runtime.metrics import EVENT_LOOP_LAG, LoopLagSampler
from tests.support.harness import Harness
from tests.support.scrape import metric_samples
from tests.support.testjob import Recorder


async def test_a_worker_serves_its_metrics_on_the_configured_port(harness: Harness) -> None:
    recorder = Recorder()
    worker = await harness.start_worker(recorder.handler(max_attempts=2), metrics_port=0)
    assert worker.metrics_server is not None
    url = f"http://127.0.0.1:{worker.metrics_server.port}/metrics"
    async with httpx.AsyncClient() as http:
        before = metric_samples((await http.get(url)).text)
        done = await harness.submit()
        retried = await harness.submit(transient_failures=1)
        failed = await harness.submit(permanent=True)
        for job in (done, retried, failed):
            await harness.wait_status(job.id, {JobStatus.COMPLETED, JobStatus.FAILED})
        answer = await http.get(url)
    assert answer.status_code == 200
    after = metric_samples(answer.text)

    def grew(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("offload_jobs_total", type="test.job", outcome="completed") == 2
    assert grew("offload_jobs_total", type="test.job", outcome="retried") == 1
    assert grew("offload_jobs_total", type="test.job", outcome="failed") == 1
    assert grew("offload_job_attempts_count", type="test.job", outcome="completed") == 2
    assert grew("offload_job_attempts_sum", type="test.job", outcome="completed") == 3  # 1 + 2
    assert grew("offload_job_duration_seconds_count", type="test.job") == 4
    assert grew("offload_event_loop_lag_seconds_count") >= 0
    assert "offload_event_loop_lag_seconds_count" in answer.text

    await worker.app.stop()
    harness.workers.remove(worker)
    async with httpx.AsyncClient() as http:
        try:
            await http.get(url, timeout=1)
            stopped = False
        except httpx.HTTPError:
            stopped = True
    assert stopped, "the metrics server outlived its worker"


def _lag_sum() -> float:
    return next(s.value for s in EVENT_LOOP_LAG.collect()[0].samples if s.name.endswith("_sum"))


async def test_the_loop_lag_sampler_sees_a_blocked_loop() -> None:
    before = _lag_sum()
    sampler = LoopLagSampler(interval_s=0.02)
    sampler.start()
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # noqa: ASYNC251  (block the loop, as CPU work on it would)
        await asyncio.sleep(0.05)
    finally:
        await sampler.stop()
    # One sample saw the block (other samplers of this process add little in 0.3 s).
    assert _lag_sum() - before >= 0.15
    assert sampler.last_lag_s < 0.15  # the last sample came after the block


def _worst_since_last_scrape() -> float:
    """What a scrape of `/metrics` reads (and, by reading, starts a new window)."""
    return REGISTRY.get_sample_value("offload_event_loop_lag_max_seconds") or 0.0


async def test_a_short_stall_between_two_samples_is_the_worst_lag_of_the_next_scrape() -> None:
    sampler = LoopLagSampler()  # as every service runs it: half-second windows
    sampler.start()
    try:
        await asyncio.sleep(0.1)
        _worst_since_last_scrape()
        await asyncio.sleep(0.1)
        time.sleep(0.04)  # noqa: ASYNC251  (a 40 ms stall, well inside a half-second window)
        await asyncio.sleep(0.1)
        worst = _worst_since_last_scrape()
        again = _worst_since_last_scrape()
    finally:
        await sampler.stop()
    # Seen within a tick (5 ms), though no half-second sample fell inside it.
    assert worst >= 0.035, f"worst lag since the last scrape: {worst * 1000:.1f} ms"
    assert again == 0.0  # each scrape reports the worst since the one before
