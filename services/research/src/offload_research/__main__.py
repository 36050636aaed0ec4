"""`python -m offload_research`: run the research worker until SIGINT/SIGTERM."""

from offload_research.app import build_app
from offload_runtime.worker import run_worker


def main() -> None:
    run_worker(build_app())


if __name__ == "__main__":
    main()
