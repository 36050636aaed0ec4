"""What `OFFLOAD_REDIS_WAIT_REPLICAS` costs a submission on a Redis Cluster.

    make clusters            # or any Redis Cluster whose masters have a replica each
    uv run python -m bench.redis_wait --redis-url 'redis+cluster://127.0.0.1:7001,...'
        [--seconds 5] [--rounds 2] [--concurrency 1,16]

Two gateways run as child processes on the same Redis Cluster, in the bench's
own RabbitMQ vhost (the machine's broker) and Redis prefix: one with
`OFFLOAD_REDIS_WAIT_REPLICAS=0` (the default: 202 once the master holds the
job) and one with `=1` (202 once a replica holds it too: the gateway sends
`WAIT 1 <timeout>` to the job's master after recording it). For each
concurrency, rounds alternate the two; the load generator is
`bench.gateway_submit`'s closed loop. Printed: the median over the rounds of
each one's p50 and p99 of `POST /v1/jobs` and req/s, and the median of the
p50 difference within each pair of rounds (WAIT on minus off).
"""

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.gateway_submit import measure
from bench.infra import bench_infra
from bench.report import Figure, report
from bench.services import Processes, offload_env


async def main(args: argparse.Namespace) -> None:
    if not args.redis_url.startswith(("redis+cluster://", "rediss+cluster://")):
        raise SystemExit(
            "--redis-url must name a Redis Cluster (redis+cluster://host:port,...): WAIT "
            "needs replicas. `make clusters` starts one on this machine."
        )
    load_at_start = os.getloadavg()[0]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    rows: list[dict[str, Any]] = []
    with (
        bench_infra("redis-wait") as infra,
        Processes("redis-wait") as processes,
        tempfile.TemporaryDirectory() as storage,
    ):
        gateways = {}
        for replicas in (0, 1):
            env = offload_env(
                infra,
                Path(storage),
                OFFLOAD_REDIS_URL=args.redis_url,
                OFFLOAD_QUEUE_DEPTH_LIMIT=0,
                OFFLOAD_REDIS_WAIT_REPLICAS=replicas,
                OFFLOAD_REDIS_WAIT_TIMEOUT_MS=args.timeout_ms,
            )
            gateways[replicas] = await processes.gateway(env)
        for concurrency in concurrencies:
            print(f"POST /v1/jobs, {concurrency} connection(s), {args.seconds:g} s per round")
            for round_number in range(args.rounds):
                for replicas, (process, url) in gateways.items():
                    row = await measure(
                        f"wait={replicas}",
                        url,
                        process.pid,
                        seconds=args.seconds,
                        concurrency=concurrency,
                    )
                    rows.append(
                        {
                            "concurrency": concurrency,
                            "round": round_number + 1,
                            "wait_replicas": replicas,
                            **row,
                        }
                    )

    figures = []
    print("\nmedians over the rounds (a busy machine moves single rounds a lot):")
    for concurrency in concurrencies:
        median = {
            replicas: {
                figure: statistics.median(
                    r[figure]
                    for r in rows
                    if r["concurrency"] == concurrency and r["wait_replicas"] == replicas
                )
                for figure in ("p50_ms", "p99_ms", "req_per_s")
            }
            for replicas in (0, 1)
        }
        # Rounds alternate off/on: the difference within each round pair, then its median.
        pairs = [
            (off, on)
            for off, on in zip(
                [r for r in rows if r["concurrency"] == concurrency and r["wait_replicas"] == 0],
                [r for r in rows if r["concurrency"] == concurrency and r["wait_replicas"] == 1],
                strict=True,
            )
        ]
        p50_delta = statistics.median(on["p50_ms"] - off["p50_ms"] for off, on in pairs)
        off, on = median[0], median[1]
        print(
            f"  {concurrency:3d} connection(s): WAIT off p50 {off['p50_ms']:.2f} / p99 "
            f"{off['p99_ms']:.2f} ms, {off['req_per_s']:.0f} req/s; WAIT 1 p50 "
            f"{on['p50_ms']:.2f} / p99 {on['p99_ms']:.2f} ms, {on['req_per_s']:.0f} req/s; "
            f"p50 difference within a round pair (median) {p50_delta:+.2f} ms"
        )
        for replicas, row in median.items():
            label = f"POST /v1/jobs on a Redis Cluster, {concurrency} conn., WAIT {replicas}"
            figures += [
                Figure(f"{label} p50 (median of rounds)", round(row["p50_ms"], 2), "ms"),
                Figure(f"{label} p99 (median of rounds)", round(row["p99_ms"], 2), "ms"),
                Figure(f"{label} throughput", round(row["req_per_s"]), "req/s"),
            ]
    print(f"load average at start {load_at_start:.1f} on {os.cpu_count()} cores")
    report(
        "redis_wait",
        rows,
        figures,
        seconds=args.seconds,
        load_average_at_start=load_at_start,
    )


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("OFFLOAD_REDIS_URL", ""),
        help="a redis+cluster:// URL (default: OFFLOAD_REDIS_URL)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of (WAIT off, WAIT 1)")
    parser.add_argument("--concurrency", default="1,16", help="open connections, comma-separated")
    parser.add_argument("--timeout-ms", type=int, default=500, help="OFFLOAD_REDIS_WAIT_TIMEOUT_MS")
    return parser.parse_args()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(_args()))
