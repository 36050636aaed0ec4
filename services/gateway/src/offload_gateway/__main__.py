"""`python -m offload_gateway`: the gateway on uvicorn and uvloop, port OFFLOAD_GATEWAY_PORT."""

from offload_gateway.app import build_app
from offload_gateway.settings import GatewaySettings
from offload_runtime.http_server import serve_http

# In-flight requests get this long after SIGTERM; then the process exits.
SHUTDOWN_GRACE_S = 10


def main() -> None:
    settings = GatewaySettings()
    serve_http(
        build_app(settings),
        settings,
        host=settings.gateway_host,
        port=settings.gateway_port,
        graceful_shutdown_s=SHUTDOWN_GRACE_S,
    )


if __name__ == "__main__":
    main()
