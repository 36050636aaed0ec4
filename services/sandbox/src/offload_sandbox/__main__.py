"""`python -m offload_sandbox`: serve the sandbox providers on OFFLOAD_SANDBOX_PORT (8002)."""

import uvicorn

from offload_sandbox.app import build_app
from offload_sandbox.settings import SandboxSettings


def main() -> None:
    settings = SandboxSettings()
    uvicorn.run(build_app(settings), host=settings.sandbox_host, port=settings.sandbox_port)


if __name__ == "__main__":
    main()
