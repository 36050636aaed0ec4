"""`python -m offload_notifier`: serve the notifier on `OFFLOAD_NOTIFIER_PORT` (8001)."""

from offload_notifier.app import build_app
from offload_notifier.settings import NotifierSettings
from offload_runtime.http_server import serve_http

# Open SSE streams never end by themselves: on shutdown, give clients this long
# (they reconnect to another replica with Last-Event-ID), then close them.
SHUTDOWN_GRACE_S = 5


def main() -> None:
    settings = NotifierSettings()
    serve_http(
        build_app(settings),
        settings,
        host=settings.notifier_host,
        port=settings.notifier_port,
        graceful_shutdown_s=SHUTDOWN_GRACE_S,
    )


if __name__ == "__main__":
    main()
