"""CPU accounting from /proc: per process group (a service and its pool) and for the machine.

A benchmark shares two cores with RabbitMQ, Redis and whatever else runs, so
next to each figure it says who used the CPU while it was measured.
"""

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in the group, and of its reaped children."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ... utime(14) stime(15)
        # cutime(16) cstime(17), counted from 1 in proc(5).
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) != pgid:
            continue
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / _TICK


def pids_named(*names: str) -> dict[str, int]:
    """The pids of processes by command name (`/proc/<pid>/comm`), e.g. beam.smp, redis-server."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm in names and comm not in found:
            found[comm] = int(entry.name)
    return found


def shared_servers_cpu_s() -> dict[str, float]:
    """CPU seconds so far of RabbitMQ and Redis (shared with anything else using them)."""
    out: dict[str, float] = {}
    for name, pid in pids_named("beam.smp", "redis-server").items():
        label = "rabbitmq (shared)" if name == "beam.smp" else "redis (shared)"
        try:
            out[label] = process_cpu_s(pid)
        except OSError:
            continue
    return out


def self_cpu_s() -> float:
    """This process's CPU seconds (the bench's own client)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def process_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass(frozen=True)
class MachineCpu:
    busy: float
    total: float

    @classmethod
    def now(cls) -> "MachineCpu":
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        total = sum(values[:8])
        return cls((total - idle) / _TICK, total / _TICK)

    def busy_since(self, earlier: "MachineCpu") -> float:
        """Fraction of all cores busy between `earlier` and this reading (0–1)."""
        span = self.total - earlier.total
        return (self.busy - earlier.busy) / span if span > 0 else 0.0
