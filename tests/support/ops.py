"""Support for the operations tests: a RabbitMQ vhost of their own, and a stub `ai` worker.

The admin API reads whole queues (`ai.dead`, `ai.jobs`), so its tests work in
a vhost of their own: messages other tests leave in the run's shared vhost
would otherwise show up in their pages and counts. The vhost name carries the
run's pid like the run's own, so a killed run's vhost is removed by the next.

`StubAi` is a real worker (`build_worker`, the real runner) for `ai.generate`
whose job function is a stand-in: a prompt in `failing` fails permanently, one
starting with `hold:` waits for `gate`, any other completes at once. A test
"fixes the cause" of a failure by removing the prompt from `failing`, then
replays the dead letter.
"""

import asyncio
import contextlib
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from offload_contracts import POLICIES, AiGenerateRequest, AiGenerateResult, topology
from offload_contracts.jobs import Usage
from offload_runtime.errors import PermanentError
from offload_runtime.ports import JobContext
from offload_runtime.runner import JobHandler
from offload_runtime.settings import WorkerSettings
from offload_runtime.worker import Worker, build_worker
from tests.support.gateway import RunningGateway
from tests.support.infra import VHOST_PREFIX, Infra, Rabbitmqctl
from tests.support.notifier import RunningNotifier, notifier_space, running_notifier

ADMIN_KEY = "admin-key-for-ops-tests"


@asynccontextmanager
async def own_vhost(infra: Infra) -> AsyncIterator[Infra]:
    """`infra` with a fresh RabbitMQ vhost (same Redis, same key prefix)."""
    ctl = Rabbitmqctl()
    vhost = f"{VHOST_PREFIX}{os.getpid()}-ops{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(ctl, "add_vhost", vhost)
    await asyncio.to_thread(ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    parts = urlsplit(infra.rabbitmq_url)
    try:
        yield dataclasses.replace(
            infra, rabbitmq_url=urlunsplit(parts._replace(path="/" + vhost)), vhost=vhost
        )
    finally:
        # Tolerate a vhost already gone (another run's stale-vhost sweep may take it).
        with contextlib.suppress(RuntimeError):
            await asyncio.to_thread(ctl, "delete_vhost", vhost)


@dataclass
class StubAi:
    """What the stub `ai.generate` job does: fail for good on the prompts in `failing`."""

    failing: set[str] = field(default_factory=set)
    delay_s: float = 0.0
    runs: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    """A prompt starting with `hold:` waits for this before it completes."""

    def handler(self) -> JobHandler[AiGenerateRequest]:
        async def run(request: AiGenerateRequest, ctx: JobContext) -> AiGenerateResult:
            self.runs.append(request.id)
            await ctx.progress(50, "thinking")
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if request.input.prompt.startswith("hold:"):
                await self.gate.wait()
            if request.input.prompt in self.failing:
                raise PermanentError(f"the provider refused the prompt {request.input.prompt!r}")
            return AiGenerateResult(
                text=f"echo: {request.input.prompt}",
                model="stub",
                usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3),
            )

        return JobHandler(AiGenerateRequest, run, POLICIES["ai.generate"])

    async def start(self, infra: Infra, redis_prefix: str, **overrides: Any) -> Worker:
        values: dict[str, Any] = {
            "rabbitmq_url": infra.rabbitmq_url,
            "redis_url": infra.redis_url,
            "redis_prefix": redis_prefix,
            "retry_tiers": "50ms,100ms",
            "concurrency": 4,
            "shutdown_grace_s": 1,
            "log_level": "warning",
        }
        values.update(overrides)
        worker = build_worker(
            service="ai", settings=WorkerSettings(**values), handlers=[self.handler()]
        )
        await worker.app.start()
        return worker


def admin_client(base_url: str, key: str = ADMIN_KEY) -> "httpx.AsyncClient":
    """An HTTP client that sends the admin key."""
    return httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


@asynccontextmanager
async def deployed_notifier(
    infra: Infra, gateway: RunningGateway, **overrides: Any
) -> AsyncIterator[RunningNotifier]:
    """A notifier with the deployed queue names (`notifier.*`), reading `gateway`'s outbox."""
    async with notifier_space(infra) as space:
        shared = dataclasses.replace(
            space, prefix=gateway.settings.redis_prefix, service=topology.NOTIFIER_SERVICE
        )
        async with running_notifier(shared, **overrides) as notifier:
            yield notifier
