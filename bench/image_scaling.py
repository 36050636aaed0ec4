"""Image jobs throughput with 1, 2 and 4 worker processes on this machine.

    uv run python -m bench.image_scaling [--jobs 16] [--processes 1,2,4] [--size 4000x3000]

Each configuration runs N image worker processes, each with a Pillow pool of one
process (`OFFLOAD_IMAGE_POOL_SIZE=1`), so N is the number of processes doing
Pillow work. A last row runs one worker with its default pool (one Pillow
process per core), the configuration `make run` starts. The jobs are recorded
and published straight to the queue, all at once; the same source (a
photo-like JPEG) and operations as the promise benchmark: a 1920-wide copy and
two thumbnails, as WebP.

Reported per configuration: jobs/s (first publish to last completion), CPU
seconds per job of the image services (workers + pools), and how busy the
machine's cores were. Pillow work is CPU-bound and releases no core to
anyone else, so throughput stops growing once every core is busy.
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.cpu import MachineCpu
from bench.infra import BenchInfra, bench_infra
from bench.report import Figure, report
from bench.services import TENANT, MissingService, Processes, offload_env, require
from bench.submit import job_store, record_and_publish, statuses, wait_finished
from bench.workload import IMAGE_OPERATIONS, photo_like_jpeg
from offload_contracts import ImageProcessInput, ImageProcessRequest
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis
from offload_runtime.storage import FileStore
from offload_runtime.store import new_id

CORES = os.cpu_count() or 1


def requests_for(file_id: str, jobs: int) -> list[ImageProcessRequest]:
    spec = ImageProcessInput.model_validate(
        {"source": {"file_id": file_id}, "operations": IMAGE_OPERATIONS}
    )
    return [
        ImageProcessRequest(
            id=new_id(), tenant=TENANT, max_attempts=3, created_at=datetime.now(UTC), input=spec
        )
        for _ in range(jobs)
    ]


async def one_configuration(
    infra: BenchInfra, image: bytes, workers: int, pool_size: int | None, jobs: int
) -> dict[str, Any]:
    with (
        Processes(f"image-scaling-{workers}x{pool_size}") as procs,
        tempfile.TemporaryDirectory() as storage,
    ):
        extra = {} if pool_size is None else {"OFFLOAD_IMAGE_POOL_SIZE": pool_size}
        env = offload_env(infra, Path(storage), **extra)
        for index in range(workers):
            await procs.worker("image", env, infra.rabbitmq_url, index=index)
        store = job_store(infra.redis_url, infra.redis_prefix)
        files_redis = connect_redis(infra.redis_url)
        files = FileStore(Path(storage), files_redis, RedisKeys(infra.redis_prefix))
        source = await files.save_bytes(TENANT, image, "image/jpeg")
        try:
            # Warm-up: every pool process started and has decoded once.
            warm = requests_for(source.id, max(2, workers * (pool_size or CORES)))
            await record_and_publish(infra.rabbitmq_url, store, warm)
            await wait_finished(store, [r.id for r in warm], timeout_s=120)

            batch = requests_for(source.id, jobs)
            ids = [r.id for r in batch]
            cpu_before, machine_before = procs.cpu_s(), MachineCpu.now()
            began = time.perf_counter()
            await record_and_publish(infra.rabbitmq_url, store, batch)
            done = await wait_finished(store, ids, timeout_s=600, poll_s=0.05)
            wall = max(done.values()) - began
            cpu_after, machine_after = procs.cpu_s(), MachineCpu.now()
            found = await statuses(store, ids)
        finally:
            await store.aclose()
            await files_redis.aclose()
    failed = sum(1 for s in found.values() if s != "completed")
    image_cpu = sum(cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after)
    return {
        "worker_processes": workers,
        "pool_per_worker": pool_size if pool_size is not None else "default (cores)",
        "pillow_processes": workers * (pool_size or CORES),
        "jobs": jobs,
        "failed": failed,
        "wall_s": wall,
        "jobs_per_s": jobs / wall,
        "image_cpu_s_per_job": image_cpu / jobs,
        # Cores' worth of CPU the image processes got; the rest went to everyone else.
        "image_cores_used": image_cpu / wall,
        "machine_busy_%": 100 * machine_after.busy_since(machine_before),
    }


async def _main(args: argparse.Namespace) -> int:
    try:
        require("image")
    except MissingService as exc:
        print(f"image_scaling: not run: {exc}", file=sys.stderr)
        report(
            "image_scaling",
            [],
            [Figure("image jobs/s, 1 → 2 → 4 worker processes", None, "", note=str(exc))],
            missing=str(exc),
        )
        return 2
    width, height = (int(v) for v in args.size.split("x"))
    image = photo_like_jpeg(
        Path(tempfile.gettempdir()) / f"offload-bench-{width}x{height}.jpg", width, height
    )
    counts = [int(n) for n in args.processes.split(",")]
    rows = []
    with bench_infra("image-scaling") as infra:
        for n in counts:
            print(f"  {n} image worker process(es), pool of 1 each", flush=True)
            rows.append(await one_configuration(infra, image, n, 1, args.jobs))
        print("  1 image worker process, default pool", flush=True)
        rows.append(await one_configuration(infra, image, 1, None, args.jobs))

    base = rows[0]["jobs_per_s"]
    for row in rows:
        row["speed-up"] = row["jobs_per_s"] / base
    scaling = " → ".join(f"{row['jobs_per_s']:.2f}" for row in rows[: len(counts)])
    ok = all(row["failed"] == 0 for row in rows)
    figures = [
        Figure(
            f"image jobs/s, best of {' / '.join(str(n) for n in counts)} worker processes",
            max(row["jobs_per_s"] for row in rows),
            "jobs/s",
            target="report (how it scales, why it stops)",
            met=None if ok else False,
            reference=scaling,
            note=f"{width}×{height} JPEG → 1920w + 2 thumbnails, WebP; "
            f"{rows[0]['image_cpu_s_per_job']:.2f} CPU s/job with one process",
        )
    ]
    report(
        "image_scaling",
        rows,
        figures,
        image=f"{width}x{height} JPEG",
        operations=IMAGE_OPERATIONS,
        cores=CORES,
    )
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--size", default="4000x3000")
    sys.exit(asyncio.run(_main(parser.parse_args())))


if __name__ == "__main__":
    main()
