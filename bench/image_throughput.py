"""Images per second through the whole path, against raw Pillow in a process pool.

    uv run python -m bench.image_throughput [--images 24] [--rounds 5] [--pool N] [--niceness N]

The corpus: `--images` photo-like JPEGs of 2400×1600 to 3600×2400 (gradients
and grain, so they decode and encode like photos), generated once and kept
under `var/bench-cache/`. Every image gets the same operations, what a
product does with an upload: a 1920-wide copy and two thumbnails, as WebP
(`bench.workload.IMAGE_OPERATIONS`).

- Offload: the gateway and the image worker run as their own processes
  (`python -m offload_gateway`, `python -m offload_image`, the worker's pool
  sized `--pool`), against a private vhost and Redis prefix. The corpus is
  uploaded through `POST /v1/files` first (not timed); then every job is
  submitted at once through `POST /v1/jobs` and the time runs from the first
  submit to the last job's `finished_at`: the stored outputs, recorded.
- Raw Pillow: the same operations written directly against Pillow, run in one
  `ProcessPoolExecutor` of the same size on the same files, writing the same
  outputs to a directory. Its processes run at the same niceness as the
  worker's pool (`--niceness`), so other load on the machine treats both alike.

Each round runs both back to back, alternating which goes first, after a warm-up;
the figure is the median of the rounds' ratios. Target: Offload reaches at least
0.85 of raw Pillow's images/s. CPU seconds per image of both are reported too:
on a machine shared with other work they are steadier than wall-clock rates.
"""

import argparse
import asyncio
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

TARGET_RATIO = 0.85
CORPUS_DIR = Path(__file__).resolve().parents[1] / "var" / "bench-cache" / "image-corpus"


def corpus(count: int) -> list[Path]:
    """`count` photo-like JPEGs of a few sizes, generated once."""
    from bench.workload import photo_like_jpeg

    sizes = [(2400, 1600), (3000, 2000), (3600, 2400), (3000, 2250)]
    paths = []
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        path = CORPUS_DIR / f"photo-{index:03d}-{width}x{height}.jpg"
        photo_like_jpeg(path, width, height)
        paths.append(path)
    return paths


# --------------------------------------------------------------------- raw Pillow


def lower_priority(niceness: int) -> None:
    """Pool initializer: the raw pool runs at the same priority as the worker's pool."""
    if niceness:
        os.nice(niceness)


def raw_pillow(source: str, out_dir: str) -> int:
    """IMAGE_OPERATIONS written directly: 1920 wide, two thumbnails of it, all WebP q80."""
    from PIL import Image

    with Image.open(source) as image:
        image.load()
        width = 1920
        height = round(image.height * width / image.width)
        main = image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    outputs = 0
    for index, box in enumerate((320, 160), start=1):
        scale = min(box / main.width, box / main.height)
        size = (round(main.width * scale), round(main.height * scale))
        thumb = main.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        thumb.save(os.path.join(out_dir, f"thumb-{index}.webp"), "WEBP", quality=80)
        outputs += 1
    main.save(os.path.join(out_dir, "main.webp"), "WEBP", quality=80)
    return outputs + 1


def raw_round(pool: ProcessPoolExecutor, paths: list[Path]) -> tuple[float, float]:
    """Seconds (wall, then pool CPU) for raw Pillow to process every path, all at once."""
    from bench.cpu import process_cpu_s

    pids = list(pool._processes or {})  # the executor's pid → process map; no public accessor
    cpu_before = sum(process_cpu_s(pid) for pid in pids)
    with tempfile.TemporaryDirectory() as scratch:
        dirs = []
        for index in range(len(paths)):
            folder = Path(scratch) / str(index)
            folder.mkdir()
            dirs.append(folder)
        began = time.perf_counter()
        futures = [
            pool.submit(raw_pillow, str(path), str(folder))
            for path, folder in zip(paths, dirs, strict=True)
        ]
        for future in futures:
            future.result()
        wall = time.perf_counter() - began
    return wall, sum(process_cpu_s(pid) for pid in pids) - cpu_before


# --------------------------------------------------------------------- through Offload


async def offload_round(http: Any, file_ids: list[str]) -> float:
    """Seconds from the first `POST /v1/jobs` to the last job's recorded completion."""
    from bench.workload import IMAGE_OPERATIONS

    began = time.time()
    answers = await asyncio.gather(
        *(
            http.post(
                "/v1/jobs",
                json={
                    "type": "image.process",
                    "input": {"source": {"file_id": file_id}, "operations": IMAGE_OPERATIONS},
                },
            )
            for file_id in file_ids
        )
    )
    for answer in answers:
        if answer.status_code != 202:
            raise RuntimeError(f"submit refused: {answer.status_code} {answer.text}")
    job_ids = [answer.json()["id"] for answer in answers]
    finished: list[float] = []
    deadline = time.monotonic() + 600
    for job_id in job_ids:  # in submit order: later ones are usually done by then
        while True:
            job = (await http.get(f"/v1/jobs/{job_id}")).json()
            if job["status"] == "completed":
                finished.append(datetime.fromisoformat(job["finished_at"]).timestamp())
                break
            if job["status"] in ("failed", "cancelled"):
                raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still {job['status']} after 600 s")
            await asyncio.sleep(0.25)  # the time comes from finished_at, not from polling
    return max(finished) - began


async def measure_raw(pool: ProcessPoolExecutor, paths: list[Path]) -> tuple[float, float, float]:
    """Wall seconds, pool CPU seconds, and how busy the machine was (0–1)."""
    from bench.cpu import MachineCpu

    machine = MachineCpu.now()
    wall, cpu = await asyncio.to_thread(raw_round, pool, paths)
    return wall, cpu, MachineCpu.now().busy_since(machine)


async def measure_offload(
    http: Any, file_ids: list[str], procs: Any
) -> tuple[float, dict[str, float], float]:
    """Wall seconds, CPU seconds per service (gateway; image worker with its pool), busy."""
    from bench.cpu import MachineCpu

    cpu_before = procs.cpu_s()
    machine = MachineCpu.now()
    wall = await offload_round(http, file_ids)
    busy = MachineCpu.now().busy_since(machine)
    cpu_after = procs.cpu_s()
    return wall, {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}, busy


async def run(images: int, rounds: int, pool_size: int, niceness: int | None) -> None:
    import httpx

    from bench.infra import bench_infra
    from bench.report import Figure, report
    from bench.services import AUTH, Processes, offload_env

    paths = corpus(images)
    megapixels = sum(_pixels(path) for path in paths) / 1e6
    if niceness is None:
        from offload_image.settings import ImageSettings

        niceness = ImageSettings.model_fields["image_pool_niceness"].default
    assert niceness is not None
    print(
        f"corpus: {len(paths)} JPEGs, {megapixels:.0f} megapixels; pools of {pool_size} "
        f"at niceness {niceness}; {rounds} rounds each"
    )
    rows: list[dict[str, Any]] = []
    context = multiprocessing.get_context("forkserver")
    with (
        bench_infra("image-throughput") as infra,
        tempfile.TemporaryDirectory() as storage,
        Processes("image-throughput") as procs,
        ProcessPoolExecutor(
            pool_size, mp_context=context, initializer=lower_priority, initargs=(niceness,)
        ) as raw_pool,
    ):
        env = offload_env(
            infra,
            Path(storage),
            OFFLOAD_IMAGE_POOL_SIZE=pool_size,
            OFFLOAD_IMAGE_POOL_NICENESS=niceness,
        )
        _, base = await procs.gateway(env)
        await procs.worker("image", env, infra.rabbitmq_url)
        async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60) as http:
            file_ids = []
            for path in paths:
                answer = await http.post(
                    "/v1/files", content=path.read_bytes(), headers={"Content-Type": "image/jpeg"}
                )
                answer.raise_for_status()
                file_ids.append(answer.json()["id"])

            # Warm-up: one job per pool process each way (processes started, plugins loaded).
            await offload_round(http, file_ids[:pool_size])
            raw_round(raw_pool, paths[:pool_size])

            count = len(paths)
            for index in range(rounds):
                # Alternate which goes first, so a load that rises or falls over
                # the run favours neither.
                if index % 2 == 0:
                    raw_s, raw_cpu, raw_busy = await measure_raw(raw_pool, paths)
                    offload_s, offload_cpu, offload_busy = await measure_offload(
                        http, file_ids, procs
                    )
                else:
                    offload_s, offload_cpu, offload_busy = await measure_offload(
                        http, file_ids, procs
                    )
                    raw_s, raw_cpu, raw_busy = await measure_raw(raw_pool, paths)
                rows.append(
                    {
                        "round": index + 1,
                        "raw_pillow_images_per_s": round(count / raw_s, 2),
                        "offload_images_per_s": round(count / offload_s, 2),
                        "ratio": round(raw_s / offload_s, 3),
                        "raw_cpu_s_per_image": round(raw_cpu / count, 3),
                        "offload_cpu_s_per_image": round(sum(offload_cpu.values()) / count, 3),
                        "of_which_gateway": round(offload_cpu.get("gateway", 0.0) / count, 3),
                        "of_which_image_worker": round(offload_cpu.get("image", 0.0) / count, 3),
                        "machine_busy_raw": round(raw_busy, 2),
                        "machine_busy_offload": round(offload_busy, 2),
                    }
                )
                print(
                    f"round {index + 1}: raw Pillow {count / raw_s:.2f} images/s, "
                    f"Offload {count / offload_s:.2f} images/s"
                )

    raw = statistics.median(row["raw_pillow_images_per_s"] for row in rows)
    offload = statistics.median(row["offload_images_per_s"] for row in rows)
    # The median of each round's paired ratio: steadier than a ratio of medians
    # when other work on the machine comes and goes.
    ratio = statistics.median(row["ratio"] for row in rows)
    cpu_raw = statistics.median(row["raw_cpu_s_per_image"] for row in rows)
    cpu_offload = statistics.median(row["offload_cpu_s_per_image"] for row in rows)
    report(
        "image_throughput",
        rows,
        [
            Figure("raw Pillow, process pool", raw, "images/s", note=f"pool of {pool_size}"),
            Figure(
                "Offload: gateway → image worker → stored",
                offload,
                "images/s",
                note=f"pool of {pool_size}",
            ),
            Figure(
                "Offload / raw Pillow (median of rounds)",
                round(ratio, 3),
                "",
                target=f">= {TARGET_RATIO}",
                met=ratio >= TARGET_RATIO,
                reference=f"{raw:.2f} images/s raw",
            ),
            Figure(
                "CPU per image, Offload (gateway + worker + pool)",
                cpu_offload,
                "s",
                reference=f"raw Pillow {cpu_raw:.3f} s",
                note="RabbitMQ and Redis not counted",
            ),
        ],
        images=len(paths),
        megapixels=round(megapixels, 1),
        pool_size=pool_size,
        niceness=niceness,
    )


def _pixels(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return image.width * image.height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24, help="images in the corpus")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds of each")
    parser.add_argument(
        "--pool", type=int, default=os.cpu_count() or 1, help="Pillow processes (default: cores)"
    )
    parser.add_argument(
        "--niceness",
        type=int,
        default=None,
        help="niceness of both pools (default: the image service's default)",
    )
    args = parser.parse_args()
    asyncio.run(run(args.images, args.rounds, args.pool, args.niceness))


if __name__ == "__main__":
    main()
