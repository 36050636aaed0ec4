"""What each hostile scenario was, how much of it was thrown, and what was measured.

Security tests call `record(...)` with figures taken from the run (statuses
seen, bytes the server read before refusing, jobs failed, lines searched); the
session prints the table at the end (`docs/reliability.md` is written from it).
"""

from dataclasses import dataclass

RESULTS: list["Row"] = []


@dataclass(frozen=True)
class Row:
    scenario: str
    load: str
    outcome: str


def record(scenario: str, load: str, outcome: str) -> None:
    RESULTS.append(Row(scenario, load, outcome))


def table() -> str:
    lines = ["| scenario | load | outcome measured |", "|---|---|---|"]
    lines += [f"| {r.scenario} | {r.load} | {r.outcome} |" for r in RESULTS]
    return "\n".join(lines)
