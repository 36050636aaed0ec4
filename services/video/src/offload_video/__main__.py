"""`python -m offload_video`: run the video worker until SIGINT/SIGTERM."""

from offload_runtime.worker import run_worker
from offload_video.app import build_app


def main() -> None:
    run_worker(build_app())


if __name__ == "__main__":
    main()
