"""`python -m offload_notifier`: serve the notifier on `OFFLOAD_NOTIFIER_PORT` (8001)."""

import gc

import uvicorn

from offload_notifier.app import build_app
from offload_notifier.settings import NotifierSettings

# Open SSE streams never end by themselves: on shutdown, give clients this long
# (they reconnect to another replica with Last-Event-ID), then close them.
SHUTDOWN_GRACE_S = 5


def main() -> None:
    settings = NotifierSettings()
    app = build_app(settings)
    # Everything built so far lives as long as the process: keep it out of the
    # collector's generations, so full collections (which pause every SSE client
    # at once) scan only what serving creates.
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.notifier_host,
        port=settings.notifier_port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )


if __name__ == "__main__":
    main()
