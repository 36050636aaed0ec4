"""Print a benchmark's figures as a table and keep them as JSON under bench/results/."""

import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def report(name: str, rows: list[dict[str, Any]], **context: Any) -> None:
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "benchmark": name,
        "at": datetime.now(UTC).isoformat(),
        "machine": {"cpus": _cpus(), "python": platform.python_version()},
        **context,
        "rows": rows,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    if rows:
        columns = list(rows[0])
        widths = [max(len(str(c)), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
        print(f"\n{name}")
        print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)))
        for row in rows:
            print(
                "  ".join(_fmt(row.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True))
            )
    print(f"(saved to {RESULTS / (name + '.json')})")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _cpus() -> int:
    import os

    return os.cpu_count() or 0
