"""One ai worker process holding 500 concurrent LLM calls.

    uv run python -m bench.ai_scale [--jobs 500] [--llm-latency-s 5] [--sample-ms 20]

The sandbox answers every call after `--llm-latency-s` (time to first token),
then streams 16 tokens at once. N `ai.generate` jobs are recorded and published
straight to the queue (the gateway is not under test here); one ai worker with
concurrency N takes them all, so N LLM streams are open at once.

Event-loop lag is measured inside the worker, two ways:
- the runtime's own sampler (`offload_event_loop_lag_seconds`, one sample every
  0.5 s: the worst lag of that half-second), scraped from the worker's `/metrics`
  every 100 ms, so every sample is seen on its own (the sum's increase between
  two scrapes);
- a bench probe in the same process, every `--sample-ms` ms, finer grained:
  the worker runs as `python -m bench.ai_scale --worker`, which is
  `python -m offload_ai` plus that sampler and a count of the jobs running.

Target: N calls in flight at once, with lag under 50 ms.
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from bench.cpu import process_rss_mb
from bench.infra import bench_infra
from bench.report import Figure, report
from bench.services import (
    TENANT,
    MissingService,
    Processes,
    free_port,
    offload_env,
    require,
)
from bench.stats import latency_summary
from bench.submit import TERMINAL, job_store, record_and_publish, statuses
from offload_contracts import AiGenerateInput, AiGenerateRequest
from offload_runtime.store import new_id

TARGET_LAG_MS = 50.0


# --------------------------------------------------------------------------- inside the worker


async def _worker_main(samples_path: Path, sample_s: float) -> None:
    from offload_ai.app import build_app

    worker = build_app()
    samples: list[tuple[float, float, int]] = []

    async def sample() -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + sample_s
            await asyncio.sleep(sample_s)
            samples.append((time.time(), loop.time() - expected, worker.runner.running_jobs))

    sampler = asyncio.create_task(sample())
    try:
        await worker.app.run()
    finally:
        sampler.cancel()
        samples_path.write_text(json.dumps(samples))  # noqa: ASYNC240 (the loop is done)


# --------------------------------------------------------------------------- driver


def ai_requests(jobs: int) -> list[AiGenerateRequest]:
    return [
        AiGenerateRequest(
            id=new_id(),
            tenant=TENANT,
            max_attempts=3,
            created_at=datetime.now(UTC),
            input=AiGenerateInput(prompt=f"Tell me about {i}.", max_tokens=16),
        )
        for i in range(jobs)
    ]


def parse_lag_metric(text: str) -> tuple[float, float]:
    """(count, sum) of `offload_event_loop_lag_seconds` from a Prometheus text page."""
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith("offload_event_loop_lag_seconds_count"):
            count = float(line.split()[-1])
        elif line.startswith("offload_event_loop_lag_seconds_sum"):
            total = float(line.split()[-1])
    return count, total


async def scrape_lag(url: str, stop: asyncio.Event) -> list[tuple[float, float]]:
    """Each new runtime lag sample as (wall time, lag s): sum increase over one scrape."""
    seen: list[tuple[float, float]] = []
    last: tuple[float, float] | None = None
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            try:
                async with session.get(url) as resp:
                    count, total = parse_lag_metric(await resp.text())
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
                continue
            if last is not None and count > last[0]:
                # Several new samples in one scrape (a stalled loop) share the increase.
                n = count - last[0]
                seen.extend([(time.time(), (total - last[1]) / n)] * int(n))
            last = (count, total)
            await asyncio.sleep(0.1)
    return seen


async def _main(args: argparse.Namespace) -> int:
    try:
        require("ai", "sandbox")
    except MissingService as exc:
        print(f"ai_scale: not run: {exc}", file=sys.stderr)
        report(
            "ai_scale",
            [],
            [
                Figure(
                    "ai worker: loop lag with 500 LLM calls in flight",
                    None,
                    "ms",
                    f"< {TARGET_LAG_MS:g} ms",
                    False,
                    note=str(exc),
                )
            ],
            missing=str(exc),
        )
        return 2

    with (
        bench_infra("ai-scale") as infra,
        Processes("ai-scale") as procs,
        tempfile.TemporaryDirectory() as scratch,
    ):
        env = offload_env(infra, Path(scratch))
        _, llm_url = await procs.sandbox(env, ttft_ms=args.llm_latency_s * 1000)
        metrics_port = free_port()
        samples_path = Path(scratch) / "samples.json"
        worker = procs.spawn(
            "ai",
            [
                sys.executable,
                "-m",
                "bench.ai_scale",
                "--worker",
                "--samples",
                str(samples_path),
                "--sample-ms",
                str(args.sample_ms),
            ],
            {
                **env,
                "OFFLOAD_LLM_BASE_URL": llm_url,
                "OFFLOAD_CONCURRENCY": str(args.jobs),
                "OFFLOAD_LLM_MAX_CONNECTIONS": str(args.jobs),
                "OFFLOAD_METRICS_PORT": str(metrics_port),
            },
        )
        await worker.wait_consumers(infra.rabbitmq_url, "ai")
        rss_before = process_rss_mb(worker.pid)
        stop = asyncio.Event()
        scraper = asyncio.create_task(scrape_lag(f"http://127.0.0.1:{metrics_port}/metrics", stop))
        from bench.cpu import process_cpu_s

        cpu_before, groups_before = process_cpu_s(worker.pid), procs.cpu_s()
        began = time.time()
        store = job_store(infra.redis_url, infra.redis_prefix)
        requests = ai_requests(args.jobs)
        ids = [r.id for r in requests]
        await record_and_publish(infra.rabbitmq_url, store, requests)
        published = time.time()
        rss_peak = rss_before
        deadline = time.monotonic() + args.llm_latency_s * 4 + 60
        while True:
            rss_peak = max(rss_peak, process_rss_mb(worker.pid))
            found = await statuses(store, ids)
            counts = {s: list(found.values()).count(s) for s in set(found.values())}
            if sum(counts.get(s, 0) for s in TERMINAL) >= args.jobs:
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        await store.aclose()
        finished = time.time()
        cpu_used = process_cpu_s(worker.pid) - cpu_before
        groups_after = procs.cpu_s()
        cpu_by_process = {k: groups_after[k] - groups_before.get(k, 0) for k in groups_after}
        await asyncio.sleep(1)  # one more runtime sample after the burst of completions
        stop.set()
        runtime_samples = await scraper
        worker.stop()
        samples: list[list[float]] = json.loads(samples_path.read_text())

    n = args.jobs
    window = [s for s in samples if began <= s[0] <= finished + 0.5]
    peak = max((int(s[2]) for s in window), default=0)
    full = [s[0] for s in window if s[2] >= n]
    first_full, last_full = (full[0], full[-1]) if full else (finished, finished)

    def lag_ms(chosen: list[list[float]]) -> dict[str, float]:
        return latency_summary([1000 * max(0.0, s[1]) for s in chosen])

    phases = {
        f"ramp-up: {n} deliveries arrive at once, calls open": [
            s for s in window if s[0] < first_full
        ],
        f"holding: all {n} calls in flight": [s for s in window if s[2] >= n],
        f"drain: {n} answers arrive within a few ms, jobs complete": [
            s for s in window if s[0] > last_full
        ],
        "whole run": window,
    }
    rows = []
    for name, chosen in phases.items():
        summary = lag_ms(chosen)
        rows.append(
            {
                "phase (bench probe)": name,
                "seconds": len(chosen) * args.sample_ms / 1000,
                "samples": summary["n"],
                "lag_p50_ms": summary["p50"],
                "lag_p99_ms": summary["p99"],
                "lag_max_ms": summary["max"],
            }
        )
    runtime = latency_summary(
        [1000 * lag for at, lag in runtime_samples if began <= at <= finished + 1]
    )
    rows.append(
        {
            "phase (bench probe)": "whole run, runtime metric (2 samples/s)",
            "seconds": finished - began,
            "samples": runtime["n"],
            "lag_p50_ms": runtime["p50"],
            "lag_p99_ms": runtime["p99"],
            "lag_max_ms": runtime["max"],
        }
    )
    hold = lag_ms(phases[f"holding: all {n} calls in flight"])
    bursts = max(rows[0]["lag_max_ms"], rows[2]["lag_max_ms"])
    completed = counts.get("completed", 0)
    ok = completed == n and peak >= n
    figures = [
        Figure(
            "ai worker: LLM calls in flight at once (one process)",
            float(peak),
            "calls",
            f"{n}",
            ok,
            note=f"{completed}/{n} completed in {finished - began:.1f}s "
            f"(each call {args.llm_latency_s:g}s); worker CPU {cpu_used:.1f}s",
        ),
        Figure(
            f"ai worker: loop lag max while holding {n} calls",
            hold["max"],
            "ms",
            f"< {TARGET_LAG_MS:g} ms",
            ok and hold["n"] > 0 and hold["max"] < TARGET_LAG_MS,
            note=f"probe every {args.sample_ms:g} ms, {hold['n']} samples",
        ),
        Figure(
            f"ai worker: loop lag max, {n} arriving / answered at the same instant",
            bursts,
            "ms",
            f"< {TARGET_LAG_MS:g} ms",
            ok and bursts < TARGET_LAG_MS,
            note="synthetic worst case: every delivery in one burst, every answer in the same ms",
        ),
    ]
    # Lag and calls in flight over time, in 0.5 s bins, for the docs.
    timeline: list[dict[str, float]] = []
    for s in window:
        t = round((s[0] - began) * 2) / 2
        if not timeline or timeline[-1]["t_s"] != t:
            timeline.append({"t_s": t, "in_flight": 0, "lag_max_ms": 0.0})
        timeline[-1]["in_flight"] = max(timeline[-1]["in_flight"], s[2])
        timeline[-1]["lag_max_ms"] = max(timeline[-1]["lag_max_ms"], 1000 * max(0.0, s[1]))
    report(
        "ai_scale",
        rows,
        figures,
        jobs=n,
        llm_latency_s=args.llm_latency_s,
        peak_in_flight=peak,
        completed=completed,
        statuses=counts,
        publish_s=published - began,
        all_done_s=finished - began,
        worker_cpu_s=cpu_used,
        worker_rss_mb={"before": rss_before, "peak": rss_peak},
        worker_rss_per_call_kb=1024 * (rss_peak - rss_before) / max(n, 1),
        cpu_s_by_process=cpu_by_process,
        timeline=timeline,
    )
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--llm-latency-s", type=float, default=5)
    parser.add_argument("--sample-ms", type=float, default=20)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import uvloop

        uvloop.run(_worker_main(args.samples, args.sample_ms / 1000))
        return
    sys.exit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
