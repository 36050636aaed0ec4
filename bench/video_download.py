"""A 500 MB video download through the real video worker: RSS growth and MB/s.

    uv run python -m bench.video_download [--mb 500] [--chunk-kb 1024] [--rate-mbps 0]

The sandbox runs as its own process (render time 0, so the job is the download);
the video worker runs in this process, built by `offload_video.app.build_app`
against RabbitMQ and Redis in a private vhost and key prefix. A small job warms
the worker up first; then the peak RSS (VmHWM, reset through
/proc/self/clear_refs) is compared with the RSS just before the big job (and,
for information, with the RSS before the warm-up).
Target: RSS grows by less than 50 MB for a 500 MB download.
"""

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.infra import bench_infra
from bench.report import Figure, report
from offload_contracts import JobStatus, VideoGenerateInput, VideoGenerateRequest, topology
from offload_runtime.broker import make_broker, publish_confirmed
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis
from offload_runtime.store import JobStore, new_id
from offload_video.app import build_app
from offload_video.settings import VideoSettings

MB = 1_000_000
TARGET_RSS_MB = 50


def status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sandbox(port: int, rate_bps: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OFFLOAD_SANDBOX_PORT": str(port),
        "OFFLOAD_SANDBOX_VIDEO_RENDER_S": "0",
        "OFFLOAD_SANDBOX_VIDEO_BYTES_PER_SECOND": str(MB),  # 1 s of 1080p = 1 MB
    }
    if rate_bps:
        env["OFFLOAD_SANDBOX_VIDEO_DOWNLOAD_BYTES_PER_SECOND"] = str(rate_bps)
    process = subprocess.Popen(
        [sys.executable, "-m", "offload_sandbox"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the sandbox did not start")


async def run_job(
    store: JobStore, broker: Any, duration_s: int, partial_dir: Path
) -> dict[str, Any]:
    request = VideoGenerateRequest(
        id=new_id(),
        tenant="bench",
        max_attempts=1,
        created_at=datetime.now(UTC),
        input=VideoGenerateInput(prompt="bench", duration_s=duration_s, resolution="1080p"),
    )
    await store.create(request)
    submitted = time.monotonic()
    await publish_confirmed(
        broker,
        request.model_dump_json().encode(),
        exchange=topology.JOBS_EXCHANGE,
        routing_key="video.generate",
    )
    partial = partial_dir / f"{request.id}.part"
    download_began = None
    max_rss_kb = 0
    while True:
        record = await store.get(request.id)
        max_rss_kb = max(max_rss_kb, status_kb("VmRSS"))
        if download_began is None and partial.exists():
            download_began = time.monotonic()
        if record is not None and record.status.is_terminal:
            break
        await asyncio.sleep(0.01)
    finished = time.monotonic()
    if record.status != JobStatus.COMPLETED or record.result is None:
        raise RuntimeError(f"the job ended {record.status}: {record.error}")
    return {
        "file": record.result["file"],
        "total_s": finished - submitted,
        "download_s": finished - (download_began or submitted),
        "max_sampled_rss_kb": max_rss_kb,
    }


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    sandbox = start_sandbox(port, int(args.rate_mbps * MB))
    storage = Path(tempfile.mkdtemp(prefix="offload-bench-video-"))
    try:
        with bench_infra("video") as infra:
            settings = VideoSettings(
                rabbitmq_url=infra.rabbitmq_url,
                redis_url=infra.redis_url,
                redis_prefix=infra.redis_prefix,
                storage_dir=storage,
                video_base_url=f"http://127.0.0.1:{port}",
                video_poll_initial_s=0.05,
                video_poll_max_s=0.2,
                video_chunk_bytes=args.chunk_kb * 1024,
                retry_tiers="1s",
                log_level="warning",
            )
            worker = build_app(settings)
            await worker.app.start()
            store = JobStore(
                connect_redis(infra.redis_url), RedisKeys(infra.redis_prefix), retention_s=3600
            )
            broker = make_broker(infra.rabbitmq_url, service="bench-video")
            await broker.connect()
            partial_dir = storage / ".scratch" / "video"
            try:
                cold_kb = status_kb("VmRSS")
                reset_peak_rss()
                await run_job(store, broker, 5, partial_dir)  # warm-up: pools, imports, arenas
                warm_peak_kb = status_kb("VmHWM")
                baseline_kb = status_kb("VmRSS")
                resettable = reset_peak_rss()
                run = await run_job(store, broker, args.mb, partial_dir)
                peak_kb = status_kb("VmHWM") if resettable else run["max_sampled_rss_kb"]
                after_kb = status_kb("VmRSS")
            finally:
                await broker.stop()
                await worker.app.stop()
                await store.aclose()
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)
        await asyncio.to_thread(shutil.rmtree, storage, True)

    size = run["file"]["bytes"]
    growth_mb = (peak_kb - baseline_kb) * 1024 / MB
    download_rate = size / MB / run["download_s"]
    rows = [
        {
            "file_mb": round(size / MB),
            "chunk_kb": args.chunk_kb,
            "cold_rss_mb": round(cold_kb * 1024 / MB, 1),
            "baseline_rss_mb": round(baseline_kb * 1024 / MB, 1),
            "peak_rss_mb": round(peak_kb * 1024 / MB, 1),
            "max_sampled_rss_mb": round(run["max_sampled_rss_kb"] * 1024 / MB, 1),
            "after_rss_mb": round(after_kb * 1024 / MB, 1),
            "rss_growth_mb": round(growth_mb, 1),
            "download_s": round(run["download_s"], 2),
            "download_mb_s": round(download_rate, 1),
            "job_total_s": round(run["total_s"], 2),
            "peak_from": "VmHWM" if resettable else "sampled VmRSS",
        }
    ]
    figures = [
        Figure(
            "RSS growth during a download",
            growth_mb,
            "MB",
            target=f"< {TARGET_RSS_MB} MB for 500 MB",
            met=growth_mb < TARGET_RSS_MB,
            note=f"{size / MB:.0f} MB file",
        ),
        Figure(
            "RSS growth of a first 5 MB job (cold worker)",
            (warm_peak_kb - cold_kb) * 1024 / MB,
            "MB",
            note="connections, lazy imports and buffers set up once",
        ),
        Figure("download rate (to disk, hashed, verified)", download_rate, "MB/s"),
    ]
    report(
        "video_download",
        rows,
        figures,
        sha256=run["file"]["sha256"],
        note="sandbox in its own process on the same machine; worker in this process",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=500, help="file size in MB (10^6 bytes)")
    parser.add_argument("--chunk-kb", type=int, default=1024, help="OFFLOAD_VIDEO_CHUNK_BYTES/1024")
    parser.add_argument(
        "--rate-mbps", type=float, default=0, help="cap the sandbox (MB/s); 0 = no cap"
    )
    asyncio.run(main(parser.parse_args()))
