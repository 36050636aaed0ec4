"""End-to-end latency at a paced rate: `POST /v1/jobs` → `completed` on SSE.

    uv run python -m bench.pipeline_latency [--rate 100] [--seconds 10] [--concurrency 64]

The job is the cheapest real type there is: `ai.generate` with `max_tokens=1`
against the sandbox LLM with no latency (time to first token 0), so the job
itself is one local HTTP call and the figure is the pipeline's own cost:
gateway (auth, validation, idempotency, Redis record, confirmed publish) →
RabbitMQ → ai worker (two Lua transitions, the LLM call) → outbox → notifier
→ the tenant's SSE stream (`GET /v1/events`), read by a client that connected
before the first job.

Requests are sent open loop: job k is due at `start + k / rate` and its latency
counts from that moment. The events' own timestamps (`at`) split each job's
time into stages: accepted (gateway), started (broker + worker pickup),
completed (the job run), and delivered (outbox relay + SSE).
"""

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.cpu import MachineCpu
from bench.infra import bench_infra
from bench.report import Figure, report
from bench.services import AUTH, MissingService, Processes, offload_env, require
from bench.sse import sse_events
from bench.stats import latency_summary

TARGET_P50_MS = 8.0
TARGET_P99_MS = 20.0
JOB = {"type": "ai.generate", "input": {"prompt": "ping", "max_tokens": 1}}
JOB_NAME = "ai.generate, max_tokens=1, sandbox LLM at 0 ms"


class Timeline:
    """When each job was due, accepted, and seen on SSE (perf_counter clock), plus event times."""

    def __init__(self) -> None:
        # time.time() - perf_counter(): turns the events' wall-clock `at` into perf time.
        self.offset = time.time() - time.perf_counter()
        self.due: dict[str, float] = {}
        self.answered: dict[str, float] = {}
        self.seen: dict[str, float] = {}
        self.at: dict[tuple[str, str], float] = {}
        self.completed = asyncio.Event()
        self.expected: set[str] | None = None
        self.errors = 0

    def event(self, payload: dict[str, Any], arrived: float) -> None:
        job_id, kind = payload.get("job_id"), payload.get("event")
        if not isinstance(job_id, str) or not isinstance(kind, str):
            return
        at = datetime.fromisoformat(payload["at"]).timestamp() - self.offset
        self.at.setdefault((job_id, kind), at)
        if kind in ("completed", "failed"):
            self.seen.setdefault(job_id, arrived)
            if kind == "failed":
                self.errors += 1
            self.check()

    def check(self) -> None:
        if self.expected is not None and self.expected <= self.seen.keys():
            self.completed.set()


async def listen(
    session: aiohttp.ClientSession, url: str, timeline: Timeline, connected: asyncio.Event
) -> None:
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
            if isinstance(payload, dict):
                timeline.event(payload, arrived)


async def paced(
    session: aiohttp.ClientSession, gateway: str, rate: float, count: int, timeline: Timeline
) -> list[str]:
    interval = 1 / rate
    ids: list[str] = []

    async def one(due: float) -> None:
        try:
            async with session.post(f"{gateway}/v1/jobs", json=JOB, headers=AUTH) as resp:
                body = await resp.json()
                answered = time.perf_counter()
                if resp.status != 202:
                    timeline.errors += 1
                    return
        except (aiohttp.ClientError, TimeoutError):
            timeline.errors += 1
            return
        job_id = str(body["id"])
        timeline.due[job_id] = due
        timeline.answered[job_id] = answered
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


async def _main(args: argparse.Namespace) -> int:
    try:
        require("gateway", "ai", "notifier", "sandbox")
    except MissingService as exc:
        print(f"pipeline_latency: not run: {exc}", file=sys.stderr)
        report(
            "pipeline_latency",
            [],
            [
                Figure(
                    "POST → completed on SSE, p50",
                    None,
                    "ms",
                    f"≤ {TARGET_P50_MS:g} ms",
                    False,
                    note=str(exc),
                ),
                Figure(
                    "POST → completed on SSE, p99",
                    None,
                    "ms",
                    f"≤ {TARGET_P99_MS:g} ms",
                    False,
                    note=str(exc),
                ),
            ],
            missing=str(exc),
        )
        return 2

    count = int(args.rate * args.seconds)
    with (
        bench_infra("pipeline") as infra,
        Processes("pipeline") as procs,
        tempfile.TemporaryDirectory() as files,
    ):
        env = offload_env(infra, Path(files))
        _, llm_url = await procs.sandbox(env, ttft_ms=0)
        env["OFFLOAD_LLM_BASE_URL"] = llm_url
        _, gateway = await procs.gateway(env)
        _, notifier = await procs.notifier(env)
        await procs.worker(
            "ai", {**env, "OFFLOAD_CONCURRENCY": str(args.concurrency)}, infra.rabbitmq_url
        )

        # What each process burns doing nothing, so the per-job cost can be told apart.
        idle_s = 5.0
        idle_before = procs.cpu_s()
        await asyncio.sleep(idle_s)
        idle_after = procs.cpu_s()
        idle_pct = {k: 100 * (idle_after[k] - idle_before.get(k, 0.0)) / idle_s for k in idle_after}

        connector = aiohttp.TCPConnector(limit=0)
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)
            ) as sse_session,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
            ) as session,
        ):
            # Warm-up (connections, imports, JIT-free but cache-warm paths), then the paced run.
            for phase, n in (("warm-up", max(20, int(args.rate))), ("measured", count)):
                timeline = Timeline()
                connected = asyncio.Event()
                listener = asyncio.create_task(
                    listen(sse_session, f"{notifier}/v1/events", timeline, connected)
                )
                await asyncio.wait_for(connected.wait(), 10)
                await asyncio.sleep(0.2)
                print(f"  {phase}: {n} jobs at {args.rate:g}/s", flush=True)
                cpu_before, machine_before = procs.cpu_s(), MachineCpu.now()
                began = time.perf_counter()
                ids = await paced(session, gateway, args.rate, n, timeline)
                timeline.expected = set(ids)
                timeline.check()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(timeline.completed.wait(), 30)
                cpu_after, machine_after = procs.cpu_s(), MachineCpu.now()
                measured_s = time.perf_counter() - began
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)

    ids = [i for i in timeline.due if i in timeline.seen]
    missing = count - len(ids)
    e2e = [(timeline.seen[i] - timeline.due[i]) * 1000 for i in ids]
    post = [(timeline.answered[i] - timeline.due[i]) * 1000 for i in timeline.answered]

    def stage(frm: str | None, to: str | None) -> list[float]:
        out = []
        for i in ids:
            a = timeline.due[i] if frm is None else timeline.at.get((i, frm))
            b = timeline.seen[i] if to is None else timeline.at.get((i, to))
            if a is not None and b is not None:
                out.append((b - a) * 1000)
        return out

    stages = {
        "POST due → 202 answered": post,
        "POST due → queued (gateway recorded)": stage(None, "queued"),
        "queued → started (broker + pickup)": stage("queued", "started"),
        "started → completed (job run)": stage("started", "completed"),
        "completed → on SSE (relay + SSE)": stage("completed", None),
        "POST due → completed on SSE": e2e,
    }
    rows = [{"stage": name, **latency_summary(values)} for name, values in stages.items()]
    overall = latency_summary(e2e)
    ok = missing == 0 and timeline.errors == 0
    figures = [
        Figure(
            "POST → completed on SSE, p50",
            overall["p50"],
            "ms",
            f"≤ {TARGET_P50_MS:g} ms",
            ok and overall["p50"] <= TARGET_P50_MS,
            reference="Celery 6.3, BullMQ 3.0",
            note=JOB_NAME,
        ),
        Figure(
            "POST → completed on SSE, p99",
            overall["p99"],
            "ms",
            f"≤ {TARGET_P99_MS:g} ms",
            ok and overall["p99"] <= TARGET_P99_MS,
            reference="Celery 10, BullMQ 7",
            note=JOB_NAME,
        ),
    ]
    report(
        "pipeline_latency",
        rows,
        figures,
        job=JOB_NAME,
        rate_per_s=args.rate,
        jobs=count,
        jobs_missing=missing,
        errors=timeline.errors,
        worker_concurrency=args.concurrency,
        # CPU seconds per service over the measured run, and the machine's busy share.
        cpu_s_by_process={k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after},
        idle_cpu_pct_by_process=idle_pct,
        # CPU per job: the run's CPU minus what the process burns when idle, per job.
        cpu_ms_per_job_by_process={
            k: 1000
            * (cpu_after[k] - cpu_before.get(k, 0.0) - idle_pct.get(k, 0.0) / 100 * measured_s)
            / max(1, len(ids))
            for k in cpu_after
        },
        machine_busy_pct=100 * machine_after.busy_since(machine_before),
    )
    if not ok:
        print(f"  {missing} jobs never seen completed, {timeline.errors} errors", file=sys.stderr)
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    sys.exit(asyncio.run(_main(parser.parse_args())))


if __name__ == "__main__":
    main()
