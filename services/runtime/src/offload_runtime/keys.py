"""Every Redis key name Offload uses, in one place.

Job state is split over a fixed number of logical shards (`OFFLOAD_REDIS_SHARDS`,
16 by default, chosen at deploy time like a topic's partitions). A job's shard
follows from its id (`shard_of`), and every key that one script touches for a
job carries its shard's hash tag `{s<n>}`: the job's hash, events, checkpoints
and webhook deliveries, and the shard's outbox, unstarted set, and the
tenant's job index and event stream for that shard. So each transition is a
single-slot call on a Redis Cluster, the shards spread over its masters, and
the same names serve one Redis node. Readers of "all of a tenant's jobs" or
"every unstarted job" read every shard and merge.

Keys used alone (rate counters, idempotency, secrets, files, audit, in-flight
reports, the sweep lock) carry no shard tag. The prefix isolates deployments
or test runs that share one Redis.
"""

import re
import zlib
from dataclasses import dataclass

DEFAULT_SHARDS = 16


_TAG = re.compile(r"\{s(\d+)\}")


def shard_of(job_id: str, shards: int) -> int:
    """The job's shard: CRC-32 of its id (the same in every process), modulo `shards`."""
    return zlib.crc32(job_id.encode()) % shards


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str = ""
    shards: int = DEFAULT_SHARDS

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"the shard count must be at least 1, not {self.shards}")

    def shard(self, job_id: str) -> int:
        return shard_of(job_id, self.shards)

    @property
    def all_shards(self) -> range:
        return range(self.shards)

    @staticmethod
    def tag(shard: int) -> str:
        """The hash tag of a shard: its keys share one Redis Cluster slot."""
        return f"{{s{shard}}}"

    def job(self, job_id: str) -> str:
        """Hash: the job's state (the fields of `GET /v1/jobs/{id}`, plus tenant and input).

        Also `run` (the run that owns it) and `republished` (how often the sweep
        published it again while it waited).
        """
        return f"{self.prefix}job:{self.tag(self.shard(job_id))}:{job_id}"

    def job_events(self, job_id: str) -> str:
        """Stream (capped): the job's events, for SSE history and `Last-Event-ID` resume."""
        return f"{self.job(job_id)}:events"

    def job_checkpoints(self, job_id: str) -> str:
        """Hash: step name → saved output, so a retried job resumes where it failed."""
        return f"{self.job(job_id)}:checkpoints"

    def outbox(self, shard: int) -> str:
        """Stream: every event of the shard's jobs, relayed by the notifier's consumer group."""
        return f"{self.prefix}events:{self.tag(shard)}:outbox"

    def tenant_events(self, tenant: str, shard: int) -> str:
        """Stream (capped): one tenant's job events of one shard, for `GET /v1/events`."""
        return f"{self.prefix}events:{self.tag(shard)}:tenant:{tenant}"

    def tenant_jobs(self, tenant: str, shard: int) -> str:
        """Sorted set: the tenant's job ids of one shard by creation time (ms), for listing."""
        return f"{self.prefix}jobs:{self.tag(shard)}:tenant:{tenant}"

    def unstarted(self, shard: int) -> str:
        """Sorted set: the shard's jobs accepted but not yet started, scored in ms.

        The gateway's sweep republishes a job once its score is `sweep_after`
        old: its acceptance time at first, then moved on after each
        republication so that the waits between them double
        (`JobStore.postpone_unstarted`).
        """
        return f"{self.prefix}jobs:{self.tag(shard)}:unstarted"

    @property
    def shard_count(self) -> str:
        """String: the shard count the deployment was created with (set on first start)."""
        return f"{self.prefix}meta:shards"

    @property
    def sweep_lock(self) -> str:
        """String (short TTL): held by the one gateway replica sweeping `unstarted` right now."""
        return f"{self.prefix}jobs:unstarted:sweep-lock"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel: ids of active jobs whose workers must stop them."""
        return f"{self.prefix}jobs:cancel"

    def idempotency(self, tenant: str, key: str) -> str:
        """String: `<job id> <body hash>` for a tenant's `Idempotency-Key`, kept 24 h."""
        return f"{self.prefix}idem:{tenant}:{key}"

    def webhook_secrets(self, tenant: str) -> str:
        """List: the tenant's webhook secrets, newest first (two during a rotation)."""
        return f"{self.prefix}whsec:{tenant}"

    def file(self, file_id: str) -> str:
        """Hash: an uploaded or produced file's metadata (tenant, bytes, sha256, type)."""
        return f"{self.prefix}file:{file_id}"

    def rate(self, tenant: str, window: int) -> str:
        """Counter: the tenant's submissions in one rate-limit window."""
        return f"{self.prefix}rate:{tenant}:{window}"

    def webhook_deliveries(self, job_id: str) -> str:
        """Hash: event id → what became of its webhook delivery (outcome, attempts, status)."""
        return f"{self.job(job_id)}:webhooks"

    def notifier_wake(self, consumer: str, shard: int) -> str:
        """Stream (one entry, expiring): wakes one notifier's SSE reader of one shard (in
        the shard's slot, as every key that reader reads in one call)."""
        return f"{self.prefix}notifier:wake:{self.tag(shard)}:{consumer}"

    def shard_of_key(self, key: str) -> int | None:
        """The shard whose hash tag `key` carries; None for a key of no shard."""
        match = _TAG.search(key.removeprefix(self.prefix))
        return int(match.group(1)) if match else None

    @property
    def admin_audit(self) -> str:
        """Stream (capped): who did what through the admin API (dead-letter replays, purges)."""
        return f"{self.prefix}admin:audit"

    def in_flight(self, queue: str) -> str:
        """Hash: replica id → "<unacked deliveries> <unix ms>", reported by a queue's workers."""
        return f"{self.prefix}inflight:{queue}"

    def admin_rate(self, actor: str, window: int) -> str:
        """Counter: an admin key's replay and purge calls in one rate-limit window (a minute)."""
        return f"{self.prefix}admin:rate:{actor}:{window}"
