"""SSE fan-out on one notifier process, and job completion → webhook latency.

    uv run python -m bench.sse_fanout [--clients 1000] [--rounds 5] [--webhooks 200]

The notifier runs as its own process (`python -m offload_notifier`: uvicorn,
uvloop, httptools), exactly as deployed. This process holds the clients (raw
asyncio sockets, so the client side costs little), drives job transitions
through the real `JobStore`, and runs the webhook receiver.

Scenarios, each printed as p50/p99/max delivery latency (from the event's
`at`, stamped by the store when the transition is made, to the moment a
client has read it) over every (client, event) pair:

- `jobs`: N clients each follow their own job (`GET /v1/jobs/{id}/events`);
  the N jobs then start, paced over one second (N events/s), then complete.
- `broadcast`: N clients follow the same job; each progress event reaches
  all N at once (the worst burst for one process).
- `tenant`: N clients follow their tenant's stream (`GET /v1/events`); each
  event also goes through the outbox relay first.

Memory per client is the notifier's RSS growth divided by N, with N idle SSE
connections open. The webhook figure is the time from `store.complete()` to
the receiver reading the request, one job at a time at a steady pace.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import uvloop

from bench.infra import BenchInfra, bench_infra
from bench.report import Figure, report
from offload_contracts import Contract, JobRequestBase
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis
from offload_runtime.store import JobStore, new_id

API_KEY = "bench-key"
TENANT = "bench"


class FanInput(Contract):
    n: int = 0


class FanRequest(JobRequestBase):
    type: Literal["bench.fan"] = "bench.fan"
    input: FanInput


def _request(n: int) -> FanRequest:
    return FanRequest(
        id=new_id(),
        tenant=TENANT,
        max_attempts=1,
        created_at=datetime.now(UTC),
        input=FanInput(n=n),
    )


# --------------------------------------------------------------------------- the notifier


@dataclass
class NotifierProcess:
    port: int
    process: subprocess.Popen[bytes]

    def cpu_s(self) -> float:
        """CPU time (user + system) the notifier process has used so far."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def spawn_notifier(
    infra: BenchInfra, port: int, profile: str | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OFFLOAD_RABBITMQ_URL": infra.rabbitmq_url,
        "OFFLOAD_REDIS_URL": infra.redis_url,
        "OFFLOAD_REDIS_PREFIX": infra.redis_prefix,
        "OFFLOAD_NOTIFIER_PORT": str(port),
        "OFFLOAD_API_KEYS": f"{API_KEY}={TENANT}",
        "OFFLOAD_WEBHOOK_ALLOW_PRIVATE": "true",
        "OFFLOAD_RETRY_TIERS": "1s",
        "OFFLOAD_LOG_LEVEL": "warning",
        "OFFLOAD_RELAY_BLOCK_MS": "1000",
        # Every client is the one bench tenant.
        "OFFLOAD_SSE_MAX_STREAMS_PER_TENANT": "100000",
    }
    wrap = ["-m", "cProfile", "-o", profile] if profile else []
    return subprocess.Popen([sys.executable, *wrap, "-m", "offload_notifier"], env=env)


async def start_notifier(
    infra: BenchInfra, port: int, profile: str | None = None
) -> NotifierProcess:
    process = spawn_notifier(infra, port, profile)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the notifier exited during startup")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            status = await reader.readline()
            writer.close()
            if b" 200 " in status:
                return NotifierProcess(port, process)
        except OSError:
            pass
        await asyncio.sleep(0.1)
    process.terminate()
    raise RuntimeError("the notifier did not become ready")


# --------------------------------------------------------------------------- clients


@dataclass
class Client:
    """One SSE client on a raw socket: records (receipt time, event JSON) per event."""

    path: str
    port: int
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    raw: list[tuple[float, bytes]] = field(default_factory=list)
    events_seen: int = 0
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        writer.write(
            f"GET {self.path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {API_KEY}\r\n\r\n".encode()
        )
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"{self.path}: {status!r}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # headers
        # Read whatever arrived and stamp it at once; parse afterwards. The clients
        # share this process, so the less each does per event, the less the
        # measured latency includes their own queueing.
        raw: list[tuple[float, bytes]] = []
        self.raw = raw
        tail = b""
        try:
            while chunk := await reader.read(1 << 16):
                raw.append((time.time(), chunk))
                window = tail + chunk  # a marker may straddle two reads
                found = window.count(b"\ndata: ")
                if found:
                    self.events_seen += found
                    self.subscribed.set()
                elif b": subscribed" in window:
                    self.subscribed.set()
                tail = window[-8:]
        finally:
            writer.close()

    def parse(self) -> None:
        """Turn the raw chunks into (receipt time, event) pairs: an event counts as
        received when the read that completed its `data:` line returned."""
        pending = b""
        for at, chunk in self.raw:
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line.startswith(b"data: "):
                    self.received.append((at, json.loads(line[6:])))


async def open_clients(paths: list[str], port: int) -> list[Client]:
    clients = [Client(path, port) for path in paths]
    for start in range(0, len(clients), 100):  # connect in waves, like real clients would
        for client in clients[start : start + 100]:
            client.task = asyncio.create_task(client.run())
        await asyncio.sleep(0.05)
    await _all(lambda c: c.subscribed.is_set(), clients, "every client subscribed")
    return clients


async def _all(check: Callable[[Client], bool], clients: list[Client], what: str) -> None:
    deadline = time.monotonic() + 60
    while not all(check(c) for c in clients):
        if time.monotonic() > deadline:
            done = sum(1 for c in clients if check(c))
            raise RuntimeError(f"timed out waiting for {what}: {done} of {len(clients)}")
        failed = [c.task for c in clients if c.task and c.task.done() and c.task.exception()]
        if failed:
            raise RuntimeError(f"a client failed: {failed[0].exception()!r}")
        await asyncio.sleep(0.01)


def _seen(count: int) -> Callable[[Client], bool]:
    return lambda client: client.events_seen >= count


async def close_clients(clients: list[Client]) -> None:
    for client in clients:
        if client.task:
            client.task.cancel()
    await asyncio.gather(*(c.task for c in clients if c.task), return_exceptions=True)
    for client in clients:
        client.parse()


def latencies_ms(clients: list[Client], kinds: set[str]) -> list[float]:
    found = []
    for client in clients:
        for at, event in client.received:
            if event.get("event") in kinds:
                stamped = datetime.fromisoformat(event["at"]).timestamp()
                found.append((at - stamped) * 1000)
    return found


def summary(name: str, values: list[float], **extra: Any) -> dict[str, Any]:
    values = sorted(values)
    return {
        "scenario": name,
        "deliveries": len(values),
        "p50_ms": statistics.median(values),
        "p99_ms": values[max(0, int(len(values) * 0.99) - 1)],
        "max_ms": values[-1],
        **extra,
    }


# --------------------------------------------------------------------------- scenarios


async def scenario_jobs(
    store: JobStore, notifier: "NotifierProcess", n: int
) -> list[dict[str, Any]]:
    requests = [_request(i) for i in range(n)]
    await asyncio.gather(*(store.create(r) for r in requests))
    clients = await open_clients([f"/v1/jobs/{r.id}/events" for r in requests], notifier.port)
    runs = {r.id: new_id() for r in requests}

    async def paced(step: Callable[[FanRequest], Awaitable[Any]]) -> None:
        # n transitions over one second, in 20 waves of n/20.
        wave = max(1, n // 20)
        for start in range(0, n, wave):
            began = time.monotonic()
            await asyncio.gather(*(step(r) for r in requests[start : start + wave]))
            await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - began)))

    await asyncio.sleep(0.5)
    cpu = notifier.cpu_s()
    await paced(lambda r: store.start(r, runs[r.id], redelivered=False))
    await _all(lambda c: c.events_seen >= 2, clients, "every started event")
    started_cpu = notifier.cpu_s() - cpu
    await asyncio.sleep(0.5)
    cpu = notifier.cpu_s()
    await paced(lambda r: store.complete(r, runs[r.id], {"ok": True}))
    await _all(lambda c: c.events_seen >= 3, clients, "every completed event")
    completed_cpu = notifier.cpu_s() - cpu
    await close_clients(clients)
    return [
        summary(
            "jobs: started",
            latencies_ms(clients, {"started"}),
            clients=n,
            events_per_s=n,
            cpu_us_per_delivery=round(started_cpu / n * 1e6),
        ),
        summary(
            "jobs: completed (stream ends)",
            latencies_ms(clients, {"completed"}),
            clients=n,
            events_per_s=n,
            cpu_us_per_delivery=round(completed_cpu / n * 1e6),
        ),
    ]


async def scenario_broadcast(
    store: JobStore, notifier: "NotifierProcess", n: int, rounds: int
) -> list[dict[str, Any]]:
    request = _request(0)
    await store.create(request)
    run = new_id()
    await store.start(request, run, redelivered=False)
    clients = await open_clients([f"/v1/jobs/{request.id}/events"] * n, notifier.port)
    await asyncio.sleep(0.5)
    cpu = notifier.cpu_s()
    for i in range(rounds):
        await store.progress(request, run, 100 * (i + 1) / (rounds + 1), f"round {i}")
        await _all(_seen(3 + i), clients, f"progress {i}")
        await asyncio.sleep(0.2)
    cpu = notifier.cpu_s() - cpu
    await close_clients(clients)
    return [
        summary(
            "broadcast: one job, all clients",
            latencies_ms(clients, {"progress"}),
            clients=n,
            cpu_us_per_delivery=round(cpu / (n * rounds) * 1e6),
        )
    ]


async def scenario_tenant(
    store: JobStore, notifier: "NotifierProcess", n: int, rounds: int
) -> list[dict[str, Any]]:
    clients = await open_clients(["/v1/events"] * n, notifier.port)
    await asyncio.sleep(0.5)
    cpu = notifier.cpu_s()
    for i in range(rounds):
        await store.create(_request(i))
        await _all(_seen(1 + i), clients, f"event {i}")
        await asyncio.sleep(0.2)
    cpu = notifier.cpu_s() - cpu
    await close_clients(clients)
    return [
        summary(
            "tenant stream, all clients (via relay)",
            latencies_ms(clients, {"queued"}),
            clients=n,
            cpu_us_per_delivery=round(cpu / (n * rounds) * 1e6),
        )
    ]


async def memory_per_client(notifier: NotifierProcess, store: JobStore, n: int) -> float:
    request = _request(0)
    await store.create(request)
    await asyncio.sleep(0.5)
    before = notifier.rss_kib()
    clients = await open_clients([f"/v1/jobs/{request.id}/events"] * n, notifier.port)
    await asyncio.sleep(1.0)
    after = notifier.rss_kib()
    await close_clients(clients)
    return (after - before) / n


# --------------------------------------------------------------------------- webhooks


class Receiver:
    """A minimal HTTP/1.1 server: stamps the arrival of each request's full body."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.arrived = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.arrivals[json.loads(body)["data"]["job_id"]] = time.time()
                self.arrived.set()
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def scenario_webhooks(store: JobStore, count: int, pace_s: float) -> list[dict[str, Any]]:
    receiver = Receiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    completed_at: dict[str, float] = {}
    try:
        for i in range(count):
            request = _request(i)
            await store.create(request, webhook={"url": f"http://127.0.0.1:{port}/hook"})
            run = new_id()
            await store.start(request, run, redelivered=False)
            completed_at[request.id] = time.time()
            await store.complete(request, run, {"ok": True})
            await asyncio.sleep(pace_s)
        deadline = time.monotonic() + 30
        while len(receiver.arrivals) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        server.close()
    if len(receiver.arrivals) < count:
        raise RuntimeError(f"only {len(receiver.arrivals)} of {count} webhooks arrived")
    values = [(receiver.arrivals[j] - t) * 1000 for j, t in completed_at.items()]
    return [summary("webhook: complete → received", values, rate_per_s=round(1 / pace_s))]


# --------------------------------------------------------------------------- main


async def main(args: argparse.Namespace) -> None:
    only = set(filter(None, args.only.split(","))) or {"jobs", "broadcast", "tenant", "webhooks"}
    load_before = os.getloadavg()
    with bench_infra("sse") as infra:
        port = args.port or 18000 + os.getpid() % 1000
        notifier = await start_notifier(infra, port, args.profile)
        store = JobStore(
            connect_redis(infra.redis_url), RedisKeys(infra.redis_prefix), retention_s=3600
        )
        rows: list[dict[str, Any]] = []
        try:
            idle_rss = notifier.rss_kib()
            per_client_kib = await memory_per_client(notifier, store, args.clients)
            if "jobs" in only:
                rows += await scenario_jobs(store, notifier, args.clients)
            if "broadcast" in only:
                rows += await scenario_broadcast(store, notifier, args.clients, args.rounds)
            if "tenant" in only:
                rows += await scenario_tenant(store, notifier, args.clients, args.rounds)
            if "webhooks" in only:
                rows += await scenario_webhooks(store, args.webhooks, 1 / args.webhook_rate)
        finally:
            # SIGINT: uvicorn shuts down and re-raises it as KeyboardInterrupt, which
            # still lets cProfile write its stats (SIGTERM would kill it first).
            notifier.process.send_signal(signal.SIGINT)
            notifier.process.wait(30)
            await store.aclose()
    for row in rows:
        for name in ("p50_ms", "p99_ms", "max_ms"):
            row[name] = round(row[name], 1)
    report(
        "sse_fanout",
        rows,
        _figures(rows, per_client_kib, args.clients),
        clients=args.clients,
        notifier_idle_rss_mib=round(idle_rss / 1024, 1),
        memory_per_client_kib=round(per_client_kib, 1),
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
    )
    print(
        f"memory per SSE client: {per_client_kib:.1f} KiB "
        f"(notifier RSS idle {idle_rss / 1024:.1f} MiB); "
        f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}"
    )


def _figures(rows: list[dict[str, Any]], per_client_kib: float, clients: int) -> list[Figure]:
    by_name = {row["scenario"]: row for row in rows}
    figures: list[Figure] = []
    for scenario, label in (
        ("jobs: started", f"SSE {clients:,} clients on their own jobs: delivery p99"),
        ("broadcast: one job, all clients", f"SSE one event to {clients:,} clients: p99"),
        ("tenant stream, all clients (via relay)", f"SSE tenant stream, {clients:,} clients: p99"),
    ):
        row = by_name.get(scenario)
        if row is not None:
            figures.append(
                Figure(
                    label,
                    row["p99_ms"],
                    "ms",
                    target="≤ 100 ms" if scenario == "jobs: started" else "",
                    met=row["p99_ms"] <= 100 if scenario == "jobs: started" else None,
                    note=f"p50 {row['p50_ms']} ms; {row['cpu_us_per_delivery']} µs CPU each",
                )
            )
    figures.append(Figure("SSE memory per client", round(per_client_kib, 1), "KiB"))
    webhook = by_name.get("webhook: complete → received")
    if webhook is not None:
        figures.append(
            Figure(
                "webhook: job completed → received, p99",
                webhook["p99_ms"],
                "ms",
                note=f"p50 {webhook['p50_ms']} ms",
            )
        )
    return figures


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5, help="broadcast/tenant events")
    parser.add_argument("--webhooks", type=int, default=200)
    parser.add_argument("--webhook-rate", type=float, default=20, help="completions per second")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--profile", help="write the notifier's cProfile stats to this file")
    parser.add_argument(
        "--only", default="", help="comma-separated scenarios: jobs,broadcast,tenant,webhooks"
    )
    return parser.parse_args()


if __name__ == "__main__":
    uvloop.run(main(_args()))
