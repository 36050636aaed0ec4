"""`make run` (deploy/run.py) started by a test: free ports, its own RabbitMQ vhost and Redis
prefix, its interleaved output kept, and nothing of it left running afterwards.

    ports = free_ports()
    env = make_run_env(vhost_url, infra, ports, storage_dir)
    async with running([sys.executable, "deploy/run.py"], env) as (process, output):
        await output.wait_for("Offload is running", timeout=90)
"""

import asyncio
import contextlib
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from tests.support.infra import Infra
from tests.support.serving import free_port
from tests.support.waiting import sync_probe, wait_until

ROOT = Path(__file__).resolve().parents[2]
HTTP_SERVICES = ("gateway", "notifier", "sandbox")


class Output:
    """Collects a process's output lines as they come."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, pattern: str, timeout: float) -> None:
        await wait_until(
            sync_probe(lambda: self.text),
            lambda text: re.search(pattern, text) is not None,
            timeout=timeout,
            what=f"{pattern!r} in the output",
            describe=lambda text: f"output:\n{text[-4000:]}",
        )

    async def close(self) -> None:
        await self._task


def started_pids(text: str) -> dict[str, int]:
    """honcho's `name started (pid=N)` lines: every service process it started."""
    return {
        name: int(pid) for name, pid in re.findall(r"system\s+\| (\S+) started \(pid=(\d+)\)", text)
    }


def free_ports() -> dict[str, int]:
    return {name: free_port() for name in HTTP_SERVICES}


def make_run_env(
    rabbitmq_url: str, infra: Infra, ports: dict[str, int], storage_dir: Path, **extra: str
) -> dict[str, str]:
    """The environment of a `make run` on these ports, the providers being its own sandbox."""
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OFFLOAD_RABBITMQ_URL": rabbitmq_url,
        "OFFLOAD_REDIS_URL": infra.redis_url,
        "OFFLOAD_REDIS_PREFIX": f"{infra.redis_prefix}makerun{uuid.uuid4().hex[:6]}:",
        "OFFLOAD_STORAGE_DIR": str(storage_dir),
        "OFFLOAD_GATEWAY_PORT": str(ports["gateway"]),
        "OFFLOAD_NOTIFIER_PORT": str(ports["notifier"]),
        "OFFLOAD_SANDBOX_PORT": str(ports["sandbox"]),
        "OFFLOAD_LLM_BASE_URL": f"http://127.0.0.1:{ports['sandbox']}/v1",
        "OFFLOAD_VIDEO_BASE_URL": f"http://127.0.0.1:{ports['sandbox']}",
        **extra,
    }


@asynccontextmanager
async def running(
    command: Sequence[str], env: dict[str, str]
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Output]]:
    """Run `command` (in its own process group, as a terminal would) until the block ends;
    then SIGTERM it, and SIGKILL whatever it started that is still there."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    output = Output(process.stdout)
    try:
        yield process, output
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        await output.close()
        for pid in started_pids(output.text).values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # nothing may outlive the test
