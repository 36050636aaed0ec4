"""The real gateway, served by uvicorn in the test's event loop on a free port.

    async with running_gateway(infra) as gw:
        async with gw.client("acme") as http:   # httpx.AsyncClient, base URL and key set
            answer = await http.post("/v1/jobs", json={...})

Each gateway gets its own Redis key prefix (so its jobs, files and keys are
its own) and works in the run's RabbitMQ vhost, where it declares every
worker service's queues. Settings can be overridden by keyword, e.g.
`running_gateway(infra, rate_limit_per_s=3, sweep_after="100ms")`.
"""

import asyncio
import contextlib
import io
import json
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import uvicorn
from fastapi import FastAPI

from offload_contracts import TERMINAL_STATUSES, topology
from offload_gateway.app import build_app
from offload_gateway.deps import GatewayDeps
from offload_gateway.settings import GatewaySettings
from offload_runtime.keys import RedisKeys
from tests.support.infra import Infra
from tests.support.waiting import wait_until

TENANTS = ("acme", "globex")
SHUTDOWN_TIMEOUT_S = 30


@dataclass
class RunningGateway:
    """A gateway serving on `base_url`; `api_keys` maps tenant → its API key."""

    base_url: str
    settings: GatewaySettings
    api_keys: dict[str, str]
    app: FastAPI

    @property
    def deps(self) -> GatewayDeps:
        """The gateway's wired parts (its store, broker link, ...), for assertions."""
        deps: GatewayDeps = self.app.state.deps
        return deps

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.settings.redis_prefix, self.settings.redis_shards)

    def headers(self, tenant: str = TENANTS[0]) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_keys[tenant]}"}

    def client(self, tenant: str | None = TENANTS[0], **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client for `tenant` (None: no Authorization header)."""
        headers = self.headers(tenant) if tenant else {}
        return httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs
        )

    async def submit(
        self, job_type: str, job_input: dict[str, Any], tenant: str = TENANTS[0], **fields: Any
    ) -> str:
        """`submit_job` with a client of `tenant`'s own."""
        async with self.client(tenant) as http:
            return await submit_job(http, job_type, job_input, **fields)

    async def wait_ready(self, timeout: float = 15) -> None:
        """Wait until `/readyz` says ready (the broker link connects in the background)."""
        async with self.client(None) as http:
            await wait_until(
                lambda: http.get("/readyz"),
                lambda answer: answer.status_code == 200,
                timeout=timeout,
                what="the gateway ready",
                describe=lambda answer: answer.text,
            )


def gateway_settings(infra: Infra, **overrides: Any) -> tuple[GatewaySettings, dict[str, str]]:
    """Settings for a test gateway: own Redis prefix, fresh API keys, fast timers."""
    run = uuid.uuid4().hex[:10]
    api_keys = {tenant: f"key-{tenant}-{uuid.uuid4().hex}" for tenant in TENANTS}
    values: dict[str, Any] = {
        "rabbitmq_url": infra.rabbitmq_url,
        "redis_url": infra.redis_url,
        "redis_prefix": f"{infra.redis_prefix}gw{run}:",
        "api_keys": ",".join(f"{key}={tenant}" for tenant, key in api_keys.items()),
        "storage_dir": Path(tempfile.gettempdir()) / f"offload-gw-{run}",
        "webhook_allow_private": True,
        "retry_tiers": "50ms,100ms",
        "publish_timeout_s": 2.0,
        "rate_limit_per_s": 10_000,
        "queue_depth_refresh": "50ms",
        "sweep_interval": "50ms",
        "sweep_after": "1h",
        "log_level": "warning",
    }
    values.update(overrides)
    return GatewaySettings(**values), api_keys


@asynccontextmanager
async def running_gateway(
    infra: Infra, *, ready: bool = True, **overrides: Any
) -> AsyncIterator[RunningGateway]:
    """Serve the gateway until the block ends. With `ready`, wait for `/readyz` first."""
    settings, api_keys = gateway_settings(infra, **overrides)
    app = build_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        access_log=False,
        ws="none",
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    # uvicorn would capture SIGINT/SIGTERM while it serves; the test runner owns them.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if serving.done():
                serving.result()  # startup failed: raise its error
                raise RuntimeError("gateway stopped during startup")
            await asyncio.sleep(0.01)
        gateway = RunningGateway(f"http://127.0.0.1:{port}", settings, api_keys, app)
        if ready:
            await gateway.wait_ready()
        yield gateway
    finally:
        server.should_exit = True
        try:
            done, _ = await asyncio.wait({serving}, timeout=SHUTDOWN_TIMEOUT_S)
            if not done:
                stuck = await_chains()  # where shutdown hangs, before cancelling it
                serving.cancel()
                raise AssertionError(
                    f"the gateway did not stop within {SHUTDOWN_TIMEOUT_S} s; tasks:\n{stuck}"
                )
            serving.result()
        finally:
            sock.close()
            if "storage_dir" not in overrides:
                await asyncio.to_thread(shutil.rmtree, settings.storage_dir, True)


def await_chains() -> str:
    """Every pending task's chain of awaits, innermost last: where a shutdown is stuck."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        frames = []
        coro: Any = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            if frame is not None:
                frames.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        out.write(f"- {task.get_name()}: " + " -> ".join(frames[-6:]) + "\n")
    return out.getvalue()


# ---------------------------------------------------------------------- test helpers

PROBLEM = "application/problem+json"

INPUTS: dict[str, dict[str, Any]] = {
    "ai.generate": {"prompt": "Write a haiku about queues."},
    "research.run": {"question": "How do quorum queues replicate?", "steps": 3},
    "video.generate": {"prompt": "A paper boat", "duration_s": 5, "resolution": "720p"},
    "image.process": {
        "source": {"file_id": "abc123"},
        "operations": [{"op": "resize", "width": 64}, {"op": "convert", "format": "webp"}],
    },
}


def ai_job(prompt: str = "hello") -> dict[str, Any]:
    return {"type": "ai.generate", "input": {"prompt": prompt}}


def assert_problem(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    body: dict[str, Any] = answer.json()
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body


async def take_request(infra: Infra, job_id: str, timeout: float = 5) -> dict[str, Any]:
    """Take messages from the work queues until the request for `job_id` shows up.

    Other messages met on the way are consumed and dropped: use it only while no
    worker of the run's vhost consumes those queues.
    """
    connection = await aio_pika.connect(infra.rabbitmq_url)
    try:
        channel = await connection.channel()

        async def take() -> dict[str, Any] | None:
            for service in topology.WORKER_SERVICES:
                queue = await channel.get_queue(topology.work_queue(service), ensure=False)
                while (message := await queue.get(no_ack=True, fail=False)) is not None:
                    body: dict[str, Any] = json.loads(message.body)
                    if body.get("id") == job_id:
                        assert message.routing_key == body["type"]
                        return body
            return None

        found = await wait_until(
            take,
            lambda found: found is not None,
            timeout=timeout,
            what=f"the request for job {job_id} in a work queue",
            interval=0.02,
        )
        assert found is not None
        return found
    finally:
        await connection.close()


async def submit_job(
    http: httpx.AsyncClient, job_type: str, job_input: dict[str, Any], **fields: Any
) -> str:
    """POST the job as a client would (`fields`: `webhook`, ...); it must be accepted. Its id."""
    answer = await http.post("/v1/jobs", json={"type": job_type, "input": job_input, **fields})
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


async def poll_job(http: httpx.AsyncClient, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """GET the job until it is finished, as a client without SSE would."""

    async def get() -> dict[str, Any]:
        answer = await http.get(f"/v1/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        return job

    return await wait_until(
        get,
        lambda job: job["status"] in TERMINAL_STATUSES,
        timeout=timeout,
        what=f"job {job_id} finished",
    )
