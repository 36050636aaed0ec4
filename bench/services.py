"""Start Offload's services (and the bench's own servers) as child processes, and stop them.

Every benchmark runs the services exactly as `make run` does, `python -m
offload_<svc>`, each in its own process (and process group, so a worker's
Pillow pool goes with it), against the bench run's private vhost and Redis
prefix. Output goes to a log file under `var/bench-logs/`, whose tail is shown
when a service fails to come up.
"""

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from bench.infra import BenchInfra
from offload_contracts import topology

LOG_ROOT = Path(__file__).resolve().parents[1] / "var" / "bench-logs"

API_KEY = "bench-key"
TENANT = "bench"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class MissingService(RuntimeError):
    """A service this benchmark needs has not landed in the tree yet."""


def require(*services: str) -> None:
    """Raise `MissingService` unless `python -m offload_<svc>` exists for each service."""
    missing = []
    for service in services:
        module = f"offload_{service}.__main__"
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(f"python -m offload_{service}")
    if missing:
        raise MissingService(f"not in the tree yet: {', '.join(missing)}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def offload_env(infra: BenchInfra, storage_dir: Path, **extra: str | int | float) -> dict[str, str]:
    """The environment every Offload process of one bench run shares."""
    env = {
        **os.environ,
        "OFFLOAD_RABBITMQ_URL": infra.rabbitmq_url,
        "OFFLOAD_REDIS_URL": infra.redis_url,
        "OFFLOAD_REDIS_PREFIX": infra.redis_prefix,
        "OFFLOAD_STORAGE_DIR": str(storage_dir),
        "OFFLOAD_API_KEYS": f"{API_KEY}={TENANT}",
        "OFFLOAD_ADMIN_KEYS": "bench-admin-key",
        "OFFLOAD_LOG_LEVEL": "warning",
        "OFFLOAD_RETRY_TIERS": "1s,5s",
        "OFFLOAD_WEBHOOK_ALLOW_PRIVATE": "true",
        # A benchmark is one tenant submitting as fast as it is told to.
        "OFFLOAD_RATE_LIMIT_PER_S": "0",
        "PYTHONUNBUFFERED": "1",
    }
    env.update({key: str(value) for key, value in extra.items()})
    return env


class ServiceProcess:
    """One child process with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> "ServiceProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: stopping it stops its pool processes too.
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _check_alive(self) -> None:
        if not self.alive():
            code = self.proc.returncode if self.proc else None
            raise RuntimeError(
                f"{self.name} exited (code {code}) while starting; log {self.log_path}:\n"
                f"{self.tail()}"
            )

    async def wait_http(self, url: str, timeout_s: float = 30) -> None:
        """Until `url` answers 2xx."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while True:
                self._check_alive()
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status < 300:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not answer {url} in {timeout_s:g}s")
                await asyncio.sleep(0.1)

    async def wait_consumers(
        self, rabbitmq_url: str, service: str, count: int = 1, timeout_s: float = 30
    ) -> None:
        """Until `<service>.jobs` has at least `count` consumers."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive()
            if await consumer_count(rabbitmq_url, service) >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name}: {topology.work_queue(service)} has no consumer after "
                    f"{timeout_s:g}s; log {self.log_path}:\n{self.tail()}"
                )
            await asyncio.sleep(0.2)

    def stop(self, timeout_s: float = 15) -> int | None:
        """SIGTERM to its process group, then SIGKILL after `timeout_s`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Pool processes may outlive their parent by a moment.
        _signal_group(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def consumer_count(rabbitmq_url: str, service: str) -> int:
    import aio_pika

    # A broker that stops answering must fail the bench, not hang it.
    connection = await asyncio.wait_for(aio_pika.connect(rabbitmq_url, timeout=10), 15)
    try:
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(topology.work_queue(service), passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return 0  # not declared yet
        return int(queue.declaration_result.consumer_count or 0)
    finally:
        await connection.close()


class Processes:
    """The child processes of one benchmark: started in order, all stopped on exit."""

    def __init__(self, run_name: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.log_dir = LOG_ROOT / f"{run_name}-{stamp}-{os.getpid()}"
        self.started: list[ServiceProcess] = []

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> ServiceProcess:
        process = ServiceProcess(name, argv, env, self.log_dir).start()
        self.started.append(process)
        return process

    def module(
        self, name: str, module: str, env: Mapping[str, str], *, nice: int = 0
    ) -> ServiceProcess:
        """`python -m <module>` with this interpreter (the project's venv), at a niceness."""
        prefix = ["nice", "-n", str(nice)] if nice else []
        return self.spawn(name, [*prefix, sys.executable, "-m", module], env)

    async def sandbox(
        self, env: Mapping[str, str], *, ttft_ms: float, tokens_per_s: float = 1_000_000
    ) -> tuple[ServiceProcess, str]:
        """The sandbox providers with the LLM latency asked for; returns it and its LLM base URL."""
        require("sandbox")
        port = free_port()
        process = self.module(
            "sandbox",
            "offload_sandbox",
            {
                **env,
                "OFFLOAD_SANDBOX_PORT": str(port),
                "OFFLOAD_SANDBOX_LLM_TTFT_MS": str(ttft_ms),
                "OFFLOAD_SANDBOX_LLM_TOKENS_PER_S": str(tokens_per_s),
            },
        )
        base = f"http://127.0.0.1:{port}"
        await process.wait_http(f"{base}/healthz")
        return process, f"{base}/v1"

    async def gateway(self, env: Mapping[str, str]) -> tuple[ServiceProcess, str]:
        require("gateway")
        port = free_port()
        process = self.module(
            "gateway", "offload_gateway", {**env, "OFFLOAD_GATEWAY_PORT": str(port)}
        )
        base = f"http://127.0.0.1:{port}"
        await process.wait_http(f"{base}/readyz")
        return process, base

    async def notifier(self, env: Mapping[str, str]) -> tuple[ServiceProcess, str]:
        require("notifier")
        port = free_port()
        process = self.module(
            "notifier", "offload_notifier", {**env, "OFFLOAD_NOTIFIER_PORT": str(port)}
        )
        base = f"http://127.0.0.1:{port}"
        await process.wait_http(f"{base}/readyz")
        return process, base

    async def worker(
        self,
        service: str,
        env: Mapping[str, str],
        rabbitmq_url: str,
        *,
        index: int = 0,
        nice: int = 0,
    ) -> ServiceProcess:
        require(service)
        name = service if index == 0 else f"{service}-{index}"
        process = self.module(name, f"offload_{service}", env, nice=nice)
        await process.wait_consumers(rabbitmq_url, service, count=index + 1)
        return process

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds used so far by each live process group (service and its pool), by
        RabbitMQ and Redis (shared with whatever else uses them), and by this process."""
        from bench.cpu import group_cpu_s, self_cpu_s, shared_servers_cpu_s

        used = {p.name: group_cpu_s(p.pid) for p in self.started if p.alive()}
        used.update(shared_servers_cpu_s())
        used["bench client"] = self_cpu_s()
        return used

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.stop_all()
