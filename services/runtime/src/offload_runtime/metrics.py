"""Prometheus metrics shared by every service (names start with `offload_`)."""

from prometheus_client import Counter, Histogram

JOBS = Counter(
    "offload_jobs_total",
    "Job attempts by type and outcome (completed, retried, failed, cancelled, skipped, invalid).",
    ["type", "outcome"],
)
JOB_DURATION = Histogram(
    "offload_job_duration_seconds",
    "Wall time of one job attempt.",
    ["type"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 900),
)
DEAD_LETTERS = Counter(
    "offload_dead_letters_total",
    "Messages a service parked in its dead queue.",
    ["queue", "reason"],
)
