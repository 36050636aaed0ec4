"""Every benchmark, one after the other, and one table of every figure next to its target.

    uv run python -m bench.all [--only promise,ai_scale] [--skip sse_scale]

(`make bench` runs this.) Each benchmark runs alone as `python -m bench.<name>`
in its own process, one at a time, so they do not disturb each other; its
output goes to the console and its figures to `bench/results/<name>.json`.
Then the figures of all of them are printed in one table with their targets,
and kept in `bench/results/all.json` with the machine's description.

Exit status: 0 when every benchmark ran and measured; 1 when one failed, was
cut off by its time limit, or could not run (a service missing). Targets not
met are reported in the table; they are figures, not failures.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import RESULTS, machine, print_table, verdict

EXIT_MEANING = {0: "ok", 1: "failed", 2: "not run (missing)"}


@dataclass(frozen=True)
class Bench:
    name: str
    timeout_s: float
    args: tuple[str, ...] = ()
    section: str = ""


BENCHES = (
    Bench("promise", 420, section="1 promise"),
    # 10,000 jobs a run (its default is 20,000), three on one Redis node and three on
    # a local Redis Cluster (3 masters, 3 replicas), alternating.
    Bench(
        "runner_throughput",
        420,
        ("--jobs", "10000", "--runs", "3", "--cluster"),
        section="2 pipeline",
    ),
    Bench("gateway_submit", 240, section="2 pipeline"),
    # Offload's stack, then the bare reference's, 1,100 jobs each.
    Bench("pipeline_latency", 240, section="2 pipeline"),
    Bench("ai_scale", 150, section="3 scale"),
    Bench("sse_scale", 900, section="3 scale"),
    Bench("image_scaling", 360, section="3 scale"),
    Bench("sse_fanout", 300, section="notifier"),
    Bench("image_throughput", 360, section="image"),
    Bench("video_download", 240, section="video"),
)


@dataclass
class Outcome:
    bench: Bench
    status: str
    seconds: float
    figures: list[dict[str, Any]] = field(default_factory=list)


def run(bench: Bench) -> Outcome:
    result = RESULTS / f"{bench.name}.json"
    if not Path(__file__).with_name(f"{bench.name}.py").exists():
        return Outcome(bench, "not run (not in the tree yet)", 0.0)
    result.unlink(missing_ok=True)  # never report a stale figure
    print(f"\n=== bench.{bench.name} {' '.join(bench.args)}", flush=True)
    began = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{bench.name}", *bench.args],
            timeout=bench.timeout_s,
            check=False,
        )
        status = EXIT_MEANING.get(done.returncode, f"failed (exit {done.returncode})")
    except subprocess.TimeoutExpired:
        status = f"cut off after {bench.timeout_s:g}s"
    seconds = time.monotonic() - began
    figures: list[dict[str, Any]] = []
    if result.exists():
        payload = json.loads(result.read_text())
        figures = payload.get("figures") or []
        if not figures and payload.get("rows") and status == "ok":
            status = f"ok: {len(payload['rows'])} rows, no headline figures (see {result.name})"
    return Outcome(bench, status, seconds, figures)


def command_output(*argv: str) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--skip", default="", help="comma-separated benchmark names")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="run nothing: print the last run (bench/results/all.json) as a Markdown table",
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads((RESULTS / "all.json").read_text())))
        return
    only = {n for n in args.only.split(",") if n}
    skip = {n for n in args.skip.split(",") if n}
    chosen = [b for b in BENCHES if (not only or b.name in only) and b.name not in skip]

    began_at = datetime.now(UTC)
    load_before = os.getloadavg()
    began = time.monotonic()
    outcomes = [run(bench) for bench in chosen]
    total_s = time.monotonic() - began

    rows: list[dict[str, Any]] = []
    for outcome in outcomes:
        if not outcome.figures:
            rows.append(
                {
                    "section": outcome.bench.section,
                    "figure": f"bench.{outcome.bench.name}",
                    "measured": "-",
                    "target": "-",
                    "met": "-",
                    "reference / note": outcome.status,
                }
            )
        for f in outcome.figures:
            value = f.get("value")
            measured = "n/a" if value is None else f"{_number(value)} {f.get('unit', '')}".strip()
            rows.append(
                {
                    "section": outcome.bench.section,
                    "figure": f["name"],
                    "measured": measured,
                    "target": f.get("target") or "-",
                    "met": verdict(f.get("met")),
                    "reference / note": f.get("reference") or f.get("note") or "",
                }
            )
    print("\n" + "=" * 100)
    print(f"Offload benchmarks, {began_at:%Y-%m-%d %H:%M} UTC, {total_s / 60:.1f} min")
    print(
        f"machine: {os.cpu_count()} cores, {machine()['memory_mb']:,} MB RAM; load average "
        f"before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}"
    )
    print_table(rows)
    print()
    print_table(
        [
            {"benchmark": o.bench.name, "status": o.status, "seconds": round(o.seconds)}
            for o in outcomes
        ]
    )
    met = sum(1 for r in rows if r["met"] == "MET")
    unmet = sum(1 for r in rows if r["met"] == "NOT MET")
    print(f"\ntargets met: {met}, not met: {unmet}")

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "all.json").write_text(
        json.dumps(
            {
                "at": began_at.isoformat(),
                "total_s": total_s,
                "machine": {
                    **machine(),
                    "nproc": command_output("nproc"),
                    "free": command_output("free", "-m"),
                    "load_average_before": load_before,
                    "load_average_after": os.getloadavg(),
                },
                "benchmarks": [
                    {
                        "name": o.bench.name,
                        "status": o.status,
                        "seconds": o.seconds,
                        "figures": o.figures,
                    }
                    for o in outcomes
                ],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"(saved to {RESULTS / 'all.json'})")
    sys.exit(0 if all(o.status.startswith("ok") for o in outcomes) else 1)


def markdown(run: dict[str, Any]) -> str:
    """A run's figures as a Markdown table (for docs/performance.md)."""
    sections = {b.name: b.section for b in BENCHES}
    lines = [
        "| section | figure | measured | target | met | reference / note |",
        "|---|---|---|---|---|---|",
    ]
    for bench in run["benchmarks"]:
        if not bench["figures"]:
            lines.append(
                f"| {sections.get(bench['name'], '')} | `bench.{bench['name']}` | - | - | - "
                f"| {bench['status']} |"
            )
        for f in bench["figures"]:
            value = f.get("value")
            measured = "n/a" if value is None else f"{_number(value)} {f.get('unit', '')}".strip()
            note = (f.get("reference") or f.get("note") or "").replace("|", "/")
            lines.append(
                f"| {sections.get(bench['name'], '')} | {f['name']} | {measured} "
                f"| {f.get('target') or '-'} | {verdict(f.get('met'))} | {note} |"
            )
    return "\n".join(lines)


def _number(value: float) -> str:
    if isinstance(value, float) and abs(value) < 100:
        return f"{value:,.2f}"
    return f"{value:,.0f}"


if __name__ == "__main__":
    main()
