"""The real notifier, a real webhook receiver and an SSE reader, for the notifier's tests.

    async with running_notifier(infra, space) as notifier:
        job = await space.jobs.create(webhook={"url": receiver.url("a")})

A `NotifierSpace` is one test's world: its own Redis key prefix (so its own
outbox, jobs and tenant streams) and its own queue names (`<service>.jobs`,
`.retry.<tier>`, `.dead`, `.dead-alerts`) in the run's vhost. Two notifiers
started on the same space share the outbox and the queues, as two replicas do.
"""

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response
from standardwebhooks.webhooks import Webhook

from offload_contracts import Contract, JobRequestBase, topology
from offload_notifier.app import Notifier, build_app
from offload_notifier.settings import NotifierSettings
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis
from offload_runtime.store import JobStore, new_id
from offload_runtime.webhook_secrets import WebhookSecrets
from tests.support.infra import Infra
from tests.support.serving import free_port, serve
from tests.support.topologies import delete_queues, service_queue_names

TENANTS = ("acme", "globex")


# --------------------------------------------------------------------------- jobs


class NoteInput(Contract):
    text: str = "hello"


class NoteRequest(JobRequestBase):
    """A job type of the notifier's tests; nothing runs it, the test drives its store."""

    type: Literal["note.job"] = "note.job"
    input: NoteInput


@dataclass
class JobDriver:
    """Moves jobs through their states the way the gateway and a worker would."""

    store: JobStore
    runs: dict[str, str] = field(default_factory=dict)

    async def create(
        self, tenant: str = TENANTS[0], *, webhook: dict[str, Any] | None = None
    ) -> NoteRequest:
        request = NoteRequest(
            id=new_id(),
            tenant=tenant,
            max_attempts=3,
            created_at=datetime.now(UTC),
            input=NoteInput(),
        )
        assert (await self.store.create(request, webhook=webhook)).applied
        return request

    async def start(self, request: NoteRequest) -> None:
        self.runs[request.id] = new_id()
        assert (await self.store.start(request, self.runs[request.id], redelivered=False)).applied

    async def progress(self, request: NoteRequest, percent: float) -> None:
        run = self.runs[request.id]
        assert (await self.store.progress(request, run, percent, f"{percent:g}%")).applied

    async def complete(self, request: NoteRequest, **result: Any) -> None:
        run = self.runs[request.id]
        assert (await self.store.complete(request, run, result or {"ok": True})).applied


# --------------------------------------------------------------------------- the space


@dataclass
class NotifierSpace:
    """One test's Redis prefix, queue names, API keys and job store."""

    infra: Infra
    prefix: str
    service: str
    api_keys: dict[str, str]
    store: JobStore
    jobs: JobDriver
    redis: "aioredis.Redis"
    declared: set[str] = field(default_factory=set)  # queues under `service`, to delete after

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.prefix)

    def settings(self, **overrides: Any) -> NotifierSettings:
        values: dict[str, Any] = {
            "rabbitmq_url": self.infra.rabbitmq_url,
            "redis_url": self.infra.redis_url,
            "redis_prefix": self.prefix,
            "notifier_service": self.service,
            "api_keys": ",".join(f"{key}={tenant}" for tenant, key in self.api_keys.items()),
            "retry_tiers": "50ms,100ms",
            "webhook_allow_private": True,
            "webhook_timeout_s": 2.0,
            "relay_block_ms": 100,
            "relay_claim_idle_ms": 300,
            "relay_trim_interval_s": 0.1,
            "relay_retry_s": 0.1,
            "sse_ping_s": 15.0,
            "sse_block_ms": 1000,
            "log_level": "warning",
        }
        values.update(overrides)
        settings = NotifierSettings(**values)
        if settings.notifier_service == self.service:
            self.declared.update(service_queue_names(self.service, settings.tiers))
            self.declared.add(topology.dead_alerts_queue(self.service))
        return settings

    def headers(self, tenant: str = TENANTS[0]) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_keys[tenant]}"}

    async def secrets(self, tenant: str = TENANTS[0]) -> list[str]:
        return await WebhookSecrets(self.redis, self.keys).signing(tenant)


@asynccontextmanager
async def notifier_space(infra: Infra) -> AsyncIterator[NotifierSpace]:
    run = uuid.uuid4().hex[:10]
    prefix = f"{infra.redis_prefix}nt{run}:"
    client = connect_redis(infra.redis_url)
    store = JobStore(client, RedisKeys(prefix), retention_s=3600, events_maxlen=100)
    space = NotifierSpace(
        infra=infra,
        prefix=prefix,
        service=f"nt{run}",
        api_keys={tenant: f"key-{tenant}-{uuid.uuid4().hex}" for tenant in TENANTS},
        store=store,
        jobs=JobDriver(store),
        redis=client,
    )
    try:
        yield space
    finally:
        await client.aclose()
        # Its queues hold broker file handles until deleted (tests/support/topologies.py).
        await delete_queues(infra.rabbitmq_url, sorted(space.declared))


@dataclass
class RunningNotifier:
    base_url: str
    app: FastAPI
    space: NotifierSpace

    @property
    def parts(self) -> Notifier:
        parts: Notifier = self.app.state.notifier
        return parts

    def client(self, tenant: str | None = TENANTS[0], **kwargs: Any) -> httpx.AsyncClient:
        headers = {**(self.space.headers(tenant) if tenant else {}), **kwargs.pop("headers", {})}
        return httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=kwargs.pop("timeout", 10), **kwargs
        )


@asynccontextmanager
async def running_notifier(
    space: NotifierSpace, *, port: int | None = None, **overrides: Any
) -> AsyncIterator[RunningNotifier]:
    app = build_app(space.settings(**overrides))
    async with serve(app, port) as base_url:
        yield RunningNotifier(base_url, app, space)


# --------------------------------------------------------------------------- receiver


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time()

    @property
    def json(self) -> Any:
        return json.loads(self.body)


Script = Callable[[int], tuple[int, dict[str, str]]]
"""For a path: (n-th request to it, from 1) → (status, headers)."""


class Receiver:
    """A webhook receiver over real HTTP: records every request, answers as scripted."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.scripts: dict[str, Script] = {}
        self._arrived = asyncio.Event()
        self.app = FastAPI()

        @self.app.post("/{path:path}")
        async def hook(path: str, request: Request) -> Response:
            body = await request.body()
            item = Received(path, dict(request.headers), body, time.time())
            self.received.append(item)
            self._arrived.set()
            count = sum(1 for r in self.received if r.path == path)
            status, headers = self.scripts.get(path, lambda n: (200, {}))(count)
            return Response(status_code=status, headers=headers)

    def script(self, path: str, answers: Iterable[int | tuple[int, dict[str, str]]]) -> None:
        """Answer the path's requests with these statuses in turn, then 200."""
        listed = [(a, {}) if isinstance(a, int) else a for a in answers]
        self.scripts[path] = lambda n: listed[n - 1] if n <= len(listed) else (200, {})

    def at(self, path: str) -> list[Received]:
        return [item for item in self.received if item.path == path]

    async def wait_for(self, path: str, count: int, timeout: float = 10) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.at(path)) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"receiver got {len(self.at(path))} of {count} requests on /{path}"
                )
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.2))
        return self.at(path)


def verify(received: Received, secrets: list[str]) -> Any:
    """Check the signature with the reference implementation (`standardwebhooks`).

    Raises `WebhookVerificationError` when no secret verifies it; returns the body.
    """
    last: Exception | None = None
    for secret in secrets:
        try:
            return Webhook(secret).verify(received.body, received.headers)
        except Exception as exc:
            last = exc
    assert last is not None
    raise last


# --------------------------------------------------------------------------- SSE


@dataclass(frozen=True)
class SSE:
    """One SSE message as a client parses it (`comment` for `: ping` lines)."""

    event: str | None = None
    data: str | None = None
    id: str | None = None
    comment: str | None = None

    @property
    def json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)


class SSEReader:
    """Reads an open SSE response message by message."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.closed = False

    async def next(self, timeout: float = 5) -> SSE | None:
        """The next message or comment; None when the server closed the stream."""
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> SSE | None:
        fields: dict[str, str] = {}
        data: list[str] = []
        async for line in self._lines:
            if line == "":
                if fields or data:
                    return SSE(
                        event=fields.get("event"),
                        data="\n".join(data) if data else None,
                        id=fields.get("id"),
                        comment=fields.get("comment"),
                    )
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                fields["comment"] = value
            elif name == "data":
                data.append(value)
            else:
                fields[name] = value
        self.closed = True
        return None

    async def events(self, count: int, timeout: float = 5) -> list[SSE]:
        """The next `count` events, skipping pings."""
        found: list[SSE] = []
        while len(found) < count:
            message = await self.next(timeout)
            if message is None:
                raise AssertionError(f"stream closed after {len(found)} of {count} events")
            if message.comment is None:
                found.append(message)
        return found

    async def rest(self, timeout: float = 5) -> list[SSE]:
        """Every event until the server closes the stream."""
        found: list[SSE] = []
        while (message := await self.next(timeout)) is not None:
            if message.comment is None:
                found.append(message)
        return found


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient, path: str, *, last_event_id: str | None = None
) -> AsyncIterator[SSEReader]:
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    async with client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, (response.status_code, await response.aread())
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SSEReader(response)


async def until(predicate: Callable[[], Any], timeout: float = 10, what: str = "") -> None:
    """Poll `predicate` (sync or async) until truthy, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- processes


@dataclass
class NotifierProcess:
    """`python -m offload_notifier` in its own process, as deployed."""

    base_url: str
    process: asyncio.subprocess.Process
    log: Any

    def kill(self) -> None:
        """SIGKILL: no shutdown, no acknowledgement, connections dropped."""
        self.process.kill()


@asynccontextmanager
async def notifier_processes(
    space: NotifierSpace, count: int, **settings: Any
) -> AsyncIterator[list[NotifierProcess]]:
    """Start `count` notifier processes at once on the space's settings (overrides become
    their OFFLOAD_* variables), and stop them (SIGTERM) at the end."""
    values = space.settings(**settings).model_dump(exclude={"notifier_consumer"})
    env = {**os.environ}
    for name, value in values.items():
        if value is not None:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            env[f"OFFLOAD_{name.upper()}"] = text
    with contextlib.ExitStack() as logs:
        started: list[NotifierProcess] = []
        try:
            for _ in range(count):
                port = free_port()
                log = logs.enter_context(tempfile.TemporaryFile())
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "offload_notifier",
                    env={**env, "OFFLOAD_NOTIFIER_PORT": str(port)},
                    stdout=log,
                    stderr=log,
                )
                started.append(NotifierProcess(f"http://127.0.0.1:{port}", process, log))
            await asyncio.gather(*(_until_ready(running) for running in started))
            yield started
        finally:
            await asyncio.gather(*(_stop(running) for running in started))


async def _stop(running: NotifierProcess) -> None:
    process = running.process
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _until_ready(running: NotifierProcess) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=running.base_url) as http:
        while True:
            if running.process.returncode is not None:
                running.log.seek(0)
                raise RuntimeError(f"notifier exited: {running.log.read().decode()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/readyz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("notifier process never became ready")
            await asyncio.sleep(0.1)
