"""Prometheus metrics shared by every service (names start with `offload_`)."""

import asyncio
import json
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import MetricsHandler

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
CONSUMER_LIVE = Gauge(
    "offload_consumer_live",
    "1 while this process's consumer of the queue is live, as its watchdog last found it; 0 "
    "while it is not (the worker's /readyz says not ready).",
    ["queue"],
)
CONSUMER_RESUBSCRIBES = Counter(
    "offload_consumer_resubscribes_total",
    "Times the consumer watchdog found a consumer lost and subscribed again (reason: "
    "no_consumer, starved).",
    ["queue", "reason"],
)
QUEUE_STALLED = Gauge(
    "offload_queue_stalled",
    "1 while a work queue has ready messages and no consumer (nothing will run them), as last "
    "read by a passive declare.",
    ["queue", "service"],
)
EVENT_LOOP_LAG = Histogram(
    "offload_event_loop_lag_seconds",
    "The worst event-loop lag of each half-second: how late the loop ran a callback "
    "due then, checked every 5 ms.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
EVENT_LOOP_LAG_MAX = Gauge(
    "offload_event_loop_lag_max_seconds",
    "The worst event-loop lag since the previous scrape (each scrape starts a new window; "
    "with two scrapers, each sees the worst since either scraped).",
)


class _WorstSinceScrape:
    """The worst lag noted since the last `take`: the loop notes, a scrape takes.

    A worker's scrape runs in `MetricsServer`'s thread, hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._worst = 0.0

    def note(self, lag_s: float) -> None:
        with self._lock:
            if lag_s > self._worst:
                self._worst = lag_s

    def take(self) -> float:
        with self._lock:
            worst, self._worst = self._worst, 0.0
        return worst


_worst_since_scrape = _WorstSinceScrape()
EVENT_LOOP_LAG_MAX.set_function(_worst_since_scrape.take)


class LoopLagSampler:
    """Measures event-loop lag: a callback due every `tick_s`, and how late each one runs.

    A loop blocked by CPU work or a synchronous call shows up here long before
    heartbeats or requests time out (DESIGN §5.5). A tick every 5 ms catches
    every stall longer than that, whenever it happens (a sample every half
    second missed most of them); the price is the wake-ups of an idle process,
    10–19 ms of CPU a second on the 2-core development machine. Each
    `interval_s` the worst lag of the window goes to the histogram, and the
    worst since the last scrape to the `..._max_seconds` gauge.
    """

    def __init__(self, interval_s: float = 0.5, tick_s: float = 0.005) -> None:
        self._interval_s = interval_s
        self._tick_s = tick_s
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._window_ends = 0.0
        self._window_worst = 0.0
        self.last_lag_s = 0.0
        """The worst lag of the last full window."""

    def start(self) -> None:
        if self._handle is not None:
            return
        now = time.perf_counter()
        self._window_ends = now + self._interval_s
        self._window_worst = 0.0
        self._schedule(asyncio.get_running_loop(), now)

    async def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        self._due = now + self._tick_s
        self._handle = loop.call_later(self._tick_s, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        # A plain timer callback rather than a task that sleeps: no task step, no
        # future per tick. Timed with the process's own clock: uvloop's `loop.time()`
        # counts whole milliseconds and stands still within a loop iteration.
        now = time.perf_counter()
        lag = max(0.0, now - self._due)
        _worst_since_scrape.note(lag)
        if lag > self._window_worst:
            self._window_worst = lag
        if now >= self._window_ends:
            self.last_lag_s = self._window_worst
            EVENT_LOOP_LAG.observe(self._window_worst)
            self._window_worst = 0.0
            self._window_ends = now + self._interval_s
        self._schedule(loop, now)


class MetricsServer:
    """`/metrics`, `/healthz` and `/readyz` on their own port, for processes that serve no HTTP.

    Workers have no web framework, so a small threaded server answers: a scrape
    or a probe never waits on the event loop (and still works when the loop is
    stuck, which is when the lag figure matters most). `/readyz` answers 503
    while `ready()` is false (the worker is not consuming).
    """

    def __init__(self, host: str, port: int, ready: Callable[[], bool] = lambda: True) -> None:
        self._host = host
        self._port = port
        self._ready = ready
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("the metrics server is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        ready = self._ready

        class Handler(MetricsHandler.factory(REGISTRY)):  # type: ignore[misc]
            def do_GET(self) -> None:
                path = self.path.partition("?")[0]
                if path == "/healthz":
                    self._answer(200, {"status": "ok"})
                elif path == "/readyz":
                    live = ready()
                    self._answer(200 if live else 503, {"consuming": live})
                else:
                    super().do_GET()

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the worker's own log

        self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
