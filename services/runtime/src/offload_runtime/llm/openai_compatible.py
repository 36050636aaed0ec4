"""The LLM adapter: any OpenAI-compatible chat completions API over httpx, streamed.

Works with OpenAI, vLLM, Ollama, the llama.cpp server and the sandbox: it
speaks only `POST {base_url}/chat/completions` with `stream: true`.

Errors are translated once, here (DESIGN §5.2):

- 408, 409, 425, 429 and 5xx, connect/read timeouts, broken connections and
  streams that end before `[DONE]` → `TransientError`, with `retry_after`
  from `Retry-After` (seconds or an HTTP date) or `retry-after-ms`;
- any other non-200 answer → `PermanentError` with the provider's message.

The API key goes only into the `Authorization` header: it is a `SecretStr` in
the settings, never logged, and masked out of provider messages.
"""

import json
import math
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from offload_runtime.errors import PermanentError, TransientError
from offload_runtime.llm.ports import ChatChunk, ChatRequest, TokenUsage
from offload_runtime.logging import get_logger

JOB_ID_HEADER = "X-Offload-Job-Id"
"""Names the job a call belongs to; providers ignore it, the sandbox counts calls by it."""

TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})
"""Besides every 5xx: answers that may well succeed a little later."""

_ERROR_BODY_LIMIT = 8192
_MESSAGE_LIMIT = 500

log = get_logger("offload.llm")


class LlmSettings(BaseSettings):
    """`OFFLOAD_LLM_*`: which OpenAI-compatible API to call, and how patiently.

    Mixed into the settings of every service that calls an LLM.
    """

    model_config = SettingsConfigDict(env_prefix="OFFLOAD_", extra="ignore")

    llm_base_url: str = Field(
        default="http://127.0.0.1:8002/v1",
        description="Base URL of the chat completions API (up to, not including, "
        "`/chat/completions`). The default is the sandbox.",
    )
    llm_api_key: SecretStr = Field(
        default=SecretStr(""), description="Bearer API key; empty sends no Authorization."
    )
    llm_model: str = Field(
        default="sandbox", description="Model used when a job does not name one."
    )
    llm_connect_timeout_s: float = Field(
        default=10, gt=0, description="Seconds to open a connection to the provider."
    )
    llm_read_timeout_s: float = Field(
        default=60,
        gt=0,
        description="Longest silence while waiting for the answer (first token included) "
        "or between two streamed chunks.",
    )
    llm_max_connections: int = Field(
        default=500, ge=1, description="Connections one process opens to the provider at most."
    )
    llm_stream_usage: bool = Field(
        default=True,
        description="Ask for token usage in the stream (`stream_options.include_usage`); "
        "turn off for servers that reject the option.",
    )
    llm_max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        default="max_tokens",
        description="Request field for the output limit: OpenAI's reasoning models want "
        "`max_completion_tokens`.",
    )


class OpenAICompatibleClient:
    """Streams chat completions from an OpenAI-compatible API (implements `ChatModel`)."""

    def __init__(
        self, settings: LlmSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._settings = settings
        self._api_key = settings.llm_api_key.get_secret_value()
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._client = httpx.AsyncClient(
            base_url=settings.llm_base_url,
            headers=headers,
            timeout=httpx.Timeout(
                connect=settings.llm_connect_timeout_s,
                read=settings.llm_read_timeout_s,
                write=settings.llm_connect_timeout_s,
                # Waiting for a free connection is bounded by the job's own timeout.
                pool=None,
            ),
            limits=httpx.Limits(
                max_connections=settings.llm_max_connections,
                max_keepalive_connections=min(100, settings.llm_max_connections),
            ),
            follow_redirects=False,
            transport=transport,
        )

    @property
    def default_model(self) -> str:
        return self._settings.llm_model

    async def aclose(self) -> None:
        await self._client.aclose()

    def _payload(self, request: ChatRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": request.model or self._settings.llm_model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
        }
        if self._settings.llm_stream_usage:
            payload["stream_options"] = {"include_usage": True}
        if request.max_tokens is not None:
            payload[self._settings.llm_max_tokens_field] = request.max_tokens
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        return payload

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Stream one completion: text chunks, then a final chunk with model and usage."""
        payload = self._payload(request)
        headers = {JOB_ID_HEADER: request.job_id} if request.job_id else {}
        began = time.perf_counter()
        try:
            async with self._client.stream(
                "POST", "chat/completions", json=payload, headers=headers
            ) as response:
                if response.status_code != 200:
                    raise await self._refusal(response)
                content_type = response.headers.get("content-type", "")
                if "text/event-stream" in content_type:
                    parts = self._read_events(response, payload["model"], request)
                else:  # a server that ignored `stream: true` answers one JSON completion
                    parts = self._read_whole(response, payload["model"], request)
                async for chunk in parts:
                    yield chunk
        except httpx.TimeoutException as exc:
            raise TransientError(
                f"LLM provider timed out ({_timeout_kind(exc)}) after "
                f"{time.perf_counter() - began:.1f}s"
            ) from exc
        except httpx.RequestError as exc:
            raise TransientError(
                f"LLM provider connection failed: {type(exc).__name__}: {exc}"
            ) from exc
        log.debug(
            "llm call finished",
            model=payload["model"],
            seconds=round(time.perf_counter() - began, 3),
        )

    async def _read_events(
        self, response: httpx.Response, model: str, request: ChatRequest
    ) -> AsyncIterator[ChatChunk]:
        reported_model: str | None = None
        usage: TokenUsage | None = None
        finish_reason: str | None = None
        content_chunks = 0
        finished = False
        async for line in response.aiter_lines():
            # SSE: only `data:` lines matter; comments (`:`), `event:`, `id:` are skipped.
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                finished = True
                break
            event = self._decode(data)
            if "error" in event:
                # Some servers report a failure inside a 200 stream (e.g. overloaded).
                raise TransientError(f"LLM provider failed mid-stream: {self._message_of(event)}")
            reported_model = event.get("model") or reported_model
            if isinstance(event.get("usage"), dict):
                usage = _usage(event["usage"]) or usage
            for choice in event.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue
                text = (choice.get("delta") or {}).get("content")
                if text:
                    content_chunks += 1
                    yield ChatChunk(text=text)
                finish_reason = choice.get("finish_reason") or finish_reason
        if not finished and finish_reason is None:
            raise TransientError("the LLM stream ended before the answer was complete")
        yield ChatChunk(
            done=True,
            model=reported_model or model,
            usage=usage or _estimate(request, content_chunks),
            finish_reason=finish_reason,
        )

    async def _read_whole(
        self, response: httpx.Response, model: str, request: ChatRequest
    ) -> AsyncIterator[ChatChunk]:
        event = self._decode((await response.aread()).decode(errors="replace"))
        choices = event.get("choices") or [{}]
        message = choices[0].get("message") or {}
        text = message.get("content") or ""
        if text:
            yield ChatChunk(text=text)
        yield ChatChunk(
            done=True,
            model=event.get("model") or model,
            usage=_usage(event.get("usage")) or _estimate(request, len(text.split())),
            finish_reason=choices[0].get("finish_reason"),
        )

    def _decode(self, data: str) -> dict[str, Any]:
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise TransientError(f"LLM provider sent malformed JSON: {data[:200]!r}") from exc
        if not isinstance(event, dict):
            raise TransientError(f"LLM provider sent unexpected JSON: {data[:200]!r}")
        return event

    async def _refusal(self, response: httpx.Response) -> TransientError | PermanentError:
        body = bytearray()
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) >= _ERROR_BODY_LIMIT:
                break
        text = body[:_ERROR_BODY_LIMIT].decode(errors="replace")
        try:
            parsed = json.loads(text)
            message = self._message_of(parsed) if isinstance(parsed, dict) else text
        except ValueError:
            message = text
        status = response.status_code
        described = f"LLM provider answered HTTP {status}: {message or response.reason_phrase}"
        log.info("llm call refused", status=status, model_error=message[:200])
        if status in TRANSIENT_STATUSES or status >= 500:
            return TransientError(described, retry_after=retry_after_s(response.headers))
        return PermanentError(described)

    def _message_of(self, body: Mapping[str, Any]) -> str:
        """The provider's own error message, whichever shape it uses."""
        error = body.get("error")
        if isinstance(error, dict):
            found: Any = error.get("message") or error
        else:
            found = error or body.get("detail") or body.get("message") or body
        message = found if isinstance(found, str) else json.dumps(found)[:_MESSAGE_LIMIT]
        if self._api_key:
            message = message.replace(self._api_key, "[redacted]")
        return message[:_MESSAGE_LIMIT]


def retry_after_s(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds to wait, from `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date."""
    if (milliseconds := headers.get("retry-after-ms")) is not None:
        try:
            return _non_negative(float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return _non_negative(float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _non_negative(seconds: float) -> float | None:
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _usage(raw: Any) -> TokenUsage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return TokenUsage(prompt_tokens=prompt, completion_tokens=completion)


def _estimate(request: ChatRequest, completion_chunks: int) -> TokenUsage:
    """A rough count for providers that report no usage: ~4 characters a prompt token."""
    prompt_chars = sum(len(message.content) for message in request.messages)
    return TokenUsage(
        prompt_tokens=math.ceil(prompt_chars / 4),
        completion_tokens=completion_chunks,
        estimated=True,
    )


def _timeout_kind(exc: httpx.TimeoutException) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect"
    if isinstance(exc, httpx.ReadTimeout):
        return "waiting for the answer"
    if isinstance(exc, httpx.PoolTimeout):
        return "waiting for a free connection"
    return "sending the request"
