"""Prometheus metrics shared by every service (names start with `offload_`)."""

import asyncio
import contextlib
import threading
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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
JOB_ATTEMPTS = Histogram(
    "offload_job_attempts",
    "Attempts a job took, observed when it finishes (completed or failed).",
    ["type", "outcome"],
    buckets=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20),
)
QUEUE_MESSAGES = Gauge(
    "offload_queue_messages",
    "Ready messages in each queue (work, retry, dead), as last read by a passive declare "
    "(unacked ones are in `offload_queue_unacked`).",
    ["queue", "service", "kind"],
)
QUEUE_UNACKED = Gauge(
    "offload_queue_unacked",
    "Deliveries handed to consumers and not yet acknowledged, as the consuming workers "
    "report them (0 without consumers; not set where consumers do not report).",
    ["queue", "service", "kind"],
)
QUEUE_CONSUMERS = Gauge(
    "offload_queue_consumers",
    "Consumers of each queue, as last read by a passive declare.",
    ["queue", "service", "kind"],
)
DEAD_LETTERS_REPLAYED = Counter(
    "offload_dead_letters_replayed_total",
    "Dead letters an operator replayed (the job went back to waiting and was republished).",
    ["queue"],
)
DEAD_LETTERS_PURGED = Counter(
    "offload_dead_letters_purged_total",
    "Dead letters an operator purged.",
    ["queue"],
)
EVENT_LOOP_LAG = Histogram(
    "offload_event_loop_lag_seconds",
    "How late the event loop ran a callback scheduled to run now (sampled periodically).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


class LoopLagSampler:
    """Measures event-loop lag: schedules a wake-up every `interval_s`, records how late it came.

    A loop blocked by CPU work or a synchronous call shows up here long before
    heartbeats or requests time out (DESIGN §5.5).
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.last_lag_s = 0.0

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self._interval_s
            await asyncio.sleep(self._interval_s)
            self.last_lag_s = max(0.0, loop.time() - expected)
            EVENT_LOOP_LAG.observe(self.last_lag_s)


class MetricsServer:
    """Prometheus `/metrics` on its own port, for processes that serve no HTTP (workers).

    prometheus_client's server answers from a thread, so a scrape never waits
    on the event loop (and still works when the loop is stuck, which is when
    the lag figure matters most).
    """

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("the metrics server is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._server, self._thread = start_http_server(self._port, addr=self._host)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
