"""`python -m offload_image`: run the image worker until SIGINT/SIGTERM."""

from offload_image.app import build_app
from offload_runtime.worker import run_worker


def main() -> None:
    run_worker(build_app())


if __name__ == "__main__":
    main()
