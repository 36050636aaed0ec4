"""End-to-end latency at 100 jobs/s: `POST /v1/jobs` → `completed` on SSE, and a bare reference.

    uv run python -m bench.pipeline_latency [--rate 100] [--seconds 10] [--concurrency 64]
        [--rounds 4]

The job does nothing (`bench.noop`, bench/noop.py: its run costs ≈ 0), so the
figure is the pipeline's own cost: gateway (auth, validation, idempotency,
Redis record, confirmed publish) → RabbitMQ → worker (two Lua transitions) →
outbox → notifier relay → the tenant's SSE stream (`GET /v1/events`), read by
a client that connected before the first job.

In the same run, the bare reference (bench/pipeline_reference.py) does the
least such a pipeline can: an HTTP endpoint records one Redis hash and
publishes with confirm, a consumer acks and publishes the completion on Redis
pub/sub, and the client listens there. Each part of both runs in its own
process, as in production. Both are up at once and take `--seconds` worth of
jobs each in rounds that alternate between them (Offload, reference,
reference, Offload, ...), so a change in the machine's load meets both.
Target: Offload's p50 at most 1.5× the reference's.

Requests are sent open loop: job k is due at `start + k / rate` and every time
counts from that moment. Each hop is printed as its time since the job was
due: for Offload, from the events' own timestamps (`at`, taken just before
the Lua call that records the event: queued by the gateway, started and
completed by the worker) and the tenant stream's entry id
(relayed by the notifier, a millisecond clock); for the reference, from the
times each part returns.
"""

import argparse
import asyncio
import contextlib
import re
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from bench.cpu import MachineCpu
from bench.infra import BenchInfra, bench_infra
from bench.report import Figure, report
from bench.services import (
    AUTH,
    MissingService,
    Processes,
    free_port,
    offload_env,
    require,
)
from bench.sse import sse_events
from bench.stats import latency_summary

TARGET_P50_MS = 8.0
TARGET_P99_MS = 20.0
TARGET_RATIO = 1.5
JOB = {"type": "bench.noop", "input": {"n": 0}}
JOB_NAME = "bench.noop (a job that does nothing)"
REPO = Path(__file__).resolve().parents[1]
# The tenant stream's entry ids: `<ms>-<seq>`, alone or as a shard's position in a cursor.
STREAM_ID = re.compile(r"(\d{13})-\d+")


def wall_offset() -> float:
    """time.time() - perf_counter(): turns another process's wall-clock stamp into perf time."""
    return time.time() - time.perf_counter()


@dataclass
class Hops:
    """One stack's jobs: when each was due, and when it passed each hop (perf_counter clock)."""

    names: tuple[str, ...]
    due: dict[str, float] = field(default_factory=dict)
    at: dict[str, dict[str, float]] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    completed: asyncio.Event = field(default_factory=asyncio.Event)
    expected: set[str] | None = None
    errors: int = 0

    def stamp(self, job_id: str, hop: str, when: float) -> None:
        self.at.setdefault(job_id, {}).setdefault(hop, when)

    def delivered(self, job_id: str, when: float) -> None:
        self.seen.setdefault(job_id, when)
        self.check()

    def check(self) -> None:
        if self.expected is not None and self.expected <= self.seen.keys():
            self.completed.set()

    def rows(self, stack: str) -> list[dict[str, Any]]:
        """Each hop's time since the job was due (ms), over the jobs delivered."""
        ids = [i for i in self.due if i in self.seen]
        rows = []
        for hop in self.names:
            values = [
                (self.at[i][hop] - self.due[i]) * 1000 for i in ids if hop in self.at.get(i, {})
            ]
            rows.append({"stack": stack, "hop (time since due)": hop, **latency_summary(values)})
        return rows

    def e2e(self) -> list[float]:
        return [(self.seen[i] - self.due[i]) * 1000 for i in self.due if i in self.seen]


OFFLOAD_HOPS = (
    "recording (gateway: queued `at`)",
    "POST answered (202)",
    "started (worker)",
    "completed recorded (worker)",
    "relayed (notifier, ms clock)",
    "delivered on SSE",
)
REFERENCE_HOPS = (
    "recorded (Redis hash)",
    "published (confirmed)",
    "POST answered (202)",
    "consumed",
    "completion published",
    "delivered (pub/sub)",
)


async def paced(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    rate: float,
    count: int,
    hops: Hops,
    headers: dict[str, str],
    on_answer: Callable[[str, dict[str, Any]], None] | None = None,
) -> list[str]:
    """POST `count` times at `rate`, open loop; each job's due time and answer go to `hops`."""
    interval = 1 / rate
    ids: list[str] = []

    async def one(due: float) -> None:
        try:
            async with session.post(url, json=body, headers=headers) as resp:
                answer = await resp.json()
                answered = time.perf_counter()
                if resp.status != 202:
                    hops.errors += 1
                    return
        except (aiohttp.ClientError, TimeoutError):
            hops.errors += 1
            return
        job_id = str(answer["id"])
        hops.due[job_id] = due
        hops.stamp(job_id, "POST answered (202)", answered)
        if on_answer is not None:
            on_answer(job_id, answer)
        ids.append(job_id)

    tasks = []
    start = time.perf_counter() + 0.05
    for k in range(count):
        due = start + k * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    return ids


class Sink:
    """Where a stack's listener puts what it hears: the current phase's `Hops`."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.hops = Hops(names)


@dataclass
class Stack:
    """One of the two pipelines: how to send it jobs, and what its rounds measured."""

    name: str
    processes: tuple[str, ...]
    sink: Sink
    send: Callable[[Hops, int], Coroutine[Any, Any, list[str]]]
    measured: Hops
    cpu_s: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    busy_s: float = 0.0

    @property
    def missing(self) -> int:
        hops = self.measured
        return len(hops.due) - len(hops.seen.keys() & hops.due.keys()) + hops.errors

    def cpu_ms_per_job(self, idle_pct: dict[str, float]) -> dict[str, float]:
        """CPU per job by process: the rounds' CPU minus what it burns when idle, per job.

        RabbitMQ's and Redis's CPU (shared) counts whatever else uses them too, so
        their idle share is not subtracted: another suite's load would make it negative.
        """
        jobs = max(1, len(self.measured.seen))
        per_job = {}
        for name, cpu in self.cpu_s.items():
            idle = 0.0 if "(shared)" in name else idle_pct.get(name, 0.0)
            per_job[name] = 1000 * (cpu - idle / 100 * self.seconds) / jobs
        return per_job


async def one_round(procs: Processes, stack: Stack, hops: Hops, jobs: int) -> None:
    """`jobs` jobs into `hops` at the paced rate; waits until all are delivered (30 s at most)."""
    stack.sink.hops = hops
    mine = {*stack.processes, "redis (shared)", "rabbitmq (shared)", "bench client"}
    cpu_before, machine_before = procs.cpu_s(), MachineCpu.now()
    began = time.perf_counter()
    await stack.send(hops, jobs)
    hops.expected = set(hops.due)
    hops.completed = asyncio.Event()
    hops.check()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(hops.completed.wait(), 30)
    cpu_after, machine_after = procs.cpu_s(), MachineCpu.now()
    seconds = time.perf_counter() - began
    if hops is stack.measured:
        stack.seconds += seconds
        stack.busy_s += seconds * machine_after.busy_since(machine_before)
        for name in mine & cpu_after.keys():
            used = cpu_after[name] - cpu_before.get(name, 0.0)
            stack.cpu_s[name] = stack.cpu_s.get(name, 0.0) + used


# --------------------------------------------------------------------------- Offload


async def listen_sse(
    session: aiohttp.ClientSession, url: str, sink: Sink, connected: asyncio.Event
) -> None:
    offset = wall_offset()
    async with session.get(url, headers={**AUTH, "Accept": "text/event-stream"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"SSE {url}: {resp.status} {await resp.text()}")
        connected.set()
        async for event in sse_events(resp):
            arrived = time.perf_counter()
            try:
                payload = event.json()
            except ValueError:
                continue
            if not isinstance(payload, dict):
                continue
            job_id, kind = payload.get("job_id"), payload.get("event")
            if not isinstance(job_id, str) or not isinstance(kind, str):
                continue
            hops = sink.hops
            at = datetime.fromisoformat(payload["at"]).timestamp() - offset
            if kind == "queued":
                hops.stamp(job_id, "recording (gateway: queued `at`)", at)
            elif kind == "started":
                hops.stamp(job_id, "started (worker)", at)
            elif kind in ("completed", "failed"):
                hops.stamp(job_id, "completed recorded (worker)", at)
                # The newest position in the id is this entry's: when the relay appended it.
                relayed = [int(ms) for ms in STREAM_ID.findall(event.id)]
                if relayed:
                    hops.stamp(job_id, "relayed (notifier, ms clock)", max(relayed) / 1000 - offset)
                hops.stamp(job_id, "delivered on SSE", arrived)
                if kind == "failed":
                    hops.errors += 1
                hops.delivered(job_id, arrived)


async def start_offload(
    procs: Processes, args: argparse.Namespace, infra: BenchInfra, files: Path
) -> tuple[str, str]:
    """Gateway, notifier and the no-op worker, each in its own process; their base URLs."""
    env = offload_env(infra, files, OFFLOAD_JOB_SPECS="bench.noop:NOOP", PYTHONPATH=str(REPO))
    _, gateway = await procs.gateway(env)
    _, notifier = await procs.notifier(env)
    worker_env = {**env, "OFFLOAD_CONCURRENCY": str(args.concurrency)}
    worker = procs.module("bench worker", "bench.noop", worker_env)
    await worker.wait_consumers(infra.rabbitmq_url, "bench")
    return gateway, notifier


# --------------------------------------------------------------------------- reference


async def start_reference(
    procs: Processes, args: argparse.Namespace, infra: BenchInfra
) -> tuple[str, str]:
    """The reference's HTTP part and consumer, each in its own process; URL and channel."""
    from bench.pipeline_reference import ReferenceSettings

    port = free_port()
    prefix = f"{infra.redis_prefix}reference:"
    env = {
        **offload_env(infra, Path(tempfile.gettempdir())),
        "PYTHONPATH": str(REPO),
        "REF_PORT": str(port),
        "REF_RABBITMQ_URL": infra.rabbitmq_url,
        "REF_REDIS_URL": infra.redis_url,
        "REF_REDIS_PREFIX": prefix,
        "REF_PREFETCH": str(args.concurrency),
    }
    module = [sys.executable, "-m", "bench.pipeline_reference"]
    http = procs.spawn("reference http", [*module, "http"], env)
    base = f"http://127.0.0.1:{port}"
    await http.wait_http(f"{base}/healthz")
    consumer = procs.spawn("reference consumer", [*module, "consumer"], env)
    await _wait_reference_consumer(consumer, infra.rabbitmq_url)
    return base, ReferenceSettings(redis_prefix=prefix).channel


async def listen_pubsub(pubsub: Any, sink: Sink) -> None:
    import json

    offset = wall_offset()
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if message is None:
            continue
        arrived = time.perf_counter()
        done = json.loads(message["data"])
        hops = sink.hops
        hops.stamp(done["id"], "consumed", done["consumed"] - offset)
        hops.stamp(done["id"], "completion published", done["completed"] - offset)
        hops.stamp(done["id"], "delivered (pub/sub)", arrived)
        hops.delivered(done["id"], arrived)


async def _wait_reference_consumer(process: Any, rabbitmq_url: str) -> None:
    import aio_pika

    from bench.pipeline_reference import QUEUE

    deadline = time.monotonic() + 30
    while True:
        process._check_alive()
        connection = await aio_pika.connect(rabbitmq_url)
        try:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                queue = await channel.declare_queue(QUEUE, passive=True)
                if queue.declaration_result.consumer_count:
                    return
        finally:
            await connection.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the reference consumer never consumed {QUEUE}")
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- both


async def measure(
    args: argparse.Namespace, infra: BenchInfra, files: Path
) -> tuple[Stack, Stack, dict[str, float]]:
    """Both stacks up at once, then rounds alternating between them (ABBA), so a change in
    the machine's load meets both; and what each process burns idle (% of a core)."""
    with Processes("pipeline") as procs:
        gateway, notifier = await start_offload(procs, args, infra, files)
        base, channel = await start_reference(procs, args, infra)

        idle_s = 5.0
        idle_before = procs.cpu_s()
        await asyncio.sleep(idle_s)
        idle_after = procs.cpu_s()
        idle_pct = {k: 100 * (idle_after[k] - idle_before.get(k, 0.0)) / idle_s for k in idle_after}

        redis = aioredis.from_url(infra.redis_url, decode_responses=True)
        pubsub = redis.pubsub()
        offset = wall_offset()
        listeners: list[asyncio.Task[None]] = []
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0),
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
                ) as sse_session,
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0),
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as session,
            ):

                def offload_send(hops: Hops, n: int) -> Coroutine[Any, Any, list[str]]:
                    url = f"{gateway}/v1/jobs"
                    return paced(session, url, JOB, args.rate, n, hops, AUTH)

                def reference_send(hops: Hops, n: int) -> Coroutine[Any, Any, list[str]]:
                    def answered(job_id: str, answer: dict[str, Any]) -> None:
                        hops.stamp(job_id, "recorded (Redis hash)", answer["recorded"] - offset)
                        hops.stamp(job_id, "published (confirmed)", answer["published"] - offset)

                    return paced(session, f"{base}/jobs", {}, args.rate, n, hops, {}, answered)

                offload = Stack(
                    "Offload",
                    ("gateway", "notifier", "bench worker"),
                    Sink(OFFLOAD_HOPS),
                    offload_send,
                    Hops(OFFLOAD_HOPS),
                )
                reference = Stack(
                    "reference",
                    ("reference http", "reference consumer"),
                    Sink(REFERENCE_HOPS),
                    reference_send,
                    Hops(REFERENCE_HOPS),
                )
                connected = asyncio.Event()
                listeners.append(
                    asyncio.create_task(
                        listen_sse(sse_session, f"{notifier}/v1/events", offload.sink, connected)
                    )
                )
                await asyncio.wait_for(connected.wait(), 10)
                await pubsub.subscribe(channel)
                listeners.append(asyncio.create_task(listen_pubsub(pubsub, reference.sink)))
                await asyncio.sleep(0.2)

                # Warm-up (connections, imports, cache-warm paths), then the rounds.
                warm_up = max(20, int(args.rate))
                print(f"  warm-up: {warm_up} jobs at {args.rate:g}/s on each", flush=True)
                for stack in (offload, reference):
                    await one_round(procs, stack, Hops(stack.measured.names), warm_up)
                per_round = max(1, int(args.rate * args.seconds) // args.rounds)
                print(
                    f"  measured: {args.rounds} rounds of {per_round} jobs at {args.rate:g}/s "
                    "on each, alternating",
                    flush=True,
                )
                for k in range(args.rounds):
                    order = (offload, reference) if k % 2 == 0 else (reference, offload)
                    for stack in order:
                        await one_round(procs, stack, stack.measured, per_round)
        finally:
            for listener in listeners:
                listener.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)
            await pubsub.aclose()
            await redis.aclose()
    return offload, reference, idle_pct


def _not_run(reason: str) -> int:
    print(f"pipeline_latency: not run: {reason}", file=sys.stderr)
    figures = [
        Figure("POST → completed on SSE, p50", None, "ms", f"≤ {TARGET_P50_MS:g} ms", False),
        Figure("POST → completed on SSE, p99", None, "ms", f"≤ {TARGET_P99_MS:g} ms", False),
        Figure(
            "POST → completed, p50 / bare reference's",
            None,
            "×",
            f"≤ {TARGET_RATIO:g}×",
            False,
            note=reason,
        ),
    ]
    report("pipeline_latency", [], figures, missing=reason)
    return 2


async def _main(args: argparse.Namespace) -> int:
    try:
        require("gateway", "notifier")
    except MissingService as exc:
        return _not_run(str(exc))

    with bench_infra("pipeline") as infra, tempfile.TemporaryDirectory() as files:
        offload, reference, idle_pct = await measure(args, infra, Path(files))

    ours, ref = latency_summary(offload.measured.e2e()), latency_summary(reference.measured.e2e())
    rows = [*offload.measured.rows("Offload"), *reference.measured.rows("reference")]
    ok = offload.missing == 0 and reference.missing == 0
    ratio = ours["p50"] / ref["p50"] if ref["n"] else None
    figures = [
        Figure(
            "POST → completed on SSE, p50",
            ours["p50"],
            "ms",
            f"≤ {TARGET_P50_MS:g} ms",
            ok and ours["p50"] <= TARGET_P50_MS,
            reference=f"bare reference {ref['p50']:.2f} ms; Celery 2.0, BullMQ 1.3",
            note=JOB_NAME,
        ),
        Figure(
            "POST → completed on SSE, p99",
            ours["p99"],
            "ms",
            f"≤ {TARGET_P99_MS:g} ms",
            ok and ours["p99"] <= TARGET_P99_MS,
            reference=f"bare reference {ref['p99']:.2f} ms; Celery 4.4, BullMQ 3.5",
            note=JOB_NAME,
        ),
        Figure(
            "POST → completed, p50 / bare reference's",
            ratio,
            "×",
            f"≤ {TARGET_RATIO:g}×",
            ok and ratio is not None and ratio <= TARGET_RATIO,
            reference=f"reference p50 {ref['p50']:.2f} / p99 {ref['p99']:.2f} ms, same run",
            note="reference: HTTP → Redis hash + confirmed publish → consumer → Redis pub/sub",
        ),
    ]
    count = args.rounds * max(1, int(args.rate * args.seconds) // args.rounds)
    report(
        "pipeline_latency",
        rows,
        figures,
        job=JOB_NAME,
        rate_per_s=args.rate,
        jobs=count,
        rounds=args.rounds,
        jobs_missing={"offload": offload.missing, "reference": reference.missing},
        worker_concurrency=args.concurrency,
        # CPU seconds per process over each stack's rounds, and the machine's busy share.
        cpu_s_by_process={"offload": offload.cpu_s, "reference": reference.cpu_s},
        idle_cpu_pct_by_process=idle_pct,
        cpu_ms_per_job_by_process={
            "offload": offload.cpu_ms_per_job(idle_pct),
            "reference": reference.cpu_ms_per_job(idle_pct),
        },
        machine_busy_pct={
            stack.name: 100 * stack.busy_s / max(stack.seconds, 1e-9)
            for stack in (offload, reference)
        },
    )
    for stack, per_job in (
        ("Offload", offload.cpu_ms_per_job(idle_pct)),
        ("reference", reference.cpu_ms_per_job(idle_pct)),
    ):
        parts = ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(per_job.items()))
        print(f"CPU ms per job, {stack}: {parts}")
    if not ok:
        print(
            f"  jobs missing or failed: Offload {offload.missing}, reference {reference.missing}",
            file=sys.stderr,
        )
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=4, help="measured rounds per stack, alternating"
    )
    sys.exit(asyncio.run(_main(parser.parse_args())))


if __name__ == "__main__":
    main()
