"""Print a benchmark's figures as a table and keep them as JSON under bench/results/.

A benchmark reports `rows` (its raw measurements, any columns) and, optionally,
`figures`: the headline numbers, each next to its target, which `bench.all`
gathers into one table.
"""

import json
import math
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Figure:
    """One headline number: what was measured, its target, and whether the target is met.

    `met` is None when there is no target (a figure reported for information).
    `reference` is the figure it is compared with in the same run, when there is one.
    """

    name: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None
    reference: str = ""
    note: str = ""


def report(
    name: str, rows: list[dict[str, Any]], figures: list[Figure] | None = None, **context: Any
) -> None:
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "benchmark": name,
        "at": datetime.now(UTC).isoformat(),
        "machine": machine(),
        **context,
        "rows": rows,
    }
    if figures is not None:
        payload["figures"] = [asdict(figure) for figure in figures]
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if rows:
        print(f"\n{name}")
        print_table(rows)
    if figures:
        print_figures(figures)
    print(f"(saved to {RESULTS / (name + '.json')})")


def print_table(rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    widths = [max(len(str(c)), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))


def print_figures(figures: list[Figure]) -> None:
    print_table(
        [
            {
                "figure": f.name,
                "measured": f"{_fmt(f.value)} {f.unit}".strip(),
                "target": f.target or "-",
                "met": verdict(f.met),
                "reference": f.reference or "",
            }
            for f in figures
        ]
    )


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("MET" if met else "NOT MET")


def machine() -> dict[str, Any]:
    import os

    memory_mb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "cpus": os.cpu_count() or 0,
        "memory_mb": memory_mb,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
