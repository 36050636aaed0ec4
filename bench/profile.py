"""Where the CPU goes on the hot paths, sampled with py-spy (needs root, or ptrace rights).

    uv run python -m bench.profile runner  [--jobs 20000]
    uv run python -m bench.profile gateway [--seconds 15] [--connections 32]

`runner`: the worker of `bench.runner_throughput` draining pre-published no-op
jobs, run under `py-spy record`. `gateway`: the gateway (with its real Redis and
RabbitMQ) taking `POST /v1/jobs` from an aiohttp load generator while py-spy
samples it. Each writes a flame graph (SVG) and the raw collapsed stacks under
`bench/results/profile-<target>.*`, and prints the functions with the most
samples: own time (the frame was on top) and total (anywhere on the stack).
"""

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

from bench.report import print_table, report
from bench.services import LOG_ROOT

RATE_HZ = 250
PROFILES = LOG_ROOT


def py_spy() -> list[str]:
    """The py-spy command: on PATH, else through uvx (PyPI's `py-spy`)."""
    if found := shutil.which("py-spy"):
        return [found]
    if uvx := shutil.which("uvx"):
        return [uvx, "py-spy"]
    raise SystemExit("py-spy not found: `pip install py-spy` or install uv (uvx py-spy)")


def summarize(raw: Path, top: int = 25) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Top functions and packages by own samples, from py-spy's collapsed stacks.

    Stacks under an import (start-up) are left out: the figures are the steady state.
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or "importlib._bootstrap" in stack:
            continue
        count = int(count_text)
        samples += count
        frames = [_short(frame) for frame in stack.split(";")]
        own[frames[-1][0]] += count
        packages[frames[-1][1]] += count
        for name in {name for name, _ in frames}:
            total[name] += count
    functions = [
        {"function": name, "own_%": 100 * n / samples, "total_%": 100 * total[name] / samples}
        for name, n in own.most_common(top)
    ]
    by_package = [
        {"package": name, "own_%": 100 * n / samples} for name, n in packages.most_common(15)
    ]
    return functions, by_package


def _short(frame: str) -> tuple[str, str]:
    """ "name (pkg/module.py:123)" → ("name (pkg/module.py)", "pkg").

    py-spy already writes paths relative to their sys.path entry, so the first
    part is the top-level package (`asyncio`, `redis`, `offload_runtime`).
    """
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    package = parts[0] if len(parts) > 1 else path.removesuffix(".py")
    return f"{name} ({path})", package


def record_wrap(out: Path, fmt: str) -> list[str]:
    return [*py_spy(), "record", "--rate", str(RATE_HZ), "--format", fmt, "-o", str(out), "--"]


def attach(pid: int, out: Path, fmt: str, seconds: float) -> subprocess.Popen[bytes]:
    cmd = [*py_spy(), "record", "--rate", str(RATE_HZ), "--format", fmt, "-o", str(out)]
    return subprocess.Popen(
        [*cmd, "--pid", str(pid), "--duration", str(int(seconds))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


# --------------------------------------------------------------------------- targets


async def profile_runner(args: argparse.Namespace) -> Path:
    from bench.runner_throughput import _one_run

    raw = PROFILES / "profile-runner.txt"
    figures = await _one_run(args.jobs, 100, wrap=record_wrap(raw, "raw"))
    print(
        f"runner under py-spy: {figures['measured'] / figures['wall_s']:,.0f} jobs/s "
        f"(sampling slows it), {1000 * figures['cpu_s'] / figures['measured']:.2f} ms CPU/job"
    )
    return raw


async def profile_gateway(args: argparse.Namespace) -> Path:
    from bench.infra import bench_infra
    from bench.services import AUTH, Processes, offload_env

    raw = PROFILES / "profile-gateway.txt"
    body = {"type": "ai.generate", "input": {"prompt": "hello", "max_tokens": 1}}
    with (
        bench_infra("profile") as infra,
        Processes("profile-gateway") as procs,
        tempfile.TemporaryDirectory() as files,
    ):
        gateway_proc, gateway = await procs.gateway(offload_env(infra, Path(files)))
        sent = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            stop = time.perf_counter() + args.seconds + 2

            async def client() -> None:
                nonlocal sent
                while time.perf_counter() < stop:
                    async with session.post(f"{gateway}/v1/jobs", json=body, headers=AUTH) as r:
                        await r.read()
                        if r.status != 202:
                            raise RuntimeError(f"{r.status}: {await r.text()}")
                    sent += 1

            clients = [asyncio.create_task(client()) for _ in range(args.connections)]
            await asyncio.sleep(1)  # warm, then sample
            spy = attach(gateway_proc.pid, raw, "raw", args.seconds)
            await asyncio.gather(*clients)
            _, err = await asyncio.to_thread(spy.communicate)
            if spy.returncode != 0:
                raise RuntimeError(f"py-spy failed: {err.decode()[-1000:]}")
        print(f"gateway under py-spy: {sent} submissions in {args.seconds + 2:g}s")
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", choices=["runner", "gateway"])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("note: py-spy needs root (or CAP_SYS_PTRACE) to sample", file=sys.stderr)
    PROFILES.mkdir(parents=True, exist_ok=True)
    run = profile_runner if args.target == "runner" else profile_gateway
    raw = asyncio.run(run(args))
    print(f"\ntop functions by own samples ({args.target}; raw stacks in {raw})")
    functions, by_package = summarize(raw)
    print("\nown samples by package")
    print_table(by_package)
    report(
        f"profile-{args.target}",
        functions,
        by_package=by_package,
        raw_stacks=str(raw),
        rate_hz=RATE_HZ,
    )


if __name__ == "__main__":
    main()
