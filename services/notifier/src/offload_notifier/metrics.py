"""The notifier's Prometheus metrics (names start with `offload_`)."""

from prometheus_client import Counter, Gauge, Histogram

RELAYED = Counter(
    "offload_outbox_relayed_total",
    "Outbox entries the relay handled, by outcome (relayed, unreadable).",
    ["outcome"],
)
RELAY_FAILURES = Counter(
    "offload_outbox_relay_failures_total",
    "Relay batches that failed (broker or Redis unreachable) and were retried.",
)
WEBHOOK_DELIVERIES = Counter(
    "offload_webhook_deliveries_total",
    "Webhook attempts by outcome: delivered, gone (410), retried, dead, refused (SSRF guard), "
    "deferred (waiting out a Retry-After), invalid (undecodable message).",
    ["outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "offload_webhook_request_seconds",
    "Wall time of one webhook request.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
)
DEAD_LETTER_ALERTS = Counter(
    "offload_dead_letter_alerts_total",
    "Messages seen reaching a dead queue, by queue and reason.",
    ["queue", "reason"],
)
OPS_WEBHOOK_FAILURES = Counter(
    "offload_ops_webhook_failures_total",
    "Alerts the operations webhook did not accept.",
)
QUEUE_STALL_ALERTS = Counter(
    "offload_queue_stall_alerts_total",
    "Work queues found with messages ready and no consumer for the alert delay, by queue.",
    ["queue"],
)
SSE_REFUSED = Counter(
    "offload_sse_refused_total",
    "SSE streams answered 429 because their tenant already had "
    "OFFLOAD_SSE_MAX_STREAMS_PER_TENANT open on this process.",
)
SSE_CLIENTS = Gauge(
    "offload_sse_clients",
    "SSE clients connected to this process, by stream kind (job, tenant).",
    ["stream"],
)
SSE_FELL_BEHIND = Counter(
    "offload_sse_fell_behind_total",
    "Times an SSE client stopped reading for longer than OFFLOAD_SSE_QUEUE_LIMIT events: its "
    "queue was dropped and it catches up from Redis when it reads again.",
)
SSE_RESYNCS = Counter(
    "offload_sse_resyncs_total",
    "Times the shared SSE reader read every followed job stream again: it took the outbox up "
    "at its end (first job followed after an idle spell, or after a Redis error), or found "
    "outbox entries trimmed before it read them.",
)
SSE_JOB_STREAM_READS = Counter(
    "offload_sse_job_stream_reads_total",
    "Job streams the shared SSE reader read (an XRANGE each) because the outbox announced new "
    "entries, a follower joined, or it resynced: one per event with followers here, however "
    "many clients follow it.",
)
