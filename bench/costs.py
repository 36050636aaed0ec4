"""What one job costs Redis and RabbitMQ: commands and messages per job, measured.

    uv run python -m bench.costs [--jobs 300] [--rate 50] [--shards 16] [--cluster]

Runs the gateway, the notifier, one ai worker and the sandbox as `make run` does,
against a Redis server of its own (started here on a free port, so its counters
hold nothing but Offload's; with `--cluster`, a Redis Cluster of 3 masters and 3
replicas, counters summed over the masters) and a private RabbitMQ vhost with RabbitMQ's firehose
tracer on (`rabbitmqctl trace_on`: every publish and every delivery in the vhost is
copied to `amq.rabbitmq.trace`, which this process counts; no management plugin
needed). The job is `ai.generate` with `max_tokens=1` against the sandbox LLM.

Three phases of `--jobs` jobs each, sent at `--rate` a second: a plain submission;
one with an `Idempotency-Key` and a webhook (to the sandbox's receiver, which by
default gets the terminal event); and one whose first attempt fails with a
transient error (the sandbox's `sandbox-fail-1` model), so each job is retried once
through the first retry tier. Then one `GET /v1/jobs/{id}` per job. For each
phase: `CONFIG RESETSTAT`, the jobs, a wait until the broker has been quiet for
two seconds, `INFO commandstats`. What the services do when idle
(their loops' blocked reads, in-flight reports, the sweep) is measured first over
an idle window and subtracted in proportion to the phase's length, so the figures
are per job, not per second. `MONITOR` runs over each window to split the
commands by the process that sent them (by client port, `ss -tnp`) and to tell the
commands sent by clients from those run inside Lua scripts (commandstats counts
both). Nothing here is estimated; blocked reads that return earlier under load
count as the load's, so those rows depend on the rate.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import importlib
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import redis

from bench.infra import BenchInfra, bench_infra
from bench.report import Figure, report
from bench.services import AUTH, MissingService, Processes, free_port, offload_env, require

JOB = {"type": "ai.generate", "input": {"prompt": "ping", "max_tokens": 1}}
# The sandbox answers this model's first call of each job with a 503: one retry, then done.
RETRIED_JOB = {
    "type": "ai.generate",
    "input": {"prompt": "ping", "max_tokens": 1, "model": "sandbox-fail-1"},
}
IDLE_S = 10.0
QUIET_S = 2.0
# Our own commands on the dedicated server, left out of the figures.
OWN_COMMANDS = {"info", "config|resetstat", "monitor", "ping"}
# Modules holding the Lua scripts, so an EVALSHA can be named after its script.
SCRIPT_MODULES = (
    "offload_runtime.store",
    "offload_runtime.webhook_secrets",
    "offload_gateway.adapters.redis_ports",
)
# Commands that commandstats counts by subcommand (`xinfo|stream`).
CONTAINER_COMMANDS = {"xinfo", "xgroup", "client", "config", "script", "cluster", "object"}
MONITOR_LINE = re.compile(r'^\S+ \[\d+ ([^\]]+)\] "([^"]+)"(?: "([^"]*)")?')


def script_names() -> dict[str, str]:
    """sha1 → `module.NAME` for every Lua script constant of the services."""
    names = {}
    for module_name in SCRIPT_MODULES:
        module = importlib.import_module(module_name)
        for attr, value in vars(module).items():
            if isinstance(value, str) and "redis.call" in value:
                sha = hashlib.sha1(value.encode()).hexdigest()
                names[sha] = f"{module_name.rsplit('.', 1)[-1]}.{attr}"
    return names


class Firehose:
    """Counts the vhost's publishes (by exchange and routing key) and deliveries (by queue)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.last_at = time.monotonic()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self, rabbitmq_url: str) -> None:
        self._connection = await aio_pika.connect_robust(rabbitmq_url)
        channel = await self._connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind("amq.rabbitmq.trace", routing_key="#")
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        kind, _, target = (message.routing_key or "").partition(".")
        headers = message.headers or {}
        if kind == "publish":
            keys = headers.get("routing_keys")
            first = keys[0] if isinstance(keys, list) and keys else ""
            key = first.decode() if isinstance(first, bytes) else str(first)
            exchange = target or "(default)"
            # The routing key tells the message apart: the type on `jobs`, `<type>.<event>`
            # on `jobs.events`, the queue's name on the default exchange.
            self.counts[f"publish → {exchange}  {key}"] += 1
        else:
            self.counts[f"deliver ← {target}"] += 1
        self.last_at = time.monotonic()

    def take(self) -> Counter[str]:
        counts, self.counts = self.counts, Counter()
        return counts

    def completed(self) -> int:
        return sum(n for k, n in self.counts.items() if k.endswith(".completed"))

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


class Monitor:
    """`redis-cli MONITOR` into a file, parsed into commands by sender."""

    def __init__(self, port: int, path: Path) -> None:
        self.path = path
        self._file = path.open("wb")
        self._proc = subprocess.Popen(
            ["redis-cli", "-p", str(port), "monitor"], stdout=self._file, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(5)
        self._file.close()

    def commands(
        self, senders: dict[str, str], scripts: dict[str, str]
    ) -> Counter[tuple[str, str]]:
        """(sender, command) → count; sender is a service's name, `lua` or `other`."""
        out: Counter[tuple[str, str]] = Counter()
        for line in self.path.read_text(errors="replace").splitlines():
            match = MONITOR_LINE.match(line)
            if not match:
                continue
            client, command, first_arg = match.groups()
            command = command.lower()
            if command in CONTAINER_COMMANDS and first_arg:
                command = f"{command}|{first_arg.lower()}"
            elif command in ("evalsha", "eval") and first_arg:
                name = scripts.get(first_arg, first_arg[:8])
                command = f"evalsha {name}"
            if client == "lua":
                sender = "inside scripts"
            else:
                port = client.rsplit(":", 1)[-1]
                sender = senders.get(port, "other")
            out[(sender, command)] += 1
        return out


class RedisServers:
    """The run's own Redis: one node, or a Redis Cluster of 3 masters and 3 replicas.

    Counters are summed over the masters (replicas apply what their master did; Offload
    does not read from them)."""

    def __init__(self, url: str, masters: list[int]) -> None:
        self.url = url
        self.masters = masters
        self._clients = [redis.Redis(port=port) for port in masters]

    @classmethod
    async def start(cls, procs: Processes, root: Path, *, cluster: bool) -> "RedisServers":
        ports = [free_port() for _ in range(6 if cluster else 1)]
        for port in ports:
            (root / str(port)).mkdir()
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
            argv += ["--save", "", "--appendonly", "no", "--dir", str(root / str(port))]
            if cluster:
                argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
                argv += ["--cluster-node-timeout", "1000"]
            procs.spawn(f"redis-{port}", argv, {})
        for port in ports:
            await _until_ping(port)
        if not cluster:
            return cls(f"redis://127.0.0.1:{ports[0]}/0", ports)
        nodes = [f"127.0.0.1:{port}" for port in ports]
        create = ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "1"]
        await asyncio.to_thread(
            subprocess.run, [*create, "--cluster-yes"], check=True, capture_output=True
        )
        await asyncio.to_thread(_until_cluster_ok, ports)
        masters = [p for p in ports if redis.Redis(port=p).info("replication")["role"] == "master"]
        return cls("redis+cluster://" + ",".join(nodes[:3]), masters)

    def reset_stats(self) -> None:
        for client in self._clients:
            client.config_resetstat()

    def commandstats(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for client in self._clients:
            for key, value in client.info("commandstats").items():
                name = key.removeprefix("cmdstat_")
                if name not in OWN_COMMANDS:
                    out[name] += int(value["calls"])
        return out

    def commands_per_master(self) -> list[int]:
        return [
            sum(int(v["calls"]) for v in c.info("commandstats").values()) for c in self._clients
        ]

    def cpu_s(self) -> float:
        total = 0.0
        for client in self._clients:
            cpu = client.info("cpu")
            total += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        return total

    def memory(self) -> int:
        return sum(int(client.info("memory")["used_memory"]) for client in self._clients)

    def client_ports(self, pids: dict[int, str]) -> dict[str, str]:
        """The local port of every connection to a master → the service that holds it."""
        ports = {}
        for redis_port in self.masters:
            done = subprocess.run(
                ["ss", "-tnpH", "state", "established", f"( dport = :{redis_port} )"],
                capture_output=True,
                text=True,
                check=False,
            )
            for line in done.stdout.splitlines():
                fields = line.split()
                found = re.search(r"pid=(\d+)", line)
                if len(fields) >= 4 and found:
                    ports[fields[2].rsplit(":", 1)[-1]] = pids.get(int(found.group(1)), "other")
        return ports


async def _until_ping(port: int) -> None:
    client = redis.Redis(port=port)
    for _ in range(100):
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"redis-server on {port} did not answer")


def _until_cluster_ok(ports: list[int]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(redis.Redis(port=p).cluster("info")["cluster_state"] == "ok" for p in ports):
            return
        time.sleep(0.2)
    raise RuntimeError("the Redis Cluster did not reach cluster_state:ok in 30 s")


async def submit(
    session: aiohttp.ClientSession,
    gateway: str,
    count: int,
    rate: float,
    body: dict[str, Any],
    idempotency: bool,
) -> list[str]:
    ids: list[str] = []

    async def one() -> None:
        headers = {**AUTH}
        if idempotency:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        async with session.post(f"{gateway}/v1/jobs", json=body, headers=headers) as resp:
            answer = await resp.json()
            if resp.status != 202:
                raise RuntimeError(f"submission refused: {resp.status} {answer}")
            ids.append(answer["id"])

    tasks = []
    start = time.perf_counter()
    for k in range(count):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return ids


async def wait_quiet(firehose: Firehose, completed: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if firehose.completed() >= completed and time.monotonic() - firehose.last_at > QUIET_S:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"only {firehose.completed()} of {completed} jobs completed in time")


@dataclasses.dataclass
class Window:
    seconds: float
    stats: Counter[str]
    by_sender: Counter[tuple[str, str]]
    messages: Counter[str]
    redis_cpu_s: float
    redis_memory_bytes: int
    commands_per_master: list[int]


async def _main(args: argparse.Namespace) -> int:
    try:
        require("gateway", "ai", "notifier", "sandbox")
    except MissingService as exc:
        print(f"costs: not run: {exc}", file=sys.stderr)
        return 2
    scripts = script_names()
    with (
        bench_infra("costs") as shared,
        Processes("costs") as procs,
        tempfile.TemporaryDirectory() as tmp,
    ):
        servers = await RedisServers.start(procs, Path(tmp), cluster=args.cluster)
        infra = BenchInfra(shared.rabbitmq_url, servers.url, "offload:")
        vhost = shared.rabbitmq_url.rsplit("/", 1)[-1]
        await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "trace_on", "-p", vhost],
            check=True,
            capture_output=True,
        )
        env = offload_env(
            infra,
            Path(tmp) / "storage",
            OFFLOAD_REDIS_SHARDS=args.shards,
            # A limit well above the rate: the limiter's counter runs, as in production.
            OFFLOAD_RATE_LIMIT_PER_S=10_000,
        )
        _, llm_url = await procs.sandbox(env, ttft_ms=0)
        env["OFFLOAD_LLM_BASE_URL"] = llm_url
        _, gateway = await procs.gateway(env)
        await procs.notifier(env)
        await procs.worker("ai", {**env, "OFFLOAD_CONCURRENCY": "64"}, infra.rabbitmq_url)
        pids = {p.pid: p.name for p in procs.started}
        firehose = Firehose()
        await firehose.start(infra.rabbitmq_url)
        webhook_body = {**JOB, "webhook": {"url": f"{llm_url}/sandbox/webhooks"}}

        # As many connections as bench.gateway_submit uses.
        connector = aiohttp.TCPConnector(limit=32)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            print("  warm-up: 20 jobs (with webhooks: the tenant's secret is made once)")
            await submit(session, gateway, 20, args.rate, webhook_body, idempotency=True)
            await wait_quiet(firehose, 20)
            firehose.take()

            async def window(name: str, run: Any, *, monitored: bool = True) -> Window:
                monitors = []
                if monitored:
                    monitors = [
                        Monitor(port, Path(procs.log_dir) / f"monitor-{name}-{port}.log")
                        for port in servers.masters
                    ]
                    await asyncio.sleep(0.2)
                servers.reset_stats()
                cpu_before, memory_before = servers.cpu_s(), servers.memory()
                began = time.monotonic()
                await run()
                stats = servers.commandstats()
                cpu = servers.cpu_s() - cpu_before
                memory = servers.memory() - memory_before
                seconds = time.monotonic() - began
                by_sender: Counter[tuple[str, str]] = Counter()
                for monitor in monitors:
                    monitor.stop()
                    by_sender += monitor.commands(servers.client_ports(pids), scripts)
                return Window(
                    seconds,
                    stats,
                    by_sender,
                    firehose.take(),
                    cpu,
                    memory,
                    servers.commands_per_master(),
                )

            print(f"  idle: {IDLE_S:g} s")
            idle = await window("idle", lambda: asyncio.sleep(IDLE_S))
            phases = {}
            ids: list[str] = []
            for name, body, idem in (
                ("plain", JOB, False),
                ("webhook+idempotency", webhook_body, True),
                ("one retry", RETRIED_JOB, False),
            ):
                print(f"  {name}: {args.jobs} jobs at {args.rate:g}/s")

                async def run(body: dict[str, Any] = body, idem: bool = idem) -> None:
                    ids.extend(await submit(session, gateway, args.jobs, args.rate, body, idem))
                    await wait_quiet(firehose, args.jobs)

                phases[name] = await window(name, run)

            # MONITOR makes Redis copy every command to its client: Redis's own CPU per
            # job is measured on a plain phase of its own, without it.
            print(f"  plain again, without MONITOR (Redis CPU): {args.jobs} jobs")

            async def unmonitored() -> None:
                await submit(session, gateway, args.jobs, args.rate, JOB, False)
                await wait_quiet(firehose, args.jobs)

            cpu_phase = await window("cpu", unmonitored, monitored=False)

            print(f"  poll: GET /v1/jobs/{{id}} once for {args.jobs} finished jobs")

            async def poll() -> None:
                for job_id in ids[-args.jobs :]:
                    async with session.get(f"{gateway}/v1/jobs/{job_id}", headers=AUTH) as resp:
                        await resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"GET {job_id}: {resp.status}")

            phases["poll (one GET per job)"] = await window("poll", poll)
        await firehose.close()

    rows, figures = [], []
    for name, phase in phases.items():
        scale = phase.seconds / idle.seconds

        def net(count: float, idle_count: float, scale: float = scale) -> float:
            return (count - idle_count * scale) / args.jobs

        commands = sorted(set(phase.stats) | set(idle.stats))
        senders = sorted({s for s, _ in phase.by_sender})
        for command in commands:
            per_job = net(phase.stats[command], idle.stats[command])
            row: dict[str, Any] = {"phase": name, "command": command, "per job": per_job}
            for sender in senders:
                matching = [
                    k
                    for k in phase.by_sender
                    if k[0] == sender and (k[1] == command or k[1].startswith(command + " "))
                ]
                count = sum(phase.by_sender[k] for k in matching)
                idle_count = sum(idle.by_sender[k] for k in matching)
                row[sender] = net(count, idle_count)
            if any(isinstance(v, float) and abs(v) >= 0.05 for v in row.values()):
                rows.append(row)
        scripts_rows = sorted(k for k in phase.by_sender if k[1].startswith("evalsha "))
        for sender, command in scripts_rows:
            rows.append(
                {
                    "phase": name,
                    "command": f"  {command}",
                    sender: net(
                        phase.by_sender[(sender, command)], idle.by_sender[(sender, command)]
                    ),
                }
            )
        sent = sum(
            net(n, idle.by_sender[k])
            for k, n in phase.by_sender.items()
            if k[0] != "inside scripts"
        )
        inside = sum(
            net(n, idle.by_sender[k])
            for k, n in phase.by_sender.items()
            if k[0] == "inside scripts"
        )
        for message, count in sorted(phase.messages.items()):
            rows.append({"phase": name, "command": message, "per job": count / args.jobs})
        figures += [
            Figure(f"{name}: Redis commands sent per job", sent, "commands"),
            Figure(f"{name}: Redis commands run inside scripts per job", inside, "commands"),
            Figure(
                f"{name}: RabbitMQ publishes per job",
                sum(n for k, n in phase.messages.items() if k.startswith("publish")) / args.jobs,
                "messages",
            ),
            Figure(
                f"{name}: RabbitMQ deliveries per job",
                sum(n for k, n in phase.messages.items() if k.startswith("deliver")) / args.jobs,
                "messages",
            ),
        ]
    redis_kind = "3-master cluster, summed" if args.cluster else "one node"
    redis_cpu_us = (
        1e6
        * (cpu_phase.redis_cpu_s - idle.redis_cpu_s * cpu_phase.seconds / idle.seconds)
        / args.jobs
    )
    figures.append(
        Figure(
            f"plain: Redis CPU per job ({redis_kind}, MONITOR off)",
            redis_cpu_us,
            "µs",
            note=f"idle: {1000 * idle.redis_cpu_s / idle.seconds:.1f} ms of CPU a second",
        )
    )
    figures.append(
        Figure(
            "plain: Redis memory kept per finished job (until OFFLOAD_JOB_RETENTION_S)",
            cpu_phase.redis_memory_bytes / args.jobs,
            "bytes",
            note="used_memory after minus before: the job, its events, the tenant's stream "
            "and index entries; the outbox entries are trimmed once relayed",
        )
    )
    idle_rows = [
        {"phase": "idle, per second", "command": c, "per job": n / idle.seconds}
        for c, n in sorted(idle.stats.items())
    ]
    report(
        "costs",
        rows + idle_rows,
        figures,
        job="ai.generate, max_tokens=1, sandbox LLM at 0 ms",
        jobs=args.jobs,
        rate_per_s=args.rate,
        shards=args.shards,
        idle_s=idle.seconds,
        phase_s={name: phase.seconds for name, phase in phases.items()},
        cpu_phase_s=cpu_phase.seconds,
        redis=redis_kind,
        # Commands each master ran in the phase without MONITOR: how the shards spread.
        commands_per_master=cpu_phase.commands_per_master,
        redis_cpu_s={"idle": idle.redis_cpu_s, "plain without MONITOR": cpu_phase.redis_cpu_s},
    )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run against a Redis Cluster of 3 masters and 3 replicas started here",
    )
    sys.exit(asyncio.run(_main(parser.parse_args())))


if __name__ == "__main__":
    main()
