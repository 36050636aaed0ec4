"""The real services as processes: sandbox, an ai worker and the gateway, for fault tests.

    async with running_stack(infra) as stack:
        answer = await stack.http.post("/v1/jobs", json=stack.ai_job())

Each stack has its own Redis key prefix; RabbitMQ and Redis URLs may point at
dedicated servers a test restarts. Every process's log is kept for the test
(`stack.logs()`), so it can be searched, e.g. for secrets.
"""

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis

from offload_contracts import JobStatus
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis
from offload_runtime.store import JobRecord, JobStore
from tests.reliability.outcomes import Outcome
from tests.support.infra import Infra
from tests.support.processes import ServiceProcess
from tests.support.serving import free_port
from tests.support.waiting import wait_until

API_KEY = f"key-{uuid.uuid4().hex}"
TENANT = "acme"


@dataclass
class Stack:
    settings: dict[str, Any]
    gateway_url: str
    store: JobStore
    http: httpx.AsyncClient
    redis: "aioredis.Redis"
    keys: RedisKeys
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    def start(self, name: str, module: str, **overrides: Any) -> ServiceProcess:
        process = ServiceProcess(module, settings=self.settings | overrides).start()
        self.processes[name] = process
        return process

    def start_gateway(self) -> ServiceProcess:
        return self.start("gateway", "offload_gateway")

    def ai_job(self, **input_overrides: Any) -> dict[str, Any]:
        return {
            "type": "ai.generate",
            "input": {"prompt": "hello", "max_tokens": 4, **input_overrides},
        }

    async def wait_ready(self, url: str, path: str = "/healthz", timeout: float = 30) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=2) as client:

            async def status() -> int | str:
                try:
                    return (await client.get(path)).status_code
                except httpx.TransportError as exc:
                    return repr(exc)

            await wait_until(
                status,
                lambda status: status == 200,
                timeout=timeout,
                what=f"{url}{path} ready",
                interval=0.1,
                describe=lambda status: f"{status}; logs:\n{self.logs()[-4000:]}",
            )

    async def wait_jobs(
        self, job_ids: list[str], statuses: set[JobStatus], timeout: float = 60
    ) -> list[JobRecord]:
        async def records() -> list[JobRecord | None]:
            return [await self.store.get(job_id) for job_id in job_ids]

        def behind(found: list[JobRecord | None]) -> list[tuple[str, JobStatus | None]]:
            return [
                (i, r.status if r else None)
                for i, r in zip(job_ids, found, strict=True)
                if r is None or r.status not in statuses
            ]

        found = await wait_until(
            records,
            lambda found: not behind(found),
            timeout=timeout,
            what=f"{len(job_ids)} jobs in {statuses}",
            interval=0.1,
            describe=lambda found: f"{len(behind(found))} behind: {behind(found)[:10]}",
        )
        return [r for r in found if r is not None]

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.logs()}" for name, p in self.processes.items())

    def assert_settled(self, outcome: Outcome) -> None:
        """`outcome.assert_nothing_lost_or_duplicated()`, with the processes' logs on failure."""
        try:
            outcome.assert_nothing_lost_or_duplicated()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlogs (last 6000 chars):\n{self.logs()[-6000:]}") from None


@asynccontextmanager
async def running_stack(
    infra: Infra,
    *,
    rabbitmq_url: str | None = None,
    redis_url: str | None = None,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    sandbox_port, gateway_port = free_port(), free_port()
    prefix = f"{infra.redis_prefix}stack{uuid.uuid4().hex[:8]}:"
    settings: dict[str, Any] = {
        "rabbitmq_url": rabbitmq_url or infra.rabbitmq_url,
        "redis_url": redis_url or infra.redis_url,
        "redis_prefix": prefix,
        "storage_dir": f"/tmp/offload-stack-{uuid.uuid4().hex[:8]}",
        "api_keys": f"{API_KEY}={TENANT}",
        "admin_keys": f"admin-{uuid.uuid4().hex}",
        "retry_tiers": "100ms,300ms",
        "sweep_after": "1s",
        "sweep_interval": "200ms",
        "gateway_port": gateway_port,
        "sandbox_port": sandbox_port,
        "llm_base_url": f"http://127.0.0.1:{sandbox_port}/v1",
        "llm_api_key": f"sk-{uuid.uuid4().hex}",
        "sandbox_llm_ttft_ms": 0,
        "sandbox_llm_tokens_per_s": 100000,
        "shutdown_grace_s": 5,
        "log_level": "info",
    } | overrides
    redis = connect_redis(settings["redis_url"])
    keys = RedisKeys(prefix)
    store = JobStore(redis, keys, retention_s=3600)
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    http = httpx.AsyncClient(
        base_url=gateway_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    )
    stack = Stack(settings, gateway_url, store, http, redis, keys)
    try:
        stack.start("sandbox", "offload_sandbox")
        ai_port = settings.get("metrics_port") or free_port()
        stack.start("ai", "offload_ai", metrics_port=ai_port)
        stack.start_gateway()
        await stack.wait_ready(f"http://127.0.0.1:{sandbox_port}")
        await stack.wait_ready(gateway_url, "/readyz")
        # The worker too: a scenario that faults the broker must not catch it still starting.
        await stack.wait_ready(f"http://127.0.0.1:{ai_port}", "/readyz")
        yield stack
    finally:
        for process in stack.processes.values():
            process.stop()
        await http.aclose()
        await store.aclose()
