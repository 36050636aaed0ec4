"""structlog JSON lines, with the job's context bound (DESIGN §5.8).

`job_context(...)` binds `job_id`, `type`, `attempt`, `tenant` for everything
logged inside it. Secrets never reach a log line: the processor below masks
any key that looks like one, as a second line of defence.
"""

import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

_SECRET_MARKERS = ("key", "secret", "token", "password", "authorization")


def _mask_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for name in list(event_dict):
        if any(marker in name.lower() for marker in _SECRET_MARKERS) and name != "idempotency_key":
            event_dict[name] = "***"
    return event_dict


def configure_logging(service: str, *, level: str = "info", fmt: str = "json") -> None:
    """Set up structlog and the standard library logging for one process."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _mask_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
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
