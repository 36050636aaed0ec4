"""Start Offload processes as real subprocesses, with their logs kept for the test."""

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_ESTABLISHED = "01"
"""The TCP state in /proc/net/tcp."""


class ServiceProcess:
    """One `python -m <module> ...` child with OFFLOAD_* settings, logs to a temp file."""

    def __init__(self, module: str, *args: str, settings: Mapping[str, object]) -> None:
        self.module = module
        self.args = args
        self.env = {
            **os.environ,
            **{f"OFFLOAD_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.log = Path(tempfile.mkstemp(prefix=f"offload-{module}-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, own_group: bool = False) -> "ServiceProcess":
        """Start it; `own_group`: in a process group of its own, led by it (as honcho does)."""
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=own_group,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no clean-up, no acks, nothing flushed."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for the graceful stop; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def connections_to(self, port: int) -> set[int]:
        """Its established TCP connections to `port` on any host, as socket inodes.

        The same set later means the same connections: none was dropped and
        opened again meanwhile.
        """
        assert self.process is not None
        own: set[int] = set()
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                own.add(int(target[len("socket:[") : -1]))
        found = set()
        for table in ("tcp", "tcp6"):
            for line in Path(f"/proc/{self.pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rpartition(":")[2], 16)
                inode = int(fields[9])
                if fields[3] == _ESTABLISHED and remote_port == port and inode in own:
                    found.add(inode)
        return found

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.unlink(missing_ok=True)
