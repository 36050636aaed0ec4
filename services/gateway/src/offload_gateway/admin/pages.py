"""The dashboard's static files and the AsyncAPI documents, served by the gateway.

No build step: `static/` holds plain HTML, CSS and JavaScript, served as they
are. The page itself is public (it holds no data); everything it shows comes
from `/v1/admin/*` with the admin key the operator types in.
"""

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import FileResponse, HTMLResponse, Response

from offload_contracts import topology
from offload_contracts.catalog import JobCatalog
from offload_gateway.problems import ProblemError
from offload_runtime import asyncapi
from offload_runtime.echo import quoted
from offload_runtime.settings import RuntimeSettings

STATIC = Path(__file__).parent / "static"
_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# The page and its scripts change with the code, never with data: revalidate each load.
_NO_CACHE = {"Cache-Control": "no-cache"}


def build_pages(settings: RuntimeSettings, catalog: JobCatalog) -> APIRouter:
    """The dashboard, and the AsyncAPI documents of the gateway, the notifier and every
    service in `catalog` (workloads added with `OFFLOAD_JOB_SPECS` included)."""
    services = ("gateway", *catalog.services, topology.NOTIFIER_SERVICE)
    router = APIRouter(include_in_schema=False)
    documents: dict[str, str] = {}

    @router.get("/dashboard")
    async def dashboard() -> Response:
        return FileResponse(STATIC / "dashboard.html", media_type="text/html", headers=_NO_CACHE)

    @router.get("/dashboard/{name}")
    async def dashboard_asset(name: str) -> Response:
        media_type = _ASSETS.get(name)
        if media_type is None:
            raise ProblemError(404, f"no dashboard file named {quoted(name)}")
        return FileResponse(STATIC / name, media_type=media_type, headers=_NO_CACHE)

    @router.get("/asyncapi")
    async def asyncapi_index() -> Response:
        links = "".join(
            f'<li><a href="/asyncapi/{service}">{service}</a></li>' for service in services
        )
        return HTMLResponse(
            "<!doctype html><title>Offload AsyncAPI</title><h1>Offload: AsyncAPI 3.0 documents"
            f"</h1><ul>{links}</ul><p>Generated from the contracts by FastStream; also written "
            "to <code>docs/asyncapi/</code> by <code>make docs</code>.</p>"
        )

    @router.get("/asyncapi/{service}")
    async def asyncapi_document(service: str) -> Response:
        name = service.removesuffix(".json")
        if name not in services:
            raise ProblemError(
                404, f"no AsyncAPI document for {quoted(name)} (known: {', '.join(services)})"
            )
        if name not in documents:
            documents[name] = asyncapi.document_json(name, settings, catalog)
        return Response(documents[name], media_type="application/json")

    return router
