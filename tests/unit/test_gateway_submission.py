"""The gateway's order of work on submit (`JobSubmitter`), with in-memory ports."""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from offload_contracts import AiGenerateInput, JobError, JobRequestBase
from offload_contracts.api import AiGenerateSubmission, VideoGenerateSubmission
from offload_gateway.submission import (
    NOT_ACCEPTED,
    BrokerUnavailable,
    IdempotencyConflict,
    JobSubmitter,
    QueueFull,
    RateLimited,
    SubmitJob,
)


@dataclass
class World:
    """Every port of the submitter, in memory, recording the order of calls."""

    calls: list[str] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)  # id → status
    keys: dict[tuple[str, str], str] = field(default_factory=dict)
    connected: bool = True
    publish_error: Exception | None = None
    over_rate: bool = False
    depths: dict[str, int] = field(default_factory=dict)
    published: list[JobRequestBase] = field(default_factory=list)

    # JobLedger
    async def record_waiting(
        self, request: JobRequestBase, webhook: dict[str, Any] | None, key: str | None
    ) -> bool:
        self.calls.append("record")
        if request.id in self.jobs:
            return False
        self.jobs[request.id] = "waiting"
        return True

    async def record_not_accepted(self, request: JobRequestBase, error: JobError) -> None:
        self.calls.append(f"fail:{error.type}")
        self.jobs[request.id] = "failed"

    # RequestPublisher
    async def publish(self, request: JobRequestBase) -> None:
        self.calls.append("publish")
        if self.publish_error:
            raise self.publish_error
        self.published.append(request)

    def queue_depth(self, service: str) -> int | None:
        return self.depths.get(service)

    # IdempotencyKeys
    async def claim(self, tenant: str, key: str, job_id: str, fingerprint: str) -> str | None:
        self.calls.append("claim")
        held = self.keys.get((tenant, key))
        if held is None:
            self.keys[(tenant, key)] = f"{job_id} {fingerprint}"
        return held

    async def release(self, tenant: str, key: str, job_id: str) -> None:
        self.calls.append("release")
        if self.keys.get((tenant, key), "").startswith(job_id + " "):
            del self.keys[(tenant, key)]

    # RateLimiter
    async def hit(self, tenant: str) -> int | None:
        self.calls.append("rate")
        return 1 if self.over_rate else None

    # JobLookup
    async def exists(self, job_id: str) -> bool:
        return job_id in self.jobs


def submitter(world: World, depth_limit: int = 10) -> JobSubmitter:
    return JobSubmitter(
        ledger=world,
        publisher=world,
        idempotency=world,
        rate_limiter=world,
        jobs=world,
        queue_depth_limit=depth_limit,
        queue_full_retry_after=5,
        unavailable_retry_after=7,
    )


def command(job_id: str, prompt: str = "hi", key: str | None = None) -> SubmitJob:
    return SubmitJob(
        tenant="acme",
        submission=AiGenerateSubmission(type="ai.generate", input=AiGenerateInput(prompt=prompt)),
        job_id=job_id,
        now=datetime.now(UTC),
        idempotency_key=key,
    )


async def test_records_before_publishing_and_publishes_the_full_request() -> None:
    world = World()
    submitted = await submitter(world).submit(command("j1"))
    assert world.calls == ["rate", "record", "publish"]
    assert submitted.job_id == "j1" and not submitted.replayed
    (request,) = world.published
    assert request.id == "j1" and request.tenant == "acme" and request.attempt == 1
    assert request.max_attempts == 3  # the type's policy


async def test_a_failed_publish_fails_the_job_and_releases_its_key() -> None:
    world = World(publish_error=ConnectionError("gone"))
    with pytest.raises(BrokerUnavailable) as refused:
        await submitter(world).submit(command("j1", key="k"))
    assert refused.value.retry_after == 7
    assert world.calls == ["claim", "rate", "record", "publish", f"fail:{NOT_ACCEPTED}", "release"]
    assert world.jobs == {"j1": "failed"}
    assert world.keys == {}


async def test_a_disconnected_broker_refuses_before_anything_is_recorded() -> None:
    world = World(connected=False)
    with pytest.raises(BrokerUnavailable):
        await submitter(world).submit(command("j1", key="k"))
    assert world.calls == [] and world.jobs == {} and world.keys == {}


async def test_same_key_same_body_replays_other_body_conflicts() -> None:
    world = World()
    first = await submitter(world).submit(command("j1", key="k"))
    again = await submitter(world).submit(command("j2", key="k"))
    assert again.replayed and again.job_id == first.job_id == "j1"
    with pytest.raises(IdempotencyConflict, match="different request body"):
        await submitter(world).submit(command("j3", prompt="other", key="k"))
    assert [r.id for r in world.published] == ["j1"]


async def test_a_key_whose_first_request_is_in_flight_is_a_conflict_to_retry() -> None:
    world = World()
    world.keys[("acme", "k")] = f"j0 {command('j0', key='k').fingerprint}"  # claimed, not recorded
    with pytest.raises(IdempotencyConflict, match="still being processed") as conflict:
        await submitter(world).submit(command("j1", key="k"))
    assert conflict.value.retry_after == 1


async def test_limits_refuse_without_recording_and_release_the_key() -> None:
    world = World(over_rate=True)
    with pytest.raises(RateLimited) as limited:
        await submitter(world).submit(command("j1", key="k"))
    assert limited.value.retry_after == 1
    assert world.jobs == {} and world.keys == {}

    full = World(depths={"video": 10, "ai": 3})
    video = SubmitJob(
        tenant="acme",
        submission=VideoGenerateSubmission.model_validate(
            {
                "type": "video.generate",
                "input": {"prompt": "p", "duration_s": 1, "resolution": "480p"},
            }
        ),
        job_id="v1",
        now=datetime.now(UTC),
    )
    with pytest.raises(QueueFull, match=r"video\.generate queue is full"):
        await submitter(full, depth_limit=10).submit(video)
    assert (await submitter(full, depth_limit=10).submit(command("a1"))).job_id == "a1"
    assert full.jobs == {"a1": "waiting"}
