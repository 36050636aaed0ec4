"""RabbitMQ names (DESIGN §3). Services use these, never string literals."""

from typing import Final

from offload_contracts.jobs import BUILTIN_SPECS

JOBS_EXCHANGE: Final = "jobs"
"""Topic exchange for job requests; routing key = job type."""
DEAD_EXCHANGE: Final = "jobs.dead"
"""Direct exchange for dead letters; routing key = service."""
EVENTS_EXCHANGE: Final = "jobs.events"
"""Topic exchange for job events; routing key = `<type>.<event>`."""

WORKER_SERVICES: Final = tuple(dict.fromkeys(spec.service for spec in BUILTIN_SPECS))
"""Offload's own worker services, from the job specs (`JobSpec.service`)."""
NOTIFIER_SERVICE: Final = "notifier"


def work_queue(service: str) -> str:
    return f"{service}.jobs"


def work_binding(service: str) -> str:
    return f"{service}.#"


def retry_queue(service: str, tier: str) -> str:
    return f"{service}.retry.{tier}"


def dead_queue(service: str) -> str:
    return f"{service}.dead"


# Headers Offload sets on messages it dead-letters or retries.
HEADER_ERROR: Final = "x-offload-error"
HEADER_ERROR_TYPE: Final = "x-offload-error-type"
HEADER_ATTEMPT: Final = "x-offload-attempt"
HEADER_FAILED_AT: Final = "x-offload-failed-at"
HEADER_SOURCE_QUEUE: Final = "x-offload-source-queue"
# The HTTP status of the answer that failed a parked webhook delivery (an integer as a
# string); absent when there was no HTTP answer.
HEADER_HTTP_STATUS: Final = "x-offload-http-status"


# The notifier's queues (DESIGN §3, "webhook deliveries follow the same pattern").
# Its webhook deliveries live in `work_queue(NOTIFIER_SERVICE)` = `notifier.jobs`
# (DESIGN calls it `notifier.webhooks`): the same name as every service's work
# queue, so the admin and replay tooling treat the notifier like any worker.


def dead_alerts_queue(service: str) -> str:
    """Bound to `jobs.dead`: a copy of every dead letter, which `service` consumes to alert."""
    return f"{service}.dead-alerts"
