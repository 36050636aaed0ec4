"""One notifier process serving 5,000 concurrent SSE clients (issue 9, section 3).

    uv run python -m bench.sse_scale [--clients 5000] [--rounds 5]

Runs the notifier's own fan-out benchmark (`bench.sse_fanout`, owned by the
notifier) with 5,000 clients, as a child process, and reads its figures back:
every scenario's delivery latency (event stamped by the store → read by the
client, p50/p99/max over every client and event) against the 250 ms target,
and the notifier's memory per connected client. `sse_fanout`'s own result file
(its 1,000-client run) is left as it was.

Scenarios (see `bench/sse_fanout.py`): `jobs` (each client follows its own
job; the N jobs start, paced over one second, then complete), `broadcast`
(all N follow one job; each progress event reaches all N at once) and `tenant`
(all N on the tenant's stream, each event through the outbox relay first).
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.report import RESULTS, Figure, report

TARGET_P99_MS = 250.0
SCENARIOS = ("jobs", "broadcast", "tenant")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout-s", type=float, default=600)
    args = parser.parse_args()

    source = Path(__file__).with_name("sse_fanout.py")
    if not source.exists():
        message = "bench/sse_fanout.py (the notifier's fan-out bench) is not in the tree yet"
        print(f"sse_scale: not run: {message}", file=sys.stderr)
        report(
            "sse_scale",
            [],
            [_figure(None, False, message)],
            missing=message,
        )
        sys.exit(2)

    theirs = RESULTS / "sse_fanout.json"
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    memory: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as keep:
        saved = Path(keep) / "sse_fanout.json"
        if theirs.exists():
            shutil.copy2(theirs, saved)
        try:
            # One run per scenario, so one that breaks does not hide the others.
            for scenario in SCENARIOS:
                print(f"  sse_fanout --clients {args.clients} --only {scenario}", flush=True)
                theirs.unlink(missing_ok=True)
                done = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.sse_fanout",
                        "--clients",
                        str(args.clients),
                        "--rounds",
                        str(args.rounds),
                        "--only",
                        scenario,
                    ],
                    timeout=args.timeout_s,
                    check=False,
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0 or not theirs.exists():
                    errors = [line for line in done.stderr.splitlines() if "Error" in line]
                    failures.append(
                        f"{scenario}: exit {done.returncode}"
                        + (f", {errors[-1].strip()} (x{len(errors)})" if errors else "")
                    )
                    rows.append({"scenario": scenario, "failed": failures[-1]})
                    continue
                result = json.loads(theirs.read_text())
                rows.extend(result["rows"])
                memory = result
        finally:
            if saved.exists():
                shutil.copy2(saved, theirs)
            else:
                theirs.unlink(missing_ok=True)

    measured = [row for row in rows if "p99_ms" in row]
    worst = max((row["p99_ms"] for row in measured), default=None)
    per_client = memory.get("memory_per_client_kib")
    met = not failures and worst is not None and worst <= TARGET_P99_MS
    note = "worst scenario; " + _scenarios(measured)
    if failures:
        note += "; failed: " + "; ".join(failures)
    figures = [
        _figure(worst, met, note, args.clients),
        Figure(
            f"notifier: memory per SSE client ({args.clients:,} idle connections)",
            per_client,
            "KiB",
            note=f"notifier RSS idle {memory.get('notifier_idle_rss_mib')} MiB",
        ),
    ]
    report(
        "sse_scale",
        rows,
        figures,
        clients=args.clients,
        memory_per_client_kib=per_client,
        notifier_idle_rss_mib=memory.get("notifier_idle_rss_mib"),
        failures=failures,
        measured_by="bench.sse_fanout",
    )
    # Unmet targets are figures, not failures; a scenario that broke is a failure.
    sys.exit(1 if failures or worst is None else 0)


def _figure(value: float | None, met: bool, note: str, clients: int = 5000) -> Figure:
    return Figure(
        f"notifier: {clients:,} SSE clients, event delivery p99",
        value,
        "ms",
        target=f"≤ {TARGET_P99_MS:g} ms",
        met=met,
        note=note,
    )


def _scenarios(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"{row['scenario']} {row['p99_ms']:.0f}" for row in rows)


if __name__ == "__main__":
    main()
