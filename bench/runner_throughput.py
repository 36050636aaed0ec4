"""One worker process draining N pre-published no-op jobs, every transition and event included.

    uv run python -m bench.runner_throughput [--jobs 20000] [--concurrency 100] [--runs 3]
        [--redis-url URL] [--cluster]

Prints jobs/s and the worker's CPU per job (median of the runs). The worker runs
in its own process (uvloop), exactly as a service does: `build_worker` with a
no-op handler; the publisher and the checks run in this process.

The Redis is `OFFLOAD_REDIS_URL`'s, or `--redis-url` (one node, or a Redis
Cluster as `redis+cluster://host:port,...`). With `--cluster`, the same runs
follow on a Redis Cluster of 3 masters and 3 replicas started for the purpose
(tests/support/clusters.py) and stopped after: its jobs/s against the single
node's (target: at least 0.8×).
"""

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from typing import Any

from bench.infra import bench_infra
from bench.noop import HANDLER, NOOP, SERVICE, NoopInput
from bench.report import Figure, report
from offload_contracts import topology
from offload_runtime.broker import declare_service_topology, make_broker, queue_counts
from offload_runtime.keys import RedisKeys
from offload_runtime.metrics import JOBS
from offload_runtime.redis import connect_redis
from offload_runtime.settings import WorkerSettings
from offload_runtime.store import JobStore, new_id

CLUSTER_TARGET = 0.8
"""A Redis Cluster should keep at least this share of one node's jobs/s."""

# --------------------------------------------------------------------------- worker process


async def _worker_main(jobs: int) -> None:
    from offload_runtime.worker import build_worker

    settings = WorkerSettings()  # from the environment the parent set
    worker = build_worker(service=SERVICE, settings=settings, handlers=[HANDLER])
    completed = JOBS.labels("bench.noop", "completed")
    await worker.app.start()
    # The clock starts at the first completion (connection set-up excluded), so
    # the figures cover jobs - 1 completions.
    while completed._value.get() == 0:
        await asyncio.sleep(0.0005)
    began_wall, began_cpu, first = time.perf_counter(), _cpu(), completed._value.get()
    while completed._value.get() < jobs:
        await asyncio.sleep(0.001)
    wall, cpu = time.perf_counter() - began_wall, _cpu() - began_cpu
    await worker.app.stop()
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "measured": jobs - first}), flush=True)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- driver


async def _prepublish(settings: WorkerSettings, jobs: int) -> JobStore:
    store = JobStore(
        connect_redis(settings.redis_url),
        RedisKeys(settings.redis_prefix),
        retention_s=3600,
    )
    broker = make_broker(settings.rabbitmq_url, service="bench-publisher")
    await broker.connect()
    await declare_service_topology(
        broker, SERVICE, settings.tiers, delivery_limit=settings.delivery_limit
    )
    import aio_pika

    connection = await aio_pika.connect(settings.rabbitmq_url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(topology.JOBS_EXCHANGE)
    batch = 500
    for start in range(0, jobs, batch):
        requests = [
            NOOP.request(
                type=NOOP.type,
                id=new_id(),
                tenant="bench",
                max_attempts=3,
                created_at=datetime.now(UTC),
                input=NoopInput(n=i),
            )
            for i in range(start, min(start + batch, jobs))
        ]
        await asyncio.gather(*(store.create(r) for r in requests))
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        r.model_dump_json().encode(),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=f"{SERVICE}.noop",
                )
                for r in requests
            )
        )
    await connection.close()
    await broker.stop()
    return store


async def _one_run(
    jobs: int, concurrency: int, wrap: Sequence[str] = (), *, redis_url: str | None = None
) -> dict[str, float]:
    """One run; `wrap` prefixes the worker's command line (a profiler, for bench.profile)."""
    with bench_infra("runner", redis_url=redis_url) as infra:
        env = {
            **os.environ,
            "OFFLOAD_RABBITMQ_URL": infra.rabbitmq_url,
            "OFFLOAD_REDIS_URL": infra.redis_url,
            "OFFLOAD_REDIS_PREFIX": infra.redis_prefix,
            "OFFLOAD_CONCURRENCY": str(concurrency),
            "OFFLOAD_LOG_LEVEL": "warning",
            "OFFLOAD_RETRY_TIERS": "1s",
        }
        settings = WorkerSettings(
            rabbitmq_url=infra.rabbitmq_url,
            redis_url=infra.redis_url,
            redis_prefix=infra.redis_prefix,
            retry_tiers="1s",
        )
        store = await _prepublish(settings, jobs)
        done = await asyncio.to_thread(
            subprocess.run,
            [
                *wrap,
                sys.executable,
                "-m",
                "bench.runner_throughput",
                "--worker",
                "--jobs",
                str(jobs),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"worker failed: {done.stderr[-2000:]}")
        # The last JSON line: a profiler wrapping the worker may print after it.
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        figures = json.loads(lines[-1])
        # Every job must have gone through queued → started → completed, all recorded.
        keys = RedisKeys(settings.redis_prefix)
        redis = connect_redis(settings.redis_url)
        outbox = sum([int(await redis.xlen(keys.outbox(shard))) for shard in keys.all_shards])
        await redis.aclose()
        await store.aclose()
        if outbox != 3 * jobs:
            raise RuntimeError(f"expected {3 * jobs} events in the outbox, found {outbox}")
        left = await _queue_depth(settings.rabbitmq_url, topology.work_queue(SERVICE))
        if left:
            raise RuntimeError(f"{left} messages left in the work queue: not all were acked")
        return figures


async def _queue_depth(url: str, name: str) -> int:
    broker = make_broker(url, service="bench-checker")
    try:
        ready, _consumers = await queue_counts(broker, name)
        return ready
    finally:
        await broker.stop()


@contextmanager
def local_redis_cluster() -> Iterator[str]:
    """A Redis Cluster of 3 masters and 3 replicas on free ports; its `redis+cluster://` URL."""
    from tests.support.clusters import RedisCluster, remove_stale

    remove_stale()  # what a killed run left behind
    cluster = RedisCluster()
    try:
        cluster.start()
        yield "redis+cluster://" + ",".join(cluster.addresses)
    finally:
        cluster.stop()


def _rows(redis: str, runs: list[dict[str, float]], jobs: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {
            "redis": redis,
            "run": i + 1,
            "jobs": jobs,
            "jobs_per_s": r["measured"] / r["wall_s"],
            "worker_cpu_ms_per_job": 1000 * r["cpu_s"] / r["measured"],
        }
        for i, r in enumerate(runs)
    ]
    rows.append(
        {
            "redis": redis,
            "run": "median",
            "jobs": jobs,
            "jobs_per_s": statistics.median(row["jobs_per_s"] for row in rows),
            "worker_cpu_ms_per_job": statistics.median(r["worker_cpu_ms_per_job"] for r in rows),
        }
    )
    return rows


async def _main(args: argparse.Namespace) -> int:
    load_before = os.getloadavg()
    where = "single Redis" if args.redis_url is None else args.redis_url
    single: list[dict[str, float]] = []
    on_cluster: list[dict[str, float]] = []
    cluster_error = ""
    with ExitStack() as stack:
        cluster_url = None
        if args.cluster:
            try:
                cluster_url = stack.enter_context(local_redis_cluster())
            except Exception as exc:
                cluster_error = f"the Redis Cluster did not start: {exc}"
        # Runs alternate between the two, so a change in the machine's load meets both.
        for _ in range(args.runs):
            single.append(await _one_run(args.jobs, args.concurrency, redis_url=args.redis_url))
            if cluster_url is not None and not cluster_error:
                print(f"  on the Redis Cluster {cluster_url}", flush=True)
                try:
                    on_cluster.append(
                        await _one_run(args.jobs, args.concurrency, redis_url=cluster_url)
                    )
                except Exception as exc:  # a figure that could not be measured, in the table
                    cluster_error = f"{type(exc).__name__}: {exc}"
    rows = _rows(where, single, args.jobs)
    median = rows[-1]
    figures = [
        Figure(
            "runner: tiny jobs/s, one worker process",
            median["jobs_per_s"],
            "jobs/s",
            target="≥ 1,000 jobs/s",
            met=median["jobs_per_s"] >= 1000,
            reference="Celery 363, Taskiq 463, BullMQ 4,600",
            note=f"{where}; worker CPU {median['worker_cpu_ms_per_job']:.2f} ms/job",
        )
    ]
    if args.cluster:
        name = "runner: tiny jobs/s, one worker process, Redis Cluster (3+3)"
        target = f"≥ {CLUSTER_TARGET:g}× single ({CLUSTER_TARGET * median['jobs_per_s']:,.0f})"
        if cluster_error:
            print(f"runner_throughput: on the Redis Cluster: {cluster_error}", file=sys.stderr)
            figures.append(Figure(name, None, "jobs/s", target, False, note=cluster_error[:200]))
        else:
            rows += _rows("Redis Cluster (3 masters, 3 replicas)", on_cluster, args.jobs)
            ratio = rows[-1]["jobs_per_s"] / median["jobs_per_s"]
            figures.append(
                Figure(
                    name,
                    rows[-1]["jobs_per_s"],
                    "jobs/s",
                    target,
                    ratio >= CLUSTER_TARGET,
                    reference=f"{ratio:.2f}× the single Redis's {median['jobs_per_s']:,.0f}",
                    note=f"worker CPU {rows[-1]['worker_cpu_ms_per_job']:.2f} ms/job",
                )
            )
    report(
        "runner_throughput",
        rows,
        figures,
        target_jobs_per_s=1000,
        cluster_target_ratio=CLUSTER_TARGET,
        concurrency=args.concurrency,
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
        note="one worker process (uvloop), quorum queue, 2 Lua transitions + 2 outbox events/job",
    )
    return 1 if cluster_error else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--redis-url",
        default=None,
        help="one node (redis://) or a Redis Cluster (redis+cluster://host:port,...); "
        "default OFFLOAD_REDIS_URL",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also run on a local Redis Cluster (3 masters, 3 replicas) and compare",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import uvloop

        uvloop.run(_worker_main(args.jobs))
    else:
        sys.exit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
