"""Every Redis key name Offload uses, in one place.

Keys that one Lua script touches for a job share the `{<job id>}` hash tag,
so they land on one slot of a Redis Cluster. The prefix isolates deployments
or test runs that share one Redis.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str = ""

    def job(self, job_id: str) -> str:
        """Hash: the job's state (the fields of `GET /v1/jobs/{id}`, plus tenant and input).

        Also `run` (the run that owns it) and `republished` (how often the sweep
        published it again while it waited).
        """
        return f"{self.prefix}job:{{{job_id}}}"

    def job_events(self, job_id: str) -> str:
        """Stream (capped): the job's events, for SSE history and `Last-Event-ID` resume."""
        return f"{self.prefix}job:{{{job_id}}}:events"

    def job_checkpoints(self, job_id: str) -> str:
        """Hash: step name → saved output, so a retried job resumes where it failed."""
        return f"{self.prefix}job:{{{job_id}}}:checkpoints"

    @property
    def outbox(self) -> str:
        """Stream: every event of every job, relayed by the notifier's consumer group."""
        return f"{self.prefix}events:outbox"

    def tenant_events(self, tenant: str) -> str:
        """Stream (capped): all of one tenant's job events, for `GET /v1/events`."""
        return f"{self.prefix}events:tenant:{tenant}"

    def tenant_jobs(self, tenant: str) -> str:
        """Sorted set: the tenant's job ids by creation time (ms), for listing."""
        return f"{self.prefix}jobs:{tenant}"

    @property
    def unstarted(self) -> str:
        """Sorted set: jobs accepted but not yet started, scored in ms.

        The gateway's sweep republishes a job once its score is `sweep_after`
        old: its acceptance time at first, then moved on after each
        republication so that the waits between them double
        (`JobStore.postpone_unstarted`).
        """
        return f"{self.prefix}jobs:unstarted"

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
        return f"{self.prefix}job:{{{job_id}}}:webhooks"

    def notifier_wake(self, consumer: str) -> str:
        """Stream (one entry, expiring): wakes one notifier's shared SSE read for a new key."""
        return f"{self.prefix}notifier:wake:{consumer}"

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
