"""The gateway's wired parts, and the FastAPI dependencies that hand them to routes."""

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from offload_gateway.adapters.broker import BrokerLink
from offload_gateway.problems import ProblemError
from offload_gateway.settings import GatewaySettings
from offload_gateway.submission import JobSubmitter
from offload_gateway.sweep import Sweeper
from offload_runtime.auth import KeyRing, bearer_token
from offload_runtime.storage import FileStore
from offload_runtime.store import JobStore
from offload_runtime.webhook_secrets import WebhookSecrets


@dataclass
class GatewayDeps:
    """Everything the routes use; built once per app by `app.build_deps`."""

    settings: GatewaySettings
    redis: "aioredis.Redis"
    store: JobStore
    files: FileStore
    secrets: WebhookSecrets
    broker: BrokerLink
    submitter: JobSubmitter
    sweeper: Sweeper
    key_ring: KeyRing


def get_deps(request: Request) -> GatewayDeps:
    deps: GatewayDeps = request.app.state.deps
    return deps


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def current_tenant(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The tenant of the request's `Authorization: Bearer <key>`, or a 401."""
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise ProblemError(
            401,
            "send your API key as `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    tenant = get_deps(request).key_ring.tenant_for(token)
    if tenant is None:
        raise ProblemError(401, "the API key is not valid", headers={"WWW-Authenticate": "Bearer"})
    return tenant


Deps = Annotated[GatewayDeps, Depends(get_deps)]
Tenant = Annotated[str, Depends(current_tenant)]
