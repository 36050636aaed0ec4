"""`python -m offload_sandbox`: serve the sandbox providers on OFFLOAD_SANDBOX_PORT (8002)."""

from offload_runtime.http_server import serve_http
from offload_runtime.logging import configure_logging
from offload_sandbox.app import build_app
from offload_sandbox.settings import SandboxSettings

# Streamed answers in flight (LLM tokens, video downloads) get this long after SIGTERM.
SHUTDOWN_GRACE_S = 5


def main() -> None:
    settings = SandboxSettings()
    configure_logging("sandbox", level=settings.log_level, fmt=settings.log_format)
    serve_http(
        build_app(settings),
        settings,
        host=settings.sandbox_host,
        port=settings.sandbox_port,
        graceful_shutdown_s=SHUTDOWN_GRACE_S,
    )


if __name__ == "__main__":
    main()
