"""One notifier process serving 10,000 concurrent SSE clients.

    uv run python -m bench.sse_scale [--clients 10000] [--connect-rate 1000] [--event-rate 1000]

The notifier runs as its own process (`python -m offload_notifier`); this
process drives job transitions through the real `JobStore` (no workers: the
notifier is what is measured) and holds the clients, on raw sockets that only
stamp each chunk as it arrives (parsed once the scenario is over), so that the
client side costs little. Clients connect at `--connect-rate` a second and,
like a browser's EventSource, retry a refused or reset connection after a
second (the retries are counted).

- `jobs`: every client follows its own job (`GET /v1/jobs/{id}/events`); once
  all are connected, the jobs start, `--event-rate` a second, and each client
  must receive its job's `started` event.
- `tenant`: every client follows the tenant's stream (`GET /v1/events`); one
  job is created a second, `--rounds` times, and each `queued` event (through
  the outbox relay) must reach every client.

Latency of a delivery: from the event's `at` (stamped by the store when the
transition is made) to the moment the client has read it. Target: p99 ≤ 250
ms. Memory per client: the notifier's RSS growth with every client of `jobs`
connected and idle, divided by the number of clients. Notifier CPU per
delivery includes its outbox relay, which publishes each event to RabbitMQ.
"""

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from bench.cpu import group_cpu_s, process_rss_mb
from bench.infra import bench_infra
from bench.report import Figure, report
from bench.services import API_KEY, TENANT, MissingService, Processes, offload_env, require
from bench.stats import latency_summary
from bench.submit import job_store
from offload_contracts import AiGenerateInput, AiGenerateRequest
from offload_runtime.store import JobStore, new_id

TARGET_P99_MS = 250.0
RETRY_S = 1.0


class _Connection(asyncio.Protocol):
    """One client's socket: sends the request, stamps each chunk as it arrives.

    A protocol rather than a stream reader, and no parsing while events arrive:
    10,000 clients share this process, and whatever each does per event is
    queueing time the measured latency would include.
    """

    def __init__(self, client: "Client", request: bytes) -> None:
        self._client = client
        self._request = request
        self._head = b""
        self._tail = b""
        self.closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        client = self._client
        if not client.connected.is_set():
            self._head += data
            head, found, data = self._head.partition(b"\r\n\r\n")
            if not found:
                return
            status = head.split(b"\r\n", 1)[0]
            if b" 200 " not in status:
                client.error = status.decode(errors="replace")
                self._transport.close()
                return
            client.connected.set()
        if data:
            client.chunks.append((now, data))
            window = self._tail + data  # a marker may straddle two reads
            client.seen += window.count(client.marker)
            self._tail = window[-len(client.marker) :]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


@dataclass
class Client:
    """One SSE connection: what it received, when, and how often it had to reconnect."""

    path: str
    port: int
    wanted: str
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    seen: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    retries: int = 0
    error: str = ""
    task: "asyncio.Task[None] | None" = None

    @property
    def marker(self) -> bytes:
        return f'"event":"{self.wanted}"'.encode()

    async def run(self) -> None:
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {API_KEY}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        while True:
            try:
                transport, connection = await loop.create_connection(
                    lambda: _Connection(self, request), "127.0.0.1", self.port
                )
            except OSError:
                self.retries += 1
                await asyncio.sleep(RETRY_S)
                continue
            try:
                lost = await connection.closed
            finally:
                transport.close()
            if self.connected.is_set() or self.error:
                if lost is not None:
                    self.error = f"lost after connecting: {lost!r}"
                return
            # Refused or reset before the answer (a full accept queue): retry, as EventSource does.
            self.retries += 1
            await asyncio.sleep(RETRY_S)

    def parse(self) -> None:
        """Each wanted event's latency: from its `at` to the read that completed its line."""
        pending = b""
        for at_read, chunk in self.chunks:
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line.startswith(b"data:") and self.marker in line:
                    event = json.loads(line[5:])
                    stamped = datetime.fromisoformat(event["at"]).timestamp()
                    self.latencies_ms.append((at_read - stamped) * 1000)


async def open_clients(paths: list[str], port: int, wanted: str, rate: float) -> list[Client]:
    """Connect every client, `rate` a second in waves of 50; wait until all are streaming."""
    clients = [Client(path, port, wanted) for path in paths]
    wave = 50
    for start in range(0, len(clients), wave):
        for client in clients[start : start + wave]:
            client.task = asyncio.create_task(client.run())
        await asyncio.sleep(wave / rate)
    deadline = time.monotonic() + 120
    while not all(c.connected.is_set() or c.error for c in clients):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    return clients


async def close_clients(clients: list[Client]) -> None:
    tasks = [c.task for c in clients if c.task is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        client.parse()


def requests(n: int) -> list[AiGenerateRequest]:
    return [
        AiGenerateRequest(
            id=new_id(),
            tenant=TENANT,
            max_attempts=1,
            created_at=datetime.now(UTC),
            input=AiGenerateInput(prompt="sse"),
        )
        for _ in range(n)
    ]


async def wait_received(clients: list[Client], per_client: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(c.seen >= per_client for c in clients if c.connected.is_set()):
            return
        await asyncio.sleep(0.05)


@dataclass
class Scenario:
    name: str
    clients: list[Client]
    expected: int
    notifier_cpu_s: float
    wall_s: float

    def row(self) -> dict[str, Any]:
        values = [v for c in self.clients for v in c.latencies_ms]
        summary = latency_summary(values)
        connected = sum(1 for c in self.clients if c.connected.is_set())
        return {
            "scenario": self.name,
            "clients": len(self.clients),
            "connected": connected,
            "connect_retries": sum(c.retries for c in self.clients),
            "deliveries": len(values),
            "missing": self.expected - len(values),
            "p50_ms": summary["p50"],
            "p99_ms": summary["p99"],
            "max_ms": summary["max"],
            "notifier_cpu_ms_per_delivery": 1000 * self.notifier_cpu_s / max(len(values), 1),
        }


async def scenario_jobs(
    store: JobStore, port: int, pid: int, args: argparse.Namespace
) -> tuple[Scenario, float]:
    jobs = requests(args.clients)
    await asyncio.gather(*(store.create(r) for r in jobs))
    await asyncio.sleep(0.5)
    rss_before = process_rss_mb(pid)
    clients = await open_clients(
        [f"/v1/jobs/{r.id}/events" for r in jobs], port, "started", args.connect_rate
    )
    await asyncio.sleep(2)  # idle, every client connected
    per_client_kib = 1024 * (process_rss_mb(pid) - rss_before) / max(1, len(clients))
    cpu_before, began = group_cpu_s(pid), time.perf_counter()
    wave = max(1, int(args.event_rate / 100))  # one wave every 10 ms
    for start in range(0, len(jobs), wave):
        await asyncio.gather(
            *(store.start(r, new_id(), redelivered=False) for r in jobs[start : start + wave])
        )
        await asyncio.sleep(wave / args.event_rate)
    await wait_received(clients, 1, 30)
    scenario = Scenario(
        f"jobs: own job's stream, {args.event_rate:g} events/s",
        clients,
        len(clients),
        group_cpu_s(pid) - cpu_before,
        time.perf_counter() - began,
    )
    await close_clients(clients)
    return scenario, per_client_kib


async def scenario_tenant(
    store: JobStore, port: int, pid: int, args: argparse.Namespace
) -> Scenario:
    clients = await open_clients(["/v1/events"] * args.clients, port, "queued", args.connect_rate)
    await asyncio.sleep(2)
    cpu_before, began = group_cpu_s(pid), time.perf_counter()
    for request in requests(args.rounds):
        await store.create(request)
        await asyncio.sleep(1)
    await wait_received(clients, args.rounds, 30)
    scenario = Scenario(
        f"tenant: all on GET /v1/events, 1 event/s × {args.rounds}",
        clients,
        len(clients) * args.rounds,
        group_cpu_s(pid) - cpu_before,
        time.perf_counter() - began,
    )
    await close_clients(clients)
    return scenario


async def _main(args: argparse.Namespace) -> int:
    try:
        require("notifier")
    except MissingService as exc:
        print(f"sse_scale: not run: {exc}", file=sys.stderr)
        report("sse_scale", [], [_figure(None, False, str(exc), args.clients)], missing=str(exc))
        return 2
    cpu_self = resource.getrusage(resource.RUSAGE_SELF)
    with (
        bench_infra("sse-scale") as infra,
        Processes("sse-scale") as procs,
        tempfile.TemporaryDirectory() as scratch,
    ):
        # Every client is the one bench tenant.
        env = offload_env(infra, Path(scratch), OFFLOAD_SSE_MAX_STREAMS_PER_TENANT=args.clients)
        notifier, base = await procs.notifier(env)
        port = int(base.rsplit(":", 1)[1])
        store = job_store(infra.redis_url, infra.redis_prefix)
        idle_rss = process_rss_mb(notifier.pid)
        try:
            print(f"  jobs: {args.clients} clients, each on its own job", flush=True)
            jobs, per_client_kib = await scenario_jobs(store, port, notifier.pid, args)
            print(f"  tenant: {args.clients} clients on the tenant stream", flush=True)
            tenant = await scenario_tenant(store, port, notifier.pid, args)
        finally:
            await store.aclose()
    used = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = used.ru_utime + used.ru_stime - cpu_self.ru_utime - cpu_self.ru_stime

    rows = [jobs.row(), tenant.row()]
    broken = [
        f"{row['scenario']}: {row['clients'] - row['connected']} never connected, "
        f"{row['missing']} deliveries missing"
        for row in rows
        if row["connected"] < row["clients"] or row["missing"] > 0
    ]
    worst = max(row["p99_ms"] for row in rows)
    met = not broken and worst <= TARGET_P99_MS
    note = ", ".join(f"{row['scenario'].split(':')[0]} {row['p99_ms']:.0f}" for row in rows)
    if broken:
        note += "; " + "; ".join(broken)
    figures = [
        _figure(worst, met, "p99 by scenario: " + note, args.clients),
        Figure(
            f"notifier: memory per SSE client ({args.clients:,} connected)",
            per_client_kib,
            "KiB",
            note=f"notifier RSS idle {idle_rss:.0f} MB",
        ),
    ]
    report(
        "sse_scale",
        rows,
        figures,
        clients=args.clients,
        connect_rate_per_s=args.connect_rate,
        memory_per_client_kib=per_client_kib,
        notifier_idle_rss_mb=idle_rss,
        client_process_cpu_s=client_cpu,
    )
    return 1 if broken else 0


def _figure(value: float | None, met: bool, note: str, clients: int) -> Figure:
    return Figure(
        f"notifier: {clients:,} SSE clients, event delivery p99",
        value,
        "ms",
        target=f"≤ {TARGET_P99_MS:g} ms",
        met=met,
        note=note,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=10_000, help="SSE clients")
    parser.add_argument("--connect-rate", type=float, default=1000, help="new connections/s")
    parser.add_argument("--event-rate", type=float, default=1000, help="jobs scenario events/s")
    parser.add_argument("--rounds", type=int, default=5, help="tenant scenario events")
    args = parser.parse_args()
    import uvloop

    sys.exit(uvloop.run(_main(args)))


if __name__ == "__main__":
    main()
