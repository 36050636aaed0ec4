"""The Offload client: enqueue heavy work from your own code, and follow it.

```python
from offload import Offload

with Offload(api_key="dev-key") as offload:
    job = offload.submit("image.process", {"source": {"file_id": f.id}, "operations": []})
    job = offload.wait(job.id)
```

`AsyncOffload` is the same with `await`. Errors are `OffloadError`s; an error
answer from the API is the `ApiError` subclass for its status, carrying the RFC
9457 problem details (`exc.problem.detail`).
"""

from offload.async_client import AsyncOffload
from offload.client import Offload
from offload.errors import (
    ApiError,
    BadRequest,
    ChecksumMismatch,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    OffloadError,
    PayloadTooLarge,
    Problem,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    WaitTimeout,
)
from offload.models import (
    DeadLetter,
    DeadLetterPage,
    ErrorInfo,
    FileInfo,
    Job,
    JobPage,
    Progress,
    ReplayReport,
    Webhook,
    WebhookLetter,
)
from offload.settings import ClientSettings
from offload_contracts import EventKind, JobStatus

__all__ = [
    "ApiError",
    "AsyncOffload",
    "BadRequest",
    "ChecksumMismatch",
    "ClientSettings",
    "Conflict",
    "ConnectionFailed",
    "DeadLetter",
    "DeadLetterPage",
    "ErrorInfo",
    "EventKind",
    "FileInfo",
    "Forbidden",
    "Job",
    "JobPage",
    "JobStatus",
    "NotFound",
    "Offload",
    "OffloadError",
    "PayloadTooLarge",
    "Problem",
    "Progress",
    "RateLimited",
    "ReplayReport",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "WaitTimeout",
    "Webhook",
    "WebhookLetter",
]
