"""The sandbox LLM: an OpenAI-compatible `POST /v1/chat/completions`, offline.

What it answers is derived from the prompt (hash-seeded words in sentences and
paragraphs), so the same prompt always gets the same text, whatever the model
name. It streams like OpenAI (SSE `data:` chunks, a usage chunk when
`stream_options.include_usage` is set, then `data: [DONE]`) at a configurable
time to first token and tokens per second, and answers without streaming too.

Failure injection, chosen by the model name (DESIGN §8):

| model | behaviour |
|---|---|
| `sandbox` | works |
| `sandbox-fail-N` | the first N calls of a job answer 503, later ones work |
| `sandbox-fail-at-K` | only the K-th call of a job answers 503 (resume tests) |
| `sandbox-ratelimit-N` | the first N calls of a job answer 429 with `Retry-After` |
| `sandbox-drop-N` | the first N calls of a job stream half the answer, then end without `[DONE]` |
| `sandbox-reject` | always 400 (a permanent error) |

A job is named by the `X-Offload-Job-Id` header (Offload's LLM adapter sends
it), else by the request's `user` field; calls with neither share one count.
Call numbers count every call of the job, whatever its model.
`GET /v1/sandbox/llm/calls?job=ID` lists a job's calls (index, model, outcome),
so tests and demos can count them.
"""

import asyncio
import hashlib
import json
import random
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from offload_sandbox.settings import SandboxSettings

JOB_HEADER = "x-offload-job-id"
"""The header naming the job a call belongs to (what failure injection counts by)."""
TTFT_HEADER = "x-sandbox-ttft-ms"
"""Per-request override of the time to first token, in milliseconds."""
TPS_HEADER = "x-sandbox-tokens-per-s"
"""Per-request override of the tokens per second."""

ANONYMOUS_JOB = "-"
PROMPT_SAMPLE_CHARS = 200
MAX_GENERATED_TOKENS = 100_000

_MODEL = re.compile(r"^sandbox(?:-(fail|fail-at|ratelimit|drop)-(\d{1,6})|-(reject))?$")

Outcome = Literal[
    "streaming", "completed", "failed", "rate_limited", "rejected", "dropped", "disconnected"
]


# --------------------------------------------------------------------------- request


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, list):  # OpenAI's content parts
            return " ".join(str(part.get("text", "")) for part in self.content)
        return ""


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The part of OpenAI's chat completions request the sandbox reads; the rest is accepted."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[_Message] = Field(min_length=1)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    user: str | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# --------------------------------------------------------------------------- behaviour


@dataclass(frozen=True)
class Injection:
    """What the model name asks the sandbox to do."""

    kind: Literal["ok", "fail", "fail_at", "ratelimit", "drop", "reject"]
    n: int = 0

    @classmethod
    def parse(cls, model: str) -> "Injection | None":
        match = _MODEL.match(model)
        if match is None:
            return None
        kind, number, reject = match.groups()
        if reject:
            return cls("reject")
        if kind is None:
            return cls("ok")
        return cls(kind.replace("-", "_"), int(number))  # type: ignore[arg-type]

    def outcome_for(self, call_index: int) -> Literal["ok", "fail", "ratelimit", "drop", "reject"]:
        """What call number `call_index` (from 1) of a job gets."""
        if self.kind == "reject":
            return "reject"
        if self.kind == "fail_at":
            return "fail" if call_index == self.n else "ok"
        if self.kind in ("fail", "ratelimit", "drop") and call_index <= self.n:
            return self.kind
        return "ok"


_VOCABULARY = (
    "system queue worker latency signal river stone market bridge pattern garden engine "
    "harbor lantern measure orbit planet record season timber valley window beacon canvas "
    "cipher delta ember fabric glacier horizon island journey kernel ledger meadow needle "
    "ocean prism quartz ribbon summit thread vector willow yield zephyr anchor balance "
    "cluster density echo filter gradient harvest index junction knot lattice mosaic "
    "network outline parcel quorum relay sample tensor update vertex wave archive budget "
    "channel digest estimate forecast graph hypothesis insight journal keystone lens "
    "method notion option proof question reason source theory unit value workload "
    "careful steady quiet rapid broad narrow bright subtle plain early late common rare "
    "simple complex direct gentle honest modest robust shared local remote stable "
    "observes builds carries shapes reveals measures connects follows guides holds "
    "improves joins keeps links moves notes opens places reads sends tests turns "
    "the a of in on for with across under over between through within beyond "
    "and but so yet because while although"
)
_WORDS = tuple(_VOCABULARY.split())


def generate_tokens(
    messages: Sequence[_Message], natural_tokens: int, limit: int | None
) -> tuple[list[str], str]:
    """The answer's tokens (one word each, spacing included) and its finish reason.

    Seeded by the prompt, so the same messages give the same text. The natural
    answer is whole sentences of about `natural_tokens` words; `limit`
    (max_tokens) cuts it short with finish reason `length`.
    """
    digest = hashlib.sha256(
        json.dumps([(m.role, m.text()) for m in messages], ensure_ascii=False).encode()
    ).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    target = max(1, round(natural_tokens * rng.uniform(0.75, 1.25)))
    cap = min(limit or MAX_GENERATED_TOKENS, MAX_GENERATED_TOKENS)
    tokens: list[str] = []
    sentences_left_in_paragraph = rng.randint(3, 5)
    while len(tokens) < min(target, cap):
        length = rng.randint(6, 14)
        for position in range(length):
            word = rng.choice(_WORDS)
            if position == 0:
                word = word.capitalize()
            if position == length - 1:
                word += "."
            if not tokens:
                tokens.append(word)
            elif position == 0 and sentences_left_in_paragraph == 0:
                tokens.append("\n\n" + word)
            else:
                tokens.append(" " + word)
        sentences_left_in_paragraph -= 1
        if sentences_left_in_paragraph < 0:
            sentences_left_in_paragraph = rng.randint(3, 5)
    if len(tokens) > cap:
        return tokens[:cap], "length"
    return tokens, "stop"


# --------------------------------------------------------------------------- call log


@dataclass
class CallRecord:
    """One call the sandbox answered, as `GET /v1/sandbox/llm/calls` shows it."""

    index: int
    model: str
    stream: bool
    status: int
    outcome: Outcome
    prompt: str
    completion_tokens: int = 0
    started_at: float = field(default_factory=time.time)


class CallLog:
    """Calls per job, for failure injection and for tests that count calls.

    Bounded: the oldest jobs are forgotten past `max_jobs`, so a long load
    test does not grow the sandbox without end.
    """

    def __init__(self, max_jobs: int) -> None:
        self._max_jobs = max_jobs
        self._jobs: OrderedDict[str, list[CallRecord]] = OrderedDict()

    def open(self, job: str, record_for: Callable[[int], CallRecord]) -> CallRecord:
        """Number the job's next call and record it (`record_for(index) -> CallRecord`)."""
        calls = self._jobs.get(job)
        if calls is None:
            calls = self._jobs[job] = []
            while len(self._jobs) > self._max_jobs:
                self._jobs.popitem(last=False)
        else:
            self._jobs.move_to_end(job)
        record: CallRecord = record_for(len(calls) + 1)
        calls.append(record)
        return record

    def calls(self, job: str) -> list[CallRecord]:
        return list(self._jobs.get(job, ()))


# --------------------------------------------------------------------------- wire format


def _error(status: int, message: str, *, kind: str, code: str, **headers: str) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers or None)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


@dataclass(frozen=True)
class _Pace:
    ttft_s: float
    seconds_per_token: float

    def due(self, started: float, token_index: int) -> float:
        """When token `token_index` (from 0) is due, on the loop's clock."""
        return started + self.ttft_s + token_index * self.seconds_per_token


def _pace_of(request: Request, settings: SandboxSettings) -> _Pace | str:
    try:
        ttft_ms = float(request.headers.get(TTFT_HEADER, settings.sandbox_llm_ttft_ms))
        tps = float(request.headers.get(TPS_HEADER, settings.sandbox_llm_tokens_per_s))
    except ValueError:
        return f"{TTFT_HEADER} and {TPS_HEADER} must be numbers"
    if ttft_ms < 0 or tps <= 0:
        return f"{TTFT_HEADER} must be >= 0 and {TPS_HEADER} > 0"
    return _Pace(ttft_ms / 1000, 1 / tps)


# --------------------------------------------------------------------------- router


def build_router(settings: SandboxSettings) -> APIRouter:
    """The sandbox LLM's routes: chat completions and the call log."""
    router = APIRouter(tags=["sandbox: LLM"])
    log = CallLog(settings.sandbox_llm_tracked_jobs)

    @router.post("/v1/chat/completions", summary="OpenAI-compatible chat completion")
    async def chat_completions(request: Request) -> Any:
        try:
            body = ChatCompletionRequest.model_validate(await request.json())
        except (ValueError, ValidationError) as exc:
            return _error(400, _problem_text(exc), kind="invalid_request_error", code="invalid")
        injection = Injection.parse(body.model)
        if injection is None:
            return _error(
                404,
                f"The model `{body.model}` does not exist. The sandbox serves `sandbox`, "
                "`sandbox-fail-N`, `sandbox-fail-at-K`, `sandbox-ratelimit-N`, "
                "`sandbox-drop-N` and `sandbox-reject`.",
                kind="invalid_request_error",
                code="model_not_found",
            )
        pace = _pace_of(request, settings)
        if isinstance(pace, str):
            return _error(400, pace, kind="invalid_request_error", code="invalid")

        job = request.headers.get(JOB_HEADER) or body.user or ANONYMOUS_JOB
        prompt = body.messages[-1].text()[:PROMPT_SAMPLE_CHARS]

        def record_for(index: int) -> CallRecord:
            return CallRecord(index, body.model, body.stream, 200, "streaming", prompt)

        record = log.open(job, record_for)
        outcome = injection.outcome_for(record.index)
        if outcome == "reject":
            record.status, record.outcome = 400, "rejected"
            return _error(
                400,
                "sandbox-reject refuses every request (an injected permanent error).",
                kind="invalid_request_error",
                code="sandbox_rejected",
            )
        if outcome == "fail":
            record.status, record.outcome = 503, "failed"
            return _error(
                503,
                f"The sandbox is unavailable for call {record.index} of job {job} "
                f"(injected by model {body.model}).",
                kind="server_error",
                code="sandbox_unavailable",
            )
        if outcome == "ratelimit":
            record.status, record.outcome = 429, "rate_limited"
            return _error(
                429,
                f"Rate limit reached for call {record.index} of job {job} "
                f"(injected by model {body.model}).",
                kind="requests",
                code="rate_limit_exceeded",
                **{"Retry-After": f"{settings.sandbox_llm_retry_after_s:g}"},
            )

        tokens, finish_reason = generate_tokens(
            body.messages, settings.sandbox_llm_answer_tokens, body.token_limit
        )
        prompt_tokens = sum(len(m.text().split()) for m in body.messages)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if not body.stream:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, pace.due(loop.time(), len(tokens)) - loop.time()))
            record.completion_tokens, record.outcome = len(tokens), "completed"
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": body.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(tokens)},
                            "logprobs": None,
                            "finish_reason": finish_reason,
                        }
                    ],
                    "usage": _usage(prompt_tokens, len(tokens)),
                }
            )

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        drop_after = len(tokens) // 2 if outcome == "drop" else None

        def chunk(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                payload["usage"] = None
            return payload

        async def events() -> AsyncIterator[bytes]:
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                yield _sse(chunk({"role": "assistant", "content": ""}, None))
                for i, token in enumerate(tokens):
                    if drop_after is not None and i == drop_after:
                        record.outcome = "dropped"
                        return  # the body ends here: no finish reason, no [DONE]
                    delay = pace.due(started, i) - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    record.completion_tokens = i + 1
                    yield _sse(chunk({"content": token}, None))
                yield _sse(chunk({}, finish_reason))
                if include_usage:
                    yield _sse(
                        {
                            "id": completion_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": body.model,
                            "choices": [],
                            "usage": _usage(prompt_tokens, len(tokens)),
                        }
                    )
                yield _sse("[DONE]")
                record.outcome = "completed"
            finally:
                if record.outcome == "streaming":
                    # Cancelled by Starlette when the client went away mid-stream.
                    record.outcome = "disconnected"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/v1/sandbox/llm/calls", summary="The calls the sandbox LLM saw for a job")
    async def calls(
        job: str = Query(min_length=1, max_length=200, description="The job id (or `-`)."),
    ) -> dict[str, Any]:
        records = log.calls(job)
        return {"job": job, "count": len(records), "calls": [asdict(r) for r in records]}

    return router


def _problem_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return f"Invalid request: {where}: {first['msg']}"
    return "Invalid request: the body must be a JSON object"
