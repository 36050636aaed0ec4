"""The gateway's wired parts, and the FastAPI dependencies that hand them to routes."""

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from offload_contracts.catalog import JobCatalog
from offload_gateway.adapters.broker import BrokerLink
from offload_gateway.problems import ProblemError
from offload_gateway.settings import GatewaySettings
from offload_gateway.submission import JobSubmitter
from offload_gateway.sweep import Sweeper
from offload_runtime.auth import KeyRing, bearer_token
from offload_runtime.keys import RedisKeys
from offload_runtime.listing import JobListing
from offload_runtime.storage import FileStore
from offload_runtime.store import JobStore
from offload_runtime.webhook_secrets import WebhookSecrets


@dataclass
class GatewayDeps:
    """Everything the routes use; built once per app by `app.build_deps`."""

    settings: GatewaySettings
    redis: "aioredis.Redis"
    keys: RedisKeys
    store: JobStore
    listing: JobListing
    files: FileStore
    secrets: WebhookSecrets
    broker: BrokerLink
    submitter: JobSubmitter
    sweeper: Sweeper
    key_ring: KeyRing
    catalog: JobCatalog
    """The job types this gateway accepts (`OFFLOAD_JOB_SPECS` adds to Offload's own)."""


# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency
# in a worker thread, a thread hop per request for nothing.


async def get_deps(request: Request) -> GatewayDeps:
    return deps_of(request)


def deps_of(request: Request) -> GatewayDeps:
    deps: GatewayDeps = request.app.state.deps
    return deps


class TenantAuth(HTTPBearer):
    """`Authorization: Bearer <api key>` → the key's tenant, or a 401 problem.

    One dependency (it is also the OpenAPI security scheme), so authenticating
    costs a single call per request.
    """

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        return self.authenticate(request)

    def authenticate(self, request: Request) -> str:
        """The same check, callable from a route that takes no dependencies."""
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise unauthorized("send your API key as `Authorization: Bearer <key>`")
        tenant = deps_of(request).key_ring.tenant_for(token)
        if tenant is None:
            raise unauthorized("the API key is not valid")
        return tenant


def unauthorized(detail: str) -> ProblemError:
    """A 401 that asks for a bearer token (the tenant's API key, or an admin key)."""
    return ProblemError(401, detail, headers={"WWW-Authenticate": "Bearer"})


current_tenant = TenantAuth(
    auto_error=False, description="An API key: `Authorization: Bearer <key>`."
)


Deps = Annotated[GatewayDeps, Depends(get_deps)]
Tenant = Annotated[str, Depends(current_tenant)]
