"""`/v1/webhook-secret`: read and rotate the tenant's webhook signing secret."""

from fastapi import APIRouter
from starlette.responses import Response

from offload_contracts.api import WebhookSecretView
from offload_gateway.deps import Deps, Tenant
from offload_gateway.problems import problem_responses

router = APIRouter(prefix="/v1/webhook-secret", tags=["webhooks"])


def _view(secrets: list[str]) -> Response:
    view = WebhookSecretView(secret=secrets[0], signing=secrets)
    return Response(
        view.model_dump_json(),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


@router.get(
    "",
    response_model=WebhookSecretView,
    summary="Read the webhook secret",
    responses=problem_responses(401),
)
async def read_secret(deps: Deps, tenant: Tenant) -> Response:
    """The secret (`whsec_…`) that signs this tenant's webhooks; created on first use."""
    return _view(await deps.secrets.signing(tenant))


@router.post(
    "/rotate",
    response_model=WebhookSecretView,
    summary="Rotate the webhook secret",
    responses=problem_responses(401),
)
async def rotate_secret(deps: Deps, tenant: Tenant) -> Response:
    """Make a new current secret; the previous one keeps signing during a grace period."""
    return _view(await deps.secrets.rotate(tenant))
