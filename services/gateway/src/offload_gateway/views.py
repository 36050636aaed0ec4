"""How stored jobs are shown to their tenant."""

from typing import Any

from offload_contracts.api import JobLinks, JobView
from offload_contracts.jobs import JobStatus
from offload_runtime.store import JobRecord


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def job_links(job_id: str, notifier_url: str, result: str | None = None) -> JobLinks:
    """`self` and `result` are gateway paths; `events` is absolute, on the notifier.

    A relative `events` would resolve against the gateway, which does not serve it.
    The gateway does not redirect there either: a redirect to another origin drops
    the `Authorization` header (curl, httpx, browsers), and proxying would keep every
    SSE connection open on the gateway, which must stay free for quick answers.
    """
    path = job_path(job_id)
    return JobLinks(self=path, events=f"{notifier_url}{path}/events", result=result)


def job_view(record: JobRecord, notifier_url: str) -> JobView:
    return JobView(
        id=record.id,
        type=record.type,
        status=record.status,
        attempt=record.attempt,
        max_attempts=record.max_attempts,
        progress=record.progress,
        result=record.result,
        error=record.error,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        next_attempt_at=record.next_attempt_at,
        links=job_links(record.id, notifier_url, _result_link(record.status, record.result)),
    )


def _result_link(status: JobStatus, result: dict[str, Any] | None) -> str | None:
    if status != JobStatus.COMPLETED or not result:
        return None
    file = result.get("file")
    if isinstance(file, dict) and isinstance(file.get("url"), str):
        return str(file["url"])
    return None
