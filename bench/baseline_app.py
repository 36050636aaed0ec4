"""The "before" of Offload: one FastAPI process that does the heavy work inside the request.

    uv run python -m bench.baseline_app   # BASELINE_PORT, BASELINE_LLM_BASE_URL, ...

What a web application looks like before it offloads anything, doing the very
same work as Offload's workers, with the same code where there is code to share:

- `POST /v1/jobs` `{"type": "ai.generate", ...}`: the ai service's own
  `generate` (the runtime's OpenAI-compatible httpx adapter, streamed) is
  awaited inside the request.
- `research.run`: the research service's own chain (`run_research`: plan,
  answers, report) is awaited inside the request.
- `image.process`: the image service's Pillow pipeline (`offload_image.pipeline.render`)
  runs inside the request handler, on the event loop, as a naive app does.
- `GET /v1/jobs/{id}`: the light request, a Redis read, as Offload's gateway does.
- `POST /v1/files`: a raw upload kept on disk (the image jobs' source).

Each job is recorded in Redis (running, then completed) so the light endpoint
reads real records. This is a benchmark fixture, not a product.
"""

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from offload_ai.generation import generate
from offload_contracts import AiGenerateInput, ImageProcessInput, ResearchRunInput
from offload_research.research import ResearchLimits, run_research
from offload_runtime.llm.openai_compatible import LlmSettings, OpenAICompatibleClient


class BaselineSettings(BaseSettings):
    """`BASELINE_*`: where the baseline listens and what it talks to."""

    model_config = SettingsConfigDict(env_prefix="BASELINE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8100
    api_key: str = Field(default="bench-key", description="The one bearer key it accepts.")
    llm_base_url: str = "http://127.0.0.1:8002/v1"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "baseline:"
    files_dir: Path = Path("var/baseline-files")
    max_pixels: int = 100_000_000


def build_app(settings: BaselineSettings | None = None) -> FastAPI:
    settings = settings or BaselineSettings()
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    # Every request in flight holds a Redis call at some point: a pool as large as the load.
    redis = aioredis.from_url(settings.redis_url, decode_responses=True, max_connections=2000)
    llm = OpenAICompatibleClient(
        LlmSettings(llm_base_url=settings.llm_base_url, llm_max_connections=1000)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await llm.aclose()
        await redis.aclose()

    app = FastAPI(title="Offload bench baseline (work in the request)", lifespan=lifespan)

    def job_key(job_id: str) -> str:
        return f"{settings.redis_prefix}job:{job_id}"

    def authorize(request: Request) -> None:
        if request.headers.get("authorization") != f"Bearer {settings.api_key}":
            raise HTTPException(401, "missing or unknown API key")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/files", status_code=201)
    async def upload(request: Request) -> dict[str, Any]:
        authorize(request)
        body = await request.body()
        file_id = uuid.uuid4().hex
        (settings.files_dir / file_id).write_bytes(body)
        return {"id": file_id, "bytes": len(body)}

    @app.post("/v1/jobs")
    async def run_job(request: Request) -> JSONResponse:
        authorize(request)
        body = await request.json()
        job_id = uuid.uuid4().hex
        job_type = body.get("type")
        await redis.hset(
            job_key(job_id),
            mapping={"id": job_id, "type": str(job_type), "status": "active", "at": time.time()},
        )
        try:
            ctx = RequestContext(redis, job_key(job_id), job_id)
            if job_type == "ai.generate":
                spec = AiGenerateInput.model_validate(body["input"])
                result = (await generate(spec, llm, ctx)).model_dump(mode="json")
            elif job_type == "research.run":
                spec_r = ResearchRunInput.model_validate(body["input"])
                done = await run_research(spec_r, llm, ctx, ResearchLimits())
                result = done.model_dump(mode="json")
            elif job_type == "image.process":
                result = process_image(
                    ImageProcessInput.model_validate(body["input"]), settings, job_id
                )
            else:
                raise HTTPException(422, f"unknown job type {job_type!r}")
        except ValidationError as exc:
            raise HTTPException(422, str(exc)) from exc
        await redis.hset(
            job_key(job_id), mapping={"status": "completed", "result": json.dumps(result)}
        )
        return JSONResponse({"id": job_id, "status": "completed", "result": result})

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, request: Request) -> dict[str, Any]:
        authorize(request)
        data: dict[str, str] = await redis.hgetall(job_key(job_id))  # type: ignore[assignment]
        if not data:
            raise HTTPException(404, "no such job")
        record: dict[str, Any] = dict(data)
        if "result" in record:
            record["result"] = json.loads(record["result"])
        return record

    return app


class RequestContext:
    """The job context of work done inside a request: progress to Redis, checkpoints in memory.

    It lets the baseline call the ai and research services' own domain functions,
    so the work is the same code; only where it runs differs.
    """

    def __init__(self, redis: "aioredis.Redis", key: str, job_id: str) -> None:
        self._redis = redis
        self._key = key
        self._job_id = job_id
        self._checkpoints: dict[str, str] = {}
        self._last_progress = 0.0

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def tenant(self) -> str:
        return "bench"

    @property
    def attempt(self) -> int:
        return 1

    @property
    def cancel_requested(self) -> bool:
        return False

    async def progress(self, percent: float, message: str = "") -> None:
        # Throttled like Offload's (two a second), so both write about as often.
        now = time.monotonic()
        if now - self._last_progress >= 0.5:
            self._last_progress = now
            await self._redis.hset(self._key, mapping={"percent": percent, "message": message})

    async def load_checkpoint(self, step: str) -> str | None:
        return self._checkpoints.get(step)

    async def save_checkpoint(self, step: str, value: str) -> None:
        self._checkpoints[step] = value


def process_image(
    spec: ImageProcessInput, settings: BaselineSettings, job_id: str
) -> dict[str, Any]:
    """The image service's own Pillow pipeline, run right here on the event loop."""
    from offload_image.pipeline import render

    if spec.source.file_id is None:
        raise HTTPException(422, "the baseline reads uploaded files only")
    source = settings.files_dir / spec.source.file_id
    if not source.exists():
        raise HTTPException(404, "no such file")
    out_dir = settings.files_dir / f"out-{job_id}"
    out_dir.mkdir()
    outputs = render(source, spec.operations, out_dir, max_pixels=settings.max_pixels)
    return {"outputs": len(outputs)}


def main() -> None:
    settings = BaselineSettings()
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level="warning")


if __name__ == "__main__":
    main()
