"""A webhook receiver: somewhere for a job's webhooks to go on a machine of your own.

Offload delivers signed webhooks (Standard Webhooks) to a URL the client names.
For a try-out there is often no receiver to name (and `example.com` does not
resolve on a machine without DNS), so the sandbox takes them:
`POST /v1/sandbox/webhooks` answers 204 and keeps the delivery, and
`GET /v1/sandbox/webhooks?job=ID` lists what arrived, oldest first, with the
Standard Webhooks headers as received (the sandbox does not know the tenant's
secret, so it keeps the signature without checking it).
"""

import json
from collections import deque
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request, Response

KEPT = 1000
"""Deliveries remembered, the oldest forgotten first."""
MAX_BODY_BYTES = 1024 * 1024
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def build_router() -> APIRouter:
    router = APIRouter(tags=["webhook receiver"])
    received: deque[dict[str, Any]] = deque(maxlen=KEPT)

    @router.post("/v1/sandbox/webhooks", status_code=204, summary="Take a webhook delivery")
    async def receive(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return Response(status_code=413)
        try:
            payload: Any = json.loads(body)
        except ValueError:
            payload = body.decode("utf-8", "replace")
        received.append(
            {
                "received_at": datetime.now(UTC).isoformat(),
                "headers": {name: request.headers.get(name) for name in SIGNATURE_HEADERS},
                "body": payload,
            }
        )
        return Response(status_code=204)

    @router.get("/v1/sandbox/webhooks", summary="The webhook deliveries received, oldest first")
    async def deliveries(
        job: str | None = Query(default=None, max_length=200, description="Only this job's."),
    ) -> dict[str, Any]:
        kept = [entry for entry in received if job is None or _job_of(entry["body"]) == job]
        return {"count": len(kept), "webhooks": kept}

    return router


def _job_of(body: Any) -> str | None:
    data = body.get("data") if isinstance(body, dict) else None
    job_id = data.get("job_id") if isinstance(data, dict) else None
    return job_id if isinstance(job_id, str) else None
