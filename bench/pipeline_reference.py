"""The bare reference for `bench.pipeline_latency`: the least a job pipeline can do.

    uv run python -m bench.pipeline_reference http       # REF_PORT, REF_* below
    uv run python -m bench.pipeline_reference consumer

Three parts, each in its own process as Offload's are, on the same RabbitMQ and
Redis and the same server stack (uvicorn on uvloop):

- `http`: `POST /jobs` records one Redis hash, publishes the job (persistent, to
  a quorum queue, as Offload's are) and waits for the publisher confirm, then
  answers 202 with the times it recorded and had the confirm.
- `consumer`: takes each message, acks it, and publishes the completion on a
  Redis pub/sub channel (with the times it took the message and published).
- the client (`bench.pipeline_latency`) posts and listens on that channel.

No validation, no state machine, no outbox, no relay, no SSE: the gap between
this and Offload is what Offload's own guarantees cost.
"""

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
import redis.asyncio as aioredis
from pydantic_settings import BaseSettings, SettingsConfigDict

QUEUE = "reference.jobs"


class ReferenceSettings(BaseSettings):
    """`REF_*`: where the reference listens and what it talks to."""

    model_config = SettingsConfigDict(env_prefix="REF_", extra="ignore")

    port: int = 8110
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "reference:"
    prefetch: int = 64

    @property
    def channel(self) -> str:
        return f"{self.redis_prefix}completed"


async def declare(channel: aio_pika.abc.AbstractChannel) -> aio_pika.abc.AbstractQueue:
    return await channel.declare_queue(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})


def http_app(settings: ReferenceSettings) -> object:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    state: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = aioredis.from_url(settings.redis_url, decode_responses=True)
        connection = await aio_pika.connect(settings.rabbitmq_url)
        channel = await connection.channel(publisher_confirms=True)
        await declare(channel)
        state.update(redis=redis, exchange=channel.default_exchange)
        yield
        await connection.close()
        await redis.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/jobs", status_code=202)
    async def submit() -> JSONResponse:
        redis: aioredis.Redis = state["redis"]  # type: ignore[assignment]
        exchange: aio_pika.abc.AbstractExchange = state["exchange"]  # type: ignore[assignment]
        job_id = uuid.uuid4().hex
        await redis.hset(
            f"{settings.redis_prefix}job:{job_id}",
            mapping={"id": job_id, "status": "queued", "at": time.time()},
        )
        recorded = time.time()
        # With publisher confirms, publish() returns when the broker has confirmed.
        await exchange.publish(
            aio_pika.Message(
                json.dumps({"id": job_id}).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            ),
            routing_key=QUEUE,
        )
        return JSONResponse(
            {"id": job_id, "recorded": recorded, "published": time.time()}, status_code=202
        )

    return app


async def consume(settings: ReferenceSettings) -> None:
    redis = aioredis.from_url(settings.redis_url, decode_responses=True)
    connection = await aio_pika.connect(settings.rabbitmq_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=settings.prefetch)
    queue = await declare(channel)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        consumed = time.time()
        job_id = json.loads(message.body)["id"]
        await message.ack()
        completed = {"id": job_id, "consumed": consumed, "completed": time.time()}
        await redis.publish(settings.channel, json.dumps(completed))

    await queue.consume(on_message)
    await asyncio.Future()  # until the process is stopped


def main() -> None:
    import uvloop

    settings = ReferenceSettings()
    part = sys.argv[1] if len(sys.argv) > 1 else ""
    if part == "http":
        import uvicorn

        uvicorn.run(
            http_app(settings),  # type: ignore[arg-type]
            host="127.0.0.1",
            port=settings.port,
            loop="uvloop",
            log_config=None,
            access_log=False,
        )
    elif part == "consumer":
        uvloop.run(consume(settings))
    else:
        sys.exit("usage: python -m bench.pipeline_reference http|consumer")


if __name__ == "__main__":
    main()
