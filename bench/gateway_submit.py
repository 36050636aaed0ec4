"""`POST /v1/jobs` throughput and latency of the gateway, against a bare reference endpoint.

    uv run python -m bench.gateway_submit [--seconds 8] [--concurrency 32] [--rounds 2]

Two servers run as child processes in the bench's own vhost and Redis prefix,
each one uvicorn process on uvloop:

- the gateway (`python -m offload_gateway`), rate and depth limits off;
- the reference (`python -m bench.gateway_submit --serve-reference`): a bare
  FastAPI endpoint that does the irreducible part of a submit, one Redis write
  and one confirmed publish to the `jobs` exchange (the runtime's
  `publish_confirmed`), and answers 202.

The load generator (this process) is aiohttp with `--concurrency` connections
in a closed loop; it prints its own CPU next to the servers' so one can see
that it is not the bottleneck. Rounds alternate reference and gateway, so both
meet the same growing queues; the best round of each is reported, with the
ratio gateway / reference (target ≥ 0.9).
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from bench.cpu import group_cpu_s
from bench.infra import bench_infra
from bench.report import Figure, report
from bench.services import AUTH, Processes, free_port, offload_env
from bench.stats import latency_summary

BODY = json.dumps(
    {"type": "ai.generate", "input": {"prompt": "Summarise the benefits of a job queue."}}
).encode()
TARGET_RATIO = 0.9


# --------------------------------------------------------------------------- the reference server


def serve_reference() -> None:
    """The reference: FastAPI, one Redis write and one confirmed publish per request."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from offload_contracts import topology
    from offload_runtime.broker import make_broker, publish_confirmed
    from offload_runtime.redis import connect_redis
    from offload_runtime.settings import RuntimeSettings

    settings = RuntimeSettings()
    broker = make_broker(settings.rabbitmq_url, service="bench-reference")
    client = connect_redis(settings.redis_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await broker.connect()
        yield
        await broker.stop()
        await client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/readyz")
    async def readyz() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v1/jobs", status_code=202)
    async def submit(body: dict[str, Any]) -> JSONResponse:
        job_id = uuid.uuid4().hex
        payload = json.dumps({"id": job_id, **body})
        await client.set(f"{settings.redis_prefix}ref:{job_id}", payload, ex=3600)
        await publish_confirmed(
            broker,
            payload.encode(),
            exchange=topology.JOBS_EXCHANGE,
            routing_key=str(body.get("type", "ai.generate")),
            message_id=job_id,
        )
        return JSONResponse({"id": job_id}, status_code=202)

    port = int(os.environ["BENCH_REFERENCE_PORT"])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", log_level="warning", ws="none")


# --------------------------------------------------------------------------- the load generator


async def load(base_url: str, *, seconds: float, concurrency: int) -> dict[str, Any]:
    """Closed-loop POSTs for `seconds`; returns rate, latencies and the client's CPU."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    headers = {**AUTH, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one_client(stop_at: float, record: bool) -> None:
            while time.monotonic() < stop_at:
                began = time.perf_counter()
                async with session.post(f"{base_url}/v1/jobs", data=BODY, headers=headers) as r:
                    await r.read()
                    status = r.status
                if record:
                    latencies.append((time.perf_counter() - began) * 1000)
                    statuses[status] = statuses.get(status, 0) + 1

        warmup_until = time.monotonic() + 1.5
        await asyncio.gather(*(one_client(warmup_until, False) for _ in range(concurrency)))
        cpu_before = time.process_time()
        began = time.monotonic()
        stop_at = began + seconds
        await asyncio.gather(*(one_client(stop_at, True) for _ in range(concurrency)))
        elapsed = time.monotonic() - began
        client_cpu = time.process_time() - cpu_before
    ok = statuses.get(202, 0)
    return {
        "requests": len(latencies),
        "accepted": ok,
        "other_statuses": {k: v for k, v in statuses.items() if k != 202},
        "req_per_s": ok / elapsed,
        "elapsed_s": elapsed,
        "client_cpu_share": client_cpu / elapsed,
        **{f"{k}_ms": v for k, v in latency_summary(latencies).items() if k != "n"},
    }


async def measure(
    name: str, base_url: str, pgid: int, *, seconds: float, concurrency: int
) -> dict[str, Any]:
    cpu_before = group_cpu_s(pgid)
    result = await load(base_url, seconds=seconds, concurrency=concurrency)
    server_cpu = (group_cpu_s(pgid) - cpu_before) / (result["elapsed_s"] + 1.5)
    row = {
        "server": name,
        **result,
        "server_cpu_share": server_cpu,
        "server_cpu_ms_per_request": 1000 * server_cpu / max(result["req_per_s"], 1e-9),
    }
    print(
        f"  {name:9s} {row['req_per_s']:8.0f} req/s  p50 {row['p50_ms']:6.2f} ms  "
        f"p99 {row['p99_ms']:6.2f} ms  server CPU {server_cpu:4.0%} "
        f"({row['server_cpu_ms_per_request']:.2f} ms/req)  "
        f"client CPU {row['client_cpu_share']:4.0%}"
        + (f"  non-202: {row['other_statuses']}" if row["other_statuses"] else "")
    )
    return row


async def main(args: argparse.Namespace) -> None:
    # Figures on a shared 2-core machine move with whatever else runs: say so.
    load_at_start = os.getloadavg()[0]
    with (
        bench_infra("gwsubmit") as infra,
        Processes("gateway-submit") as processes,
        tempfile.TemporaryDirectory() as storage,
    ):
        env = offload_env(
            infra, Path(storage), OFFLOAD_QUEUE_DEPTH_LIMIT=0, OFFLOAD_RATE_LIMIT_PER_S=0
        )
        gateway, gateway_url = await processes.gateway(env)  # declares the topology
        port = free_port()
        reference = processes.spawn(
            "reference",
            [sys.executable, "-m", "bench.gateway_submit", "--serve-reference"],
            {**env, "BENCH_REFERENCE_PORT": str(port)},
        )
        reference_url = f"http://127.0.0.1:{port}"
        await reference.wait_http(f"{reference_url}/readyz")

        print(
            f"POST /v1/jobs, {args.concurrency} connections, {args.seconds:g} s per round, "
            f"{args.rounds} rounds"
        )
        rows = []
        for round_number in range(args.rounds):
            print(f"round {round_number + 1}")
            for name, url, process in (
                ("reference", reference_url, reference),
                ("gateway", gateway_url, gateway),
            ):
                row = await measure(
                    name, url, process.pid, seconds=args.seconds, concurrency=args.concurrency
                )
                rows.append({"round": round_number + 1, **row})

    best = {
        name: max((r for r in rows if r["server"] == name), key=lambda r: r["req_per_s"])
        for name in ("reference", "gateway")
    }
    ratio = best["gateway"]["req_per_s"] / best["reference"]["req_per_s"]
    round_ratios = sorted(
        gateway["req_per_s"] / reference["req_per_s"]
        for reference, gateway in zip(rows[0::2], rows[1::2], strict=True)
    )
    median_ratio = round_ratios[len(round_ratios) // 2]
    cpu_ratio = (
        best["reference"]["server_cpu_ms_per_request"]
        / best["gateway"]["server_cpu_ms_per_request"]
    )
    print(
        f"\nbest: gateway {best['gateway']['req_per_s']:.0f} req/s "
        f"(p50 {best['gateway']['p50_ms']:.2f} ms, p99 {best['gateway']['p99_ms']:.2f} ms); "
        f"reference {best['reference']['req_per_s']:.0f} req/s "
        f"(p50 {best['reference']['p50_ms']:.2f} ms, p99 {best['reference']['p99_ms']:.2f} ms); "
        f"ratio {ratio:.2f} (target ≥ {TARGET_RATIO}); per-round ratios "
        f"{', '.join(f'{r:.2f}' for r in round_ratios)}; CPU per request: gateway "
        f"{best['gateway']['server_cpu_ms_per_request']:.2f} ms, reference "
        f"{best['reference']['server_cpu_ms_per_request']:.2f} ms; load average at start "
        f"{load_at_start:.1f} on {os.cpu_count()} cores"
    )
    report(
        "gateway_submit",
        rows,
        [
            Figure(
                "gateway POST /v1/jobs throughput",
                round(best["gateway"]["req_per_s"]),
                "req/s",
                target=f"≥ {TARGET_RATIO}× reference",
                met=ratio >= TARGET_RATIO,
                reference=f"reference {best['reference']['req_per_s']:.0f} req/s",
                note=f"ratio {ratio:.2f} (best rounds), median per-round {median_ratio:.2f}, "
                f"CPU-per-request ratio {cpu_ratio:.2f}",
            ),
            Figure("gateway POST /v1/jobs p50", round(best["gateway"]["p50_ms"], 2), "ms"),
            Figure("gateway POST /v1/jobs p99", round(best["gateway"]["p99_ms"], 2), "ms"),
        ],
        concurrency=args.concurrency,
        seconds=args.seconds,
        load_average_at_start=load_at_start,
    )


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round")
    parser.add_argument("--concurrency", type=int, default=32, help="open connections")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (reference, gateway)")
    parser.add_argument("--serve-reference", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = _args()
    if arguments.serve_reference:
        serve_reference()
    else:
        import uvloop

        uvloop.run(main(arguments))
