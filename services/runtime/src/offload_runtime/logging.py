"""structlog JSON lines, with the job's context bound (DESIGN §5.8).

`job_context(...)` binds `job_id`, `type`, `attempt`, `tenant` for everything
logged inside it. Secrets never reach a log line: the processor below masks
any key that looks like one, as a second line of defence.

Tracebacks are plain text in both formats, the standard library's: never
with each frame's local variables. structlog's console renderer shows locals
by default when `rich` is installed, and an ASGI server's frames hold the
request's scope: one error in a request would print every header of it
(`Authorization: Bearer …` included) in half a megabyte of text. A traceback
is also cut to `TRACEBACK_LIMIT` characters, and a `Bearer` token that still
finds its way into one (in an exception's message) is masked.
"""

import logging
import re
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

_SECRET_MARKERS = ("key", "secret", "token", "password", "authorization")
_BEARER = re.compile(r"\b(bearer\s+)[^\s'\",;)\]}]+", re.IGNORECASE)
TRACEBACK_LIMIT = 16_000
"""Characters of one logged traceback: its start (the first exception) and its end
(the innermost frames and the final error) are kept, the middle is cut."""


def _mask_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for name in list(event_dict):
        if any(marker in name.lower() for marker in _SECRET_MARKERS) and name != "idempotency_key":
            event_dict[name] = "***"
    return event_dict


def _bound_traceback(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    text = event_dict.get("exception")
    if isinstance(text, str):
        text = _BEARER.sub(r"\1***", text)
        if len(text) > TRACEBACK_LIMIT:
            head, tail = TRACEBACK_LIMIT // 4, TRACEBACK_LIMIT * 3 // 4
            cut = len(text) - head - tail
            text = f"{text[:head]}\n… {cut} characters cut …\n{text[-tail:]}"
        event_dict["exception"] = text
    return event_dict


def configure_logging(service: str, *, level: str = "info", fmt: str = "json") -> None:
    """Set up structlog and the standard library logging for one process."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any = (
        # `exception` arrives already rendered (below); plain_traceback is named so
        # the renderer never picks rich's formatter, which prints locals.
        structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _mask_secrets,
    ]
    # Every record's exc_info becomes plain, bounded text before either renderer
    # sees it, the standard library's records (uvicorn's "Exception in ASGI
    # application") included: JSON would otherwise print the exception's repr
    # without its traceback.
    tracebacks: list[Any] = [structlog.processors.format_exc_info, _bound_traceback]
    structlog.configure(
        processors=[*shared, *tracebacks, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries (aio-pika, uvicorn, faststream) log through the standard library;
    # route them through the same renderer so every line is JSON.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tracebacks,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)


@contextmanager
def job_context(*, job_id: str, job_type: str, attempt: int, tenant: str) -> Iterator[None]:
    """Bind a job's identity to every log line written inside the block."""
    with structlog.contextvars.bound_contextvars(
        job_id=job_id, type=job_type, attempt=attempt, tenant=tenant
    ):
        yield


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
