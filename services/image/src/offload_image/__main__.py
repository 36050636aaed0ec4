"""`python -m offload_image`: run the image worker until SIGINT/SIGTERM."""

from offload_image.app import build_app
from offload_runtime.worker import run_worker

if __name__ == "__main__":
    run_worker(build_app())
