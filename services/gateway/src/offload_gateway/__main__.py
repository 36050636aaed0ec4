"""`python -m offload_gateway`: the gateway on uvicorn and uvloop, port OFFLOAD_GATEWAY_PORT."""

import gc

import uvicorn

from offload_gateway.app import build_app
from offload_gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    app = build_app(settings)
    # Everything imported and built so far lives as long as the process: keep it
    # out of the collector's full passes, which otherwise rescan it every few
    # thousand requests' worth of short-lived objects.
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.gateway_host,
        port=settings.gateway_port,
        loop="uvloop",
        lifespan="on",
        # Logging is structlog's (configured at startup); uvicorn's access log is
        # replaced by the request metrics.
        log_config=None,
        access_log=False,
        proxy_headers=True,
        ws="none",
        # In-flight requests get this long after SIGTERM; then the process exits.
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
