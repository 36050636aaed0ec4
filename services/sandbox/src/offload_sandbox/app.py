"""The sandbox: local stand-ins for the external providers (DESIGN §1).

An OpenAI-compatible chat completions API (`llm.py`) and a submit/poll/download
video API (`video.py`), with latency and failure injection, and a receiver for
webhooks (`webhooks.py`). `make run` and the tests use it by default; it also
serves offline demos and load tests.
"""

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from offload_sandbox import llm, video, webhooks
from offload_sandbox.settings import SandboxSettings


def build_app(settings: SandboxSettings | None = None) -> FastAPI:
    settings = settings or SandboxSettings()
    # /docs from assets in the package, not a CDN (see the gateway).
    app = FastAPIOffline(
        redoc_url=None,
        swagger_ui_parameters={"validatorUrl": None},
        title="Offload sandbox providers",
        version="0.1.0",
    )
    app.state.settings = settings

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # Each provider is a router in its own module, included here:
    app.include_router(llm.build_router(settings))
    app.include_router(video.build_router(settings))
    app.include_router(webhooks.build_router())
    return app
