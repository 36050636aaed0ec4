"""Faults in and around a worker process lose nothing and complete nothing twice."""

import contextlib
import os
import signal
import uuid
from pathlib import Path

from offload_contracts import JobStatus, topology
from tests.reliability.outcomes import settle
from tests.support.harness import Harness
from tests.support.infra import Infra
from tests.support.processes import ServiceProcess
from tests.support.waiting import sync_probe, wait_until


async def _completed(harness: Harness, job_ids: list[str]) -> int:
    records = [await harness.store.get(job_id) for job_id in job_ids]
    return sum(1 for r in records if r is not None and r.status == JobStatus.COMPLETED)


async def _until_completed(harness: Harness, job_ids: list[str], count: int) -> None:
    await wait_until(
        lambda: _completed(harness, job_ids),
        lambda completed: completed >= count,
        timeout=30,
        what=f"{count} jobs completed",
        interval=0.02,
    )


async def test_kill_9_of_a_worker_mid_batch_loses_and_duplicates_nothing(harness: Harness) -> None:
    ids = await harness.submit_many(100, sleep_s=0.1)
    first = harness.worker_process().start()
    await _until_completed(harness, ids, 20)

    first.kill()  # mid-batch: up to 10 jobs active, the rest queued
    active = [r for r in [await harness.store.get(i) for i in ids] if r and r.status == "active"]
    harness.worker_process().start()

    outcome = await settle(
        harness.store,
        ids,
        scenario="kill -9 of a worker mid-batch",
        load=f"100 jobs of 0.1 s, concurrency 10; {len(active)} active at the kill",
    )
    outcome.assert_nothing_lost_or_duplicated()
    assert active, "the kill should have caught jobs in flight"


async def test_sigterm_lets_in_flight_jobs_finish_and_leaves_the_rest_queued(
    harness: Harness,
) -> None:
    ids = await harness.submit_many(30, sleep_s=0.5)
    worker = harness.worker_process(shutdown_grace_s=10).start()
    await _until_completed(harness, ids, 1)

    assert worker.terminate(timeout=30) == 0, worker.logs()[-3000:]
    after_stop = await _completed(harness, ids)
    records = [await harness.store.get(i) for i in ids]
    # Nothing is left half-done: every job either finished or is untouched in the queue.
    assert {r.status for r in records if r} <= {JobStatus.COMPLETED, JobStatus.WAITING}
    waiting = await harness.queue_depth(topology.work_queue(harness.service))
    assert after_stop + waiting == len(ids)

    harness.worker_process().start()
    outcome = await settle(
        harness.store,
        ids,
        scenario="SIGTERM during work (grace 10 s)",
        load=f"30 jobs of 0.5 s; {after_stop} finished in the grace period, {waiting} requeued",
    )
    outcome.assert_nothing_lost_or_duplicated()


async def test_sigterm_past_the_grace_period_returns_unfinished_jobs_to_the_queue(
    harness: Harness,
) -> None:
    worker = harness.worker_process(shutdown_grace_s=0.5).start()
    ids = await harness.submit_many(5, sleep_s=3)
    await harness.wait_all(ids, {JobStatus.ACTIVE}, timeout=15)

    assert worker.terminate(timeout=30) == 0, worker.logs()[-3000:]
    assert await _completed(harness, ids) == 0
    harness.worker_process().start()

    outcome = await settle(
        harness.store,
        ids,
        scenario="SIGTERM past the grace period (0.5 s)",
        load="5 jobs of 3 s, all active at the signal",
    )
    outcome.assert_nothing_lost_or_duplicated()


async def test_a_thousand_malformed_messages_are_parked_while_real_jobs_complete(
    harness: Harness,
) -> None:
    harness.worker_process(concurrency=50).start()
    real: list[str] = []
    for i in range(1000):
        await harness.publish(b'{"not": "a job"' if i % 2 else f"garbage {i}".encode())
        if i % 100 == 0:
            real.append((await harness.submit()).id)

    outcome = await settle(
        harness.store,
        real,
        scenario="1,000 malformed messages in a work queue",
        load="1,000 poison messages interleaved with 10 real jobs",
    )
    outcome.assert_nothing_lost_or_duplicated()
    dead = topology.dead_queue(harness.service)
    await wait_until(
        lambda: harness.queue_depth(dead),
        lambda parked: parked >= 1000,
        timeout=30,
        what=f"1,000 messages parked in {dead}",
        interval=0.1,
    )
    assert await harness.queue_depth(dead) == 1000
    assert await harness.queue_depth(topology.work_queue(harness.service)) == 0


# ---------------------------------------------------------------------- the image pool


def _process_group(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _ppid, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue  # gone meanwhile
        if int(group) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


@contextlib.asynccontextmanager
async def _image_worker(infra: Infra, tmp_path: Path):  # type: ignore[no-untyped-def]
    """An image worker process leading its own process group, its pool (2) started."""
    worker = ServiceProcess(
        "offload_image",
        settings={
            "rabbitmq_url": infra.rabbitmq_url,
            "redis_url": infra.redis_url,
            "redis_prefix": f"{infra.redis_prefix}image-{uuid.uuid4().hex[:8]}:",
            "storage_dir": tmp_path,
            "image_pool_size": 2,
            "shutdown_grace_s": 1,
        },
    ).start(own_group=True)
    try:
        await wait_until(
            sync_probe(worker.logs),
            lambda logs: "worker starting" in logs,
            timeout=30,
            what="the worker to start",
            interval=0.02,
            describe=lambda logs: logs[-2000:],
        )
        # The worker, the forkserver and two pool processes, warmed up.
        assert len(_process_group(worker.pid)) >= 4
        yield worker
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)  # nothing may outlive the test
        worker.stop()


async def test_sigterm_to_the_image_workers_process_group_leaves_no_process_behind(
    infra: Infra, tmp_path: Path
) -> None:
    # What honcho (`make run`) and systemd (its default kill mode) send: the
    # forkserver dies at once, and the worker must still take its pool with it.
    async with _image_worker(infra, tmp_path) as worker:
        os.killpg(worker.pid, signal.SIGTERM)
        assert worker.process is not None and worker.process.wait(30) == 0, worker.logs()
        await _until_the_group_is_gone(worker)


async def test_kill_9_of_the_image_worker_leaves_no_pool_process_behind(
    infra: Infra, tmp_path: Path
) -> None:
    async with _image_worker(infra, tmp_path) as worker:
        worker.kill()
        await _until_the_group_is_gone(worker)


async def _until_the_group_is_gone(worker: ServiceProcess) -> None:
    await wait_until(
        sync_probe(lambda: _process_group(worker.pid)),
        lambda left: not left,
        timeout=10,
        what="the pool processes to exit",
        interval=0.02,
    )
