"""The promise: a light request stays fast while heavy work runs.

    uv run python -m bench.promise [--llm-jobs 100] [--llm-latency-s 5] [--image-jobs 20]
                                   [--research-jobs 10] [--submit-rate 50] [--rate 50]
                                   [--idle-s 15] [--only baseline|offload] [--workers-nice 0]

Two systems get the same heavy load, one after the other, against the same
sandbox LLM (each call takes `--llm-latency-s`):

- the baseline (`bench/baseline_app.py`): one FastAPI process doing the work in
  the request: the LLM call awaited, Pillow in the handler, research calls chained;
- Offload: gateway + ai, research and image workers, as `make run` starts them.

The heavy jobs arrive `--submit-rate` a second, interleaved by type, the same
for both (a burst of simultaneous submissions measures the gateway's submit
throughput instead, which is `bench.gateway_submit`'s figure).

Meanwhile a probe (its own client and connections) reads the light endpoint,
`GET /v1/jobs/{id}`, at a fixed rate, open loop: first idle, then for as long
as the heavy load takes. Reported: the light request's p50/p99 idle and under
load, and the ratio. Target: Offload's p99 under load ≤ 1.5× its idle p99.

Beside each system, the same probe reads the same record from an idle process
(a copy of the baseline app that gets no work): the floor, what the busy
machine costs any process, measured at the same moments.
"""

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench.cpu import MachineCpu
from bench.infra import BenchInfra, bench_infra
from bench.probe import ProbeResult, probe
from bench.report import Figure, report
from bench.services import (
    AUTH,
    MissingService,
    Processes,
    free_port,
    offload_env,
    require,
)
from bench.stats import latency_summary
from bench.workload import HeavyLoad, photo_like_jpeg
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis

T = TypeVar("T")
TARGET_RATIO = 1.5
TERMINAL = {"completed", "failed", "cancelled"}


@dataclass
class Measured:
    system: str
    idle: ProbeResult
    load: ProbeResult
    load_s: float
    jobs: int
    jobs_failed: int
    cpu_s: dict[str, float]
    machine_busy: float
    ref_idle: ProbeResult
    ref_load: ProbeResult

    def row(self) -> dict[str, Any]:
        idle, load = (
            latency_summary(self.idle.latencies_ms),
            latency_summary(self.load.latencies_ms),
        )
        ref_idle, ref_load = (
            latency_summary(self.ref_idle.latencies_ms),
            latency_summary(self.ref_load.latencies_ms),
        )
        return {
            "system": self.system,
            "idle_p50_ms": idle["p50"],
            "idle_p99_ms": idle["p99"],
            "load_p50_ms": load["p50"],
            "load_p99_ms": load["p99"],
            "load_max_ms": load["max"],
            "p99_ratio": load["p99"] / idle["p99"],
            "probes_idle": idle["n"],
            "probes_load": load["n"],
            "probe_errors": self.idle.errors + self.load.errors,
            "heavy_jobs": self.jobs,
            "heavy_failed": self.jobs_failed,
            "heavy_wall_s": self.load_s,
            "machine_busy_%": 100 * self.machine_busy,
            "floor_idle_p99_ms": ref_idle["p99"],
            "floor_load_p99_ms": ref_load["p99"],
            "floor_p99_ratio": ref_load["p99"] / ref_idle["p99"],
        }


# --------------------------------------------------------------------------- the systems


class Baseline:
    """The baseline: every `POST /v1/jobs` answers when its work is done."""

    name = "baseline (work in the request)"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def upload(self, session: aiohttp.ClientSession, data: bytes) -> str:
        async with session.post(f"{self.base_url}/v1/files", data=data, headers=AUTH) as resp:
            resp.raise_for_status()
            return str((await resp.json())["id"])

    async def run(
        self, session: aiohttp.ClientSession, bodies: list[dict[str, Any]], rate: float = 0
    ) -> int:
        """Submit every job (`rate` a second, 0 = at once) and wait for all; how many failed."""

        async def one(body: dict[str, Any]) -> bool:
            async with session.post(f"{self.base_url}/v1/jobs", json=body, headers=AUTH) as resp:
                await resp.read()
                return resp.status == 200

        results = await asyncio.gather(*paced(one, bodies, rate), return_exceptions=True)
        return sum(1 for r in results if r is not True)

    async def light_job(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> str:
        async with session.post(f"{self.base_url}/v1/jobs", json=body, headers=AUTH) as resp:
            resp.raise_for_status()
            return str((await resp.json())["id"])


class Offload:
    """Offload: `POST /v1/jobs` answers 202 at once; completion is read from the job store."""

    name = "offload (gateway + workers)"

    def __init__(self, base_url: str, infra: BenchInfra) -> None:
        self.base_url = base_url
        self.keys = RedisKeys(infra.redis_prefix)
        self.redis = connect_redis(infra.redis_url)

    async def upload(self, session: aiohttp.ClientSession, data: bytes) -> str:
        form = aiohttp.FormData()
        form.add_field("file", data, filename="photo.jpg", content_type="image/jpeg")
        async with session.post(f"{self.base_url}/v1/files", data=form, headers=AUTH) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"upload: {resp.status} {await resp.text()}")
            return str((await resp.json())["id"])

    async def submit(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> str:
        async with session.post(f"{self.base_url}/v1/jobs", json=body, headers=AUTH) as resp:
            if resp.status != 202:
                raise RuntimeError(f"submit: {resp.status} {await resp.text()}")
            return str((await resp.json())["id"])

    async def wait_all(self, ids: list[str], timeout_s: float = 600) -> int:
        """Poll the job store (not the gateway, which is being measured) until all finish."""
        deadline = time.monotonic() + timeout_s
        left = set(ids)
        failed = 0
        while left:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(left)} jobs unfinished after {timeout_s:g}s")
            batch = list(left)
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in batch:
                    pipe.hget(self.keys.job(job_id), "status")
                statuses = await pipe.execute()
            for job_id, status in zip(batch, statuses, strict=True):
                if status in TERMINAL:
                    left.discard(job_id)
                    failed += status != "completed"
            await asyncio.sleep(0.25)
        return failed

    async def run(
        self, session: aiohttp.ClientSession, bodies: list[dict[str, Any]], rate: float = 0
    ) -> int:
        async def one(body: dict[str, Any]) -> str:
            return await self.submit(session, body)

        ids = await asyncio.gather(*paced(one, bodies, rate))
        return await self.wait_all(list(ids))

    async def light_job(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> str:
        job_id = await self.submit(session, body)
        await self.wait_all([job_id])
        return job_id

    async def close(self) -> None:
        await self.redis.aclose()


def paced(
    one: Callable[[dict[str, Any]], Awaitable[T]], bodies: list[dict[str, Any]], rate: float
) -> list[Awaitable[T]]:
    """`one(body)` for every body, the k-th started k / rate seconds from now (0: all now).

    Both systems get the same arrival pattern: a steady stream of heavy jobs, not
    130 requests in the same millisecond (a submit burst is gateway_submit's figure).
    """
    if rate <= 0:
        return [one(body) for body in bodies]

    async def later(delay: float, body: dict[str, Any]) -> T:
        await asyncio.sleep(delay)
        return await one(body)

    return [later(k / rate, body) for k, body in enumerate(bodies)]


# --------------------------------------------------------------------------- measuring


async def start_floor(procs: Processes, env: dict[str, str], infra: BenchInfra) -> str:
    """The machine's floor: an idle FastAPI process doing the same Redis read, no work sent to it.

    Probed at the same time as the system under test, it shows how much of a
    light request's slowdown comes from the machine being busy (two shared
    cores) rather than from the system itself.
    """
    port = free_port()
    prefix = f"{infra.redis_prefix}floor:"
    floor = procs.module(
        "floor",
        "bench.baseline_app",
        {
            **env,
            "BASELINE_PORT": str(port),
            "BASELINE_REDIS_URL": infra.redis_url,
            "BASELINE_REDIS_PREFIX": prefix,
            "BASELINE_FILES_DIR": tempfile.gettempdir(),
        },
    )
    base = f"http://127.0.0.1:{port}"
    await floor.wait_http(f"{base}/healthz")
    redis = connect_redis(infra.redis_url)
    try:
        await redis.hset(
            f"{prefix}job:light",
            mapping={"id": "light", "type": "ai.generate", "status": "completed", "result": "{}"},
        )
    finally:
        await redis.aclose()
    return f"{base}/v1/jobs/light"


async def probe_both(
    url: str, floor_url: str, rate: float, stop: asyncio.Event
) -> tuple[ProbeResult, ProbeResult]:
    return await asyncio.gather(
        probe(url, headers=AUTH, rate_per_s=rate, stop=stop),
        probe(floor_url, headers=AUTH, rate_per_s=rate, stop=stop),
    )


async def measure(
    system: Baseline | Offload,
    args: argparse.Namespace,
    image: bytes,
    procs: Processes,
    floor_url: str,
) -> Measured:
    load = HeavyLoad(args.llm_jobs, args.image_jobs, args.research_jobs, args.research_steps)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        file_id = await system.upload(session, image)
        # Warm-up: one job of each quick type (imports, pools, connections), and
        # the completed job whose record the probe reads.
        warm = HeavyLoad(llm_jobs=1, image_jobs=1, research_jobs=0).bodies(file_id)
        failed = await system.run(session, warm)
        if failed:
            raise RuntimeError(f"{system.name}: warm-up jobs failed")
        light_id = await system.light_job(
            session, {"type": "ai.generate", "input": {"prompt": "hello", "max_tokens": 1}}
        )
        url = f"{system.base_url}/v1/jobs/{light_id}"
        print(f"  {system.name}: idle probe, {args.idle_s:g}s at {args.rate:g}/s", flush=True)
        stop_idle = asyncio.Event()
        idle_probes = asyncio.create_task(probe_both(url, floor_url, args.rate, stop_idle))
        await asyncio.sleep(args.idle_s)
        stop_idle.set()
        idle, floor_idle = await idle_probes

        bodies = load.bodies(file_id)
        print(f"  {system.name}: {len(bodies)} heavy jobs, probing meanwhile", flush=True)
        stop = asyncio.Event()
        prober = asyncio.create_task(probe_both(url, floor_url, args.rate, stop))
        began, cpu_before, machine_before = time.perf_counter(), procs.cpu_s(), MachineCpu.now()
        try:
            failed = await system.run(session, bodies, args.submit_rate)
        finally:
            wall = time.perf_counter() - began
            stop.set()
            under_load, floor_load = await prober
        cpu_after, machine_after = procs.cpu_s(), MachineCpu.now()
    cpu = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    busy = machine_after.busy_since(machine_before)
    return Measured(
        system.name, idle, under_load, wall, len(bodies), failed, cpu, busy, floor_idle, floor_load
    )


async def run_baseline(args: argparse.Namespace, infra: BenchInfra, image: bytes) -> Measured:
    with Processes("promise-baseline") as procs, tempfile.TemporaryDirectory() as files:
        env = offload_env(infra, Path(files))
        _, llm_url = await procs.sandbox(env, ttft_ms=args.llm_latency_s * 1000)
        port = free_port()
        baseline = procs.module(
            "baseline",
            "bench.baseline_app",
            {
                **env,
                "BASELINE_PORT": str(port),
                "BASELINE_LLM_BASE_URL": llm_url,
                "BASELINE_REDIS_URL": infra.redis_url,
                "BASELINE_REDIS_PREFIX": f"{infra.redis_prefix}baseline:",
                "BASELINE_FILES_DIR": files,
            },
        )
        base = f"http://127.0.0.1:{port}"
        await baseline.wait_http(f"{base}/healthz")
        floor_url = await start_floor(procs, env, infra)
        return await measure(Baseline(base), args, image, procs, floor_url)


async def run_offload(args: argparse.Namespace, infra: BenchInfra, image: bytes) -> Measured:
    require("gateway", "ai", "research", "image")
    with Processes("promise-offload") as procs, tempfile.TemporaryDirectory() as files:
        env = offload_env(infra, Path(files))
        _, llm_url = await procs.sandbox(env, ttft_ms=args.llm_latency_s * 1000)
        env["OFFLOAD_LLM_BASE_URL"] = llm_url
        _, gateway = await procs.gateway(env)
        # Enough concurrency that every heavy job is in flight at once, as in the baseline.
        nice = args.workers_nice
        await procs.worker(
            "ai",
            {**env, "OFFLOAD_CONCURRENCY": str(args.llm_jobs + 1)},
            infra.rabbitmq_url,
            nice=nice,
        )
        await procs.worker(
            "research",
            {**env, "OFFLOAD_CONCURRENCY": str(max(args.research_jobs, 1))},
            infra.rabbitmq_url,
            nice=nice,
        )
        await procs.worker("image", env, infra.rabbitmq_url, nice=nice)
        floor_url = await start_floor(procs, env, infra)
        system = Offload(gateway, infra)
        try:
            return await measure(system, args, image, procs, floor_url)
        finally:
            await system.close()


async def _main(args: argparse.Namespace) -> int:
    image = photo_like_jpeg(Path(tempfile.gettempdir()) / "offload-bench-4000x3000.jpg")
    results: list[Measured] = []
    missing = ""
    with bench_infra("promise") as infra:
        if args.only in (None, "baseline"):
            results.append(await run_baseline(args, infra, image))
        if args.only in (None, "offload"):
            try:
                results.append(await run_offload(args, infra, image))
            except MissingService as exc:
                missing = f"Offload not measured: {exc}"
                print(missing, file=sys.stderr)

    rows = [m.row() for m in results]
    by_system = {m.system.split()[0]: row for m, row in zip(results, rows, strict=True)}
    figures: list[Figure] = []
    base = by_system.get("baseline")
    off = by_system.get("offload")
    reference = (
        f"baseline {base['p99_ratio']:.1f}× "
        f"({base['idle_p99_ms']:.1f} → {base['load_p99_ms']:.0f} ms)"
        if base
        else ""
    )
    if off:
        figures.append(
            Figure(
                "light GET p99 under load / idle (offload)",
                off["p99_ratio"],
                "×",
                target=f"≤ {TARGET_RATIO}×",
                met=off["p99_ratio"] <= TARGET_RATIO and off["heavy_failed"] == 0,
                reference=reference,
                note=f"idle p99 {off['idle_p99_ms']:.1f} ms, load p99 {off['load_p99_ms']:.1f} ms",
            )
        )
        figures.append(
            Figure(
                "same GET, idle process on the same machine, during Offload's load (floor)",
                off["floor_p99_ratio"],
                "×",
                note=f"idle p99 {off['floor_idle_p99_ms']:.1f} ms, "
                f"load p99 {off['floor_load_p99_ms']:.1f} ms: what two busy cores cost any process",
            )
        )
    else:
        figures.append(
            Figure(
                "light GET p99 under load / idle (offload)",
                None,
                "×",
                target=f"≤ {TARGET_RATIO}×",
                met=False,
                reference=reference,
                note=missing,
            )
        )
    if base:
        figures.append(Figure("light GET p99 under load / idle (baseline)", base["p99_ratio"], "×"))
    report(
        "promise",
        rows,
        figures,
        load={
            "submitted_per_s": args.submit_rate,
            "llm_jobs": args.llm_jobs,
            "llm_latency_s": args.llm_latency_s,
            "image_jobs": args.image_jobs,
            "image": "4000x3000 JPEG → 1920w + 2 thumbnails, WebP q80",
            "research_jobs": args.research_jobs,
            "research_steps": args.research_steps,
        },
        probe={"rate_per_s": args.rate, "idle_s": args.idle_s, "endpoint": "GET /v1/jobs/{id}"},
        workers_nice=args.workers_nice,
        cpu_s_during_load={m.system: m.cpu_s for m in results},
        missing=missing or None,
    )
    for m in results:
        used = ", ".join(f"{name} {sec:.1f}" for name, sec in sorted(m.cpu_s.items()))
        print(
            f"  CPU seconds during the load, {m.system}: {used} (of {2 * m.load_s:.0f} available)"
        )
    return 2 if missing else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--llm-jobs", type=int, default=100)
    parser.add_argument("--llm-latency-s", type=float, default=5)
    parser.add_argument("--image-jobs", type=int, default=20)
    parser.add_argument("--research-jobs", type=int, default=10)
    parser.add_argument("--research-steps", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50, help="light requests per second")
    parser.add_argument(
        "--submit-rate", type=float, default=50, help="heavy jobs submitted per second (0: at once)"
    )
    parser.add_argument("--idle-s", type=float, default=15)
    parser.add_argument("--only", choices=["baseline", "offload"])
    parser.add_argument(
        "--workers-nice",
        type=int,
        default=0,
        help="run Offload's workers at this niceness (0, as `make run` does): on a shared "
        "machine, what separate containers or hosts would give the gateway",
    )
    sys.exit(asyncio.run(_main(parser.parse_args())))


if __name__ == "__main__":
    main()
