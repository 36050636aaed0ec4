"""The probe job type served by a real worker process, for fault tests.

    python -m tests.support.probe_worker <service>

Settings come from the OFFLOAD_* environment, as for any service.
"""

import sys

from offload_runtime.settings import WorkerSettings
from offload_runtime.worker import build_worker, run_worker
from tests.support.testjob import Recorder


def main() -> None:
    service = sys.argv[1]
    worker = build_worker(
        service=service,
        settings=WorkerSettings(),
        handlers=[Recorder().handler(max_attempts=5, timeout_s=30)],
    )
    run_worker(worker)


if __name__ == "__main__":
    main()
